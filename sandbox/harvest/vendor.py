"""Harvest API v2, as in ../shared/specs/harvest-v2.yaml, served under ``/harvest/v2``.

Objects: clients, contacts, users, roles, tasks, projects, task_assignments,
user_assignments, expense_categories, time_entries, expenses, invoices, plus two documented
sandbox extensions (Harvest has neither): ``x_milestones`` and ``x_rate_cards``.

Auth as Harvest's personal access tokens: ``Authorization: Bearer <token>``,
``Harvest-Account-Id: <account>`` and a non-empty ``User-Agent``. Lists are sorted by id,
newest first, and paged in Harvest's envelope (``per_page``, ``total_pages``,
``total_entries``, ``next_page``, ``previous_page``, ``page``, ``links``) with ``per_page``
(1..2000, default 2000) and, where the spec offers it, ``cursor`` (``links.next`` carries it;
``page`` is deprecated there but still served), else ``page``; ``updated_since`` keeps records whose
``updated_at`` is at or after the given time (inclusive, so a poller that resumes from the
last ``updated_at`` it saw never misses a record written in the same second).

The HTTP side is here: the routes and the generic list, get, create, update and delete
handlers every object shares. Each object's own rules (fields, validation, derived fields,
lookups, JSON shape) are a ``Kind`` in one module per resource (``clients.py``,
``projects.py``, ``time_entries.py``, ...), collected in ``kinds.py``; ``base.py`` holds auth,
storage and rendering.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..gate import JSON, refuse
from ..store import Row
from .base import HarvestBase
from .invoices import payment_settle
from .kinds import KINDS, NESTED_ONLY
from .schema import (
    CURSOR_KINDS,
    MAX_PER_PAGE,
    SYSTEM,
    Invalid,
    decode_cursor,
    encode_cursor,
    parse_time,
)


class Harvest(HarvestBase):
    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/company", self.company, methods=["GET"]),
            Route("/v2/users/me", self.me, methods=["GET"]),
            *(
                route
                for kind in ("task_assignments", "user_assignments")
                for route in (
                    Route(
                        f"/v2/projects/{{project_id:int}}/{kind}",
                        self.nested,
                        methods=["GET", "POST"],
                    ),
                    Route(
                        f"/v2/projects/{{project_id:int}}/{kind}/{{id:int}}",
                        self.nested_one,
                        methods=["GET", "PATCH", "DELETE"],
                    ),
                )
            ),
            Route(
                "/v2/invoices/{invoice_id:int}/payments",
                self.invoice_payments,
                methods=["GET", "POST"],
            ),
            Route("/v2/{kind}", self.collection, methods=["GET", "POST"]),
            Route("/v2/{kind}/{id:int}", self.one, methods=["GET", "PATCH", "DELETE"]),
        ]

    async def company(self, request: Request) -> Response:
        return JSON(
            {
                "base_uri": f"{self.sandbox.base_url}/harvest",
                "full_domain": "concord-sandbox.harvestapp.com",
                "name": "Concord Sandbox",
                "is_active": True,
                "week_start_day": "Monday",
                "wants_timestamp_timers": False,
                "time_format": "decimal",
                "date_format": "%Y-%m-%d",
                "plan_type": "sponsored",
                "clock": "24h",
                "currency_code_display": "iso_code_before",
                "currency_symbol_display": "symbol_before",
                "decimal_symbol": ".",
                "thousands_separator": ",",
                "color_scheme": "orange",
                "weekly_capacity": 144000,
                "expense_feature": True,
                "invoice_feature": True,
                "estimate_feature": False,
                "approval_feature": True,
            }
        )

    async def me(self, request: Request) -> Response:
        row = self.store.get(SYSTEM, "users", self.admin_id())
        if row is None:
            return self.not_found(request)
        return JSON(self.render("users", row))

    async def collection(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS or kind in NESTED_ONLY:
            return self.not_found(request)
        if request.method == "GET":
            return self.list(request, kind, {})
        return await self.create(request, kind, {})

    async def one(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS or kind in NESTED_ONLY:
            return self.not_found(request)
        return await self.single(request, kind, int(request.path_params["id"]), {})

    @staticmethod
    def _nested_kind(request: Request) -> str:
        return "task_assignments" if "/task_assignments" in request.url.path else "user_assignments"

    async def nested(self, request: Request) -> Response:
        kind, project_id = self._nested_kind(request), int(request.path_params["project_id"])
        if self.store.get(SYSTEM, "projects", project_id) is None:
            return self.not_found(request)
        if request.method == "GET":
            return self.list(request, kind, {"project_id": project_id})
        return await self.create(request, kind, {"project_id": project_id})

    async def invoice_payments(self, request: Request) -> Response:
        """An invoice's payments: listed (newest first), or one recorded, which lowers the
        invoice's ``due_amount`` and, when it settles it, marks the invoice paid."""
        invoice_id = int(request.path_params["invoice_id"])
        if self.store.get(SYSTEM, "invoices", invoice_id) is None:
            return self.not_found(request)
        fixed = {"invoice_id": invoice_id}
        if request.method == "GET":
            return self.list(request, "invoice_payments", fixed)
        body = await self._json(request)
        if isinstance(body, Response):
            return body
        spec = KINDS["invoice_payments"]
        try:
            data = {**spec.defaults, **spec.clean({**body, **fixed}, partial=False)}
            self.validate("invoice_payments", data, None, data)
        except Invalid as exc:
            return self.unprocessable(request, exc)
        self.derive("invoice_payments", data, data)
        row = self.insert("invoice_payments", data)
        payment_settle(self, data)
        return JSON(self.render("invoice_payments", row), 201)

    async def nested_one(self, request: Request) -> Response:
        kind, project_id = self._nested_kind(request), int(request.path_params["project_id"])
        return await self.single(
            request, kind, int(request.path_params["id"]), {"project_id": project_id}
        )

    # -- generic handlers --------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        refuse(request, "not_found")
        return JSON({"status": 404, "error": "Not Found"}, 404)

    def unprocessable(self, request: Request, exc: Invalid) -> Response:
        refuse(request, exc.reason)
        return JSON({"message": exc.message}, 422)

    def list(self, request: Request, kind: str, fixed: dict[str, Any]) -> Response:
        spec, params = KINDS[kind], request.query_params
        # Where the spec offers ``cursor`` (and marks ``page`` deprecated), a request without
        # ``page`` is answered with cursor links, as Harvest does; ``page`` still works there.
        by_cursor = kind in CURSOR_KINDS and not fixed and "page" not in params
        try:
            page = int(params.get("page", "1"))
            per_page = int(params.get("per_page", str(MAX_PER_PAGE)))
        except ValueError:
            return self.unprocessable(request, Invalid("page and per_page must be integers"))
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            return self.unprocessable(
                request, Invalid(f"per_page must be between 1 and {MAX_PER_PAGE}")
            )
        position: tuple[str, int] | None = None
        if kind in CURSOR_KINDS and not fixed and params.get("cursor"):
            position = decode_cursor(params["cursor"])  # cursor wins over page, as in Harvest
            if position is None:
                return self.unprocessable(request, Invalid("cursor is invalid"))
            by_cursor = True
        since: float | None = None
        if "updated_since" in params:
            since = parse_time(params["updated_since"])
            if since is None:
                return self.unprocessable(
                    request, Invalid("updated_since is not a valid ISO 8601 date-time")
                )
        wanted = dict(fixed)
        for name in spec.filters:
            if name in params:
                raw = params[name]
                wanted[name] = (
                    raw == "true"
                    if raw in ("true", "false")
                    else (int(raw) if raw.isdigit() else raw)
                )
        date_from, date_to = params.get("from"), params.get("to")
        rows: list[Row] = []
        for row in self.store.rows(SYSTEM, kind):
            if since is not None and row.updated < since:
                continue
            data = row.data
            if wanted and any(self._value(kind, data, k) != v for k, v in wanted.items()):
                continue
            if spec.date_field and (date_from or date_to):
                day = data.get(spec.date_field) or ""
                if (date_from and day < date_from) or (date_to and day > date_to):
                    continue
            rows.append(row)
        rows.reverse()  # creation order reversed: newest first, as Harvest lists
        total = len(rows)
        total_pages = max(1, -(-total // per_page))
        if position is None:
            start = (page - 1) * per_page
            end = start + per_page
        else:
            # Keyset: ids run down the list, so the rows after id N are those below it; a
            # record created or deleted meanwhile moves no other record across the boundary.
            direction, key = position
            if direction == "after":
                start = sum(1 for row in rows if int(row.key) >= key)
                end = start + per_page
            else:  # the page that ends just before the record ``key``
                end = sum(1 for row in rows if int(row.key) > key)
                start = max(0, end - per_page)
            page = start // per_page + 1
        chunk = rows[start:end]
        more, first, last = end < total, start == 0, end >= total

        def link(**query_args: str) -> str:
            query = {k: v for k, v in params.items() if k not in ("page", "per_page", "cursor")}
            query.update(query_args, per_page=str(per_page))
            return f"{request.base_url}{request.url.path.lstrip('/')}?{urlencode(query)}"

        if by_cursor:
            # Harvest: with cursors, page numbers are given on the first and the last page
            # only (``page`` itself stays an integer here, as the spec requires).
            links = {
                "first": link(page="1"),
                "next": link(cursor=encode_cursor("after", int(chunk[-1].key))) if more else None,
                "previous": (
                    link(cursor=encode_cursor("before", int(chunk[0].key)))
                    if start and chunk
                    else None
                ),
                "last": link(page=str(total_pages)),
            }
            next_page = page + 1 if more and first else None
            previous_page = page - 1 if last and page > 1 else None
        else:
            links = {
                "first": link(page="1"),
                "next": link(page=str(page + 1)) if page < total_pages else None,
                "previous": link(page=str(page - 1)) if page > 1 else None,
                "last": link(page=str(total_pages)),
            }
            next_page = page + 1 if page < total_pages else None
            previous_page = page - 1 if page > 1 else None

        self._memo = {}
        try:
            items = [self.render(kind, row) for row in chunk]
        finally:
            self._memo = None
        return JSON(
            {
                kind: items,
                "per_page": per_page,
                "total_pages": total_pages,
                "total_entries": total,
                "next_page": next_page,
                "previous_page": previous_page,
                "page": page,
                "links": links,
            }
        )

    def _value(self, kind: str, data: dict[str, Any], name: str) -> Any:
        if name == "client_id" and "client_id" not in data:
            project = self.store.get(SYSTEM, "projects", data.get("project_id"))
            return project.data["client_id"] if project else None
        if name == "is_closed":
            return data.get("approval_status") == "approved"
        if name == "is_running":
            return bool(data.get("is_running"))
        return data.get(name)

    async def single(
        self, request: Request, kind: str, key: int, fixed: dict[str, Any]
    ) -> Response:
        row = self.store.get(SYSTEM, kind, key)
        if row is None or any(row.data.get(k) != v for k, v in fixed.items()):
            return self.not_found(request)
        if request.method == "GET":
            return JSON(self.render(kind, row))
        if request.method == "DELETE":
            if kind == "time_entries" and row.data.get("approval_status") == "approved":
                return self.unprocessable(
                    request, Invalid("Time entry is locked: it has been approved", "locked")
                )
            table = self.store.table(SYSTEM, kind)
            table.reindex(key, self.index_keys(kind, row.data), {})
            table.rows.pop(key, None)
            return Response(status_code=200)
        body = await self._json(request)
        if isinstance(body, Response):
            return body
        try:
            changes = KINDS[kind].clean(body, partial=True)
            self.validate(kind, {**row.data, **changes}, row, changes)
        except Invalid as exc:
            return self.unprocessable(request, exc)
        self.patch_raw(kind, row, changes)
        return JSON(self.render(kind, row))

    async def create(self, request: Request, kind: str, fixed: dict[str, Any]) -> Response:
        body = await self._json(request)
        if isinstance(body, Response):
            return body
        if kind == "time_entries" and "user_id" not in body:
            # Harvest: "Defaults to the currently authenticated user"
            body["user_id"] = self.admin_id()
        spec = KINDS[kind]
        try:
            data = {**spec.defaults, **spec.clean({**body, **fixed}, partial=False)}
            self.validate(kind, data, None, data)
        except Invalid as exc:
            return self.unprocessable(request, exc)
        self.derive(kind, data, data)
        row = self.insert(kind, data)
        return JSON(self.render(kind, row), 201)

    async def _json(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            refuse(request, "malformed")
            return JSON({"code": 400, "message": "The request body must be a JSON object."}, 400)
        return body
