"""Harvest API v2, as in ../shared/specs/harvest-v2.yaml, served under ``/harvest/v2``.

Objects: clients, contacts, users, roles, tasks, projects, task_assignments,
user_assignments, expense_categories, time_entries, expenses, invoices, plus two documented
sandbox extensions (Harvest has neither): ``x_milestones`` and ``x_rate_cards``.

Auth as Harvest's personal access tokens: ``Authorization: Bearer <token>``,
``Harvest-Account-Id: <account>`` and a non-empty ``User-Agent``. Lists are sorted by id,
newest first, and paged with ``page``/``per_page`` (1..2000, default 2000) in Harvest's
envelope (``per_page``, ``total_pages``, ``total_entries``, ``next_page``,
``previous_page``, ``page``, ``links``); ``updated_since`` keeps records whose
``updated_at`` is at or after the given time (inclusive, so a poller that resumes from the
last ``updated_at`` it saw never misses a record written in the same second).

Approval: Harvest's time entries and expenses say ``is_closed`` ("approved via Timesheet
Approval"); the sandbox adds ``approval_status`` (``unsubmitted`` | ``submitted`` |
``approved``), settable by PATCH (Harvest only approves in its web UI), and keeps
``is_closed``/``is_locked``/``locked_reason`` consistent with it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .gate import JSON, Sandbox, Vendor, refuse
from .ratelimit import Denied
from .store import Change, Key, Row

SYSTEM = "harvest"
ACCOUNT_ID = "100001"
# token -> account id. One personal access token, documented in README.md.
TOKENS = {"sandbox-harvest-token": ACCOUNT_ID}
ID_START = 1_000_000  # Harvest ids are int32: start high enough to look real, far from 2**31
MAX_PER_PAGE = 2000
APPROVAL_STATES = ("unsubmitted", "submitted", "approved")
MILESTONE_STATES = ("open", "complete", "invoiced")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Invalid(Exception):
    """A 422 in Harvest's shape: ``{"message": ...}``."""

    def __init__(self, message: str, reason: str = "validation") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def _coerce(name: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    ok = True
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "date":
        try:
            ok = isinstance(value, str) and bool(date.fromisoformat(value))
        except ValueError:
            ok = False
    elif kind == "list":
        ok = isinstance(value, list)
    elif kind == "dict":
        ok = isinstance(value, dict)
    if not ok:
        raise Invalid(f"{name} is invalid")
    return value


@dataclass
class Kind:
    """How one Harvest object is stored, validated and rendered."""

    name: str
    fields: dict[str, str]  # writable field -> type
    required: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    filters: tuple[str, ...] = ()  # list query params compared for equality with data
    date_field: str | None = None  # field the ``from``/``to`` params filter on
    # Writable on create only: the spec's update body for the object has no such field.
    create_only: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "clients",
            {"name": "str", "is_active": "bool", "address": "str", "currency": "str"},
            ("name",),
            {"is_active": True, "address": None, "currency": "USD"},
            ("is_active",),
        ),
        Kind(
            "contacts",
            {
                "client_id": "int",
                "title": "str",
                "first_name": "str",
                "last_name": "str",
                "email": "str",
                "phone_office": "str",
                "phone_mobile": "str",
                "fax": "str",
            },
            ("client_id", "first_name"),
            {
                "title": None,
                "last_name": None,
                "email": None,
                "phone_office": "",
                "phone_mobile": "",
                "fax": "",
            },
            ("client_id",),
        ),
        Kind(
            "users",
            {
                "first_name": "str",
                "last_name": "str",
                "email": "str",
                "telephone": "str",
                "timezone": "str",
                "is_contractor": "bool",
                "is_active": "bool",
                "weekly_capacity": "int",
                "default_hourly_rate": "float",
                "cost_rate": "float",
                "roles": "list",
                "access_roles": "list",
                "has_access_to_all_future_projects": "bool",
            },
            ("first_name", "last_name", "email"),
            {
                "telephone": "",
                "timezone": "Etc/UTC",
                "is_contractor": False,
                "is_active": True,
                "weekly_capacity": 144000,  # 40 h in seconds, Harvest's unit
                "default_hourly_rate": None,
                "cost_rate": None,
                "roles": [],
                "access_roles": ["member"],
                "has_access_to_all_future_projects": False,
            },
            ("is_active",),
        ),
        Kind("roles", {"name": "str", "user_ids": "list"}, ("name",), {"user_ids": []}),
        Kind(
            "tasks",
            {
                "name": "str",
                "billable_by_default": "bool",
                "default_hourly_rate": "float",
                "is_default": "bool",
                "is_active": "bool",
            },
            ("name",),
            {
                "billable_by_default": True,
                "default_hourly_rate": None,
                "is_default": False,
                "is_active": True,
            },
            ("is_active",),
        ),
        Kind(
            "projects",
            {
                "client_id": "int",
                "name": "str",
                "code": "str",
                "is_active": "bool",
                "is_billable": "bool",
                "is_fixed_fee": "bool",
                "bill_by": "str",
                "hourly_rate": "float",
                "budget": "float",
                "budget_by": "str",
                "budget_is_monthly": "bool",
                "notify_when_over_budget": "bool",
                "over_budget_notification_percentage": "float",
                "show_budget_to_all": "bool",
                "cost_budget": "float",
                "cost_budget_include_expenses": "bool",
                "fee": "float",
                "notes": "str",
                "starts_on": "date",
                "ends_on": "date",
            },
            ("client_id", "name", "is_billable", "bill_by", "budget_by"),
            {
                "code": None,
                "is_active": True,
                "is_fixed_fee": False,
                "hourly_rate": None,
                "budget": None,
                "budget_is_monthly": False,
                "notify_when_over_budget": False,
                "over_budget_notification_percentage": 80.0,
                "show_budget_to_all": False,
                "cost_budget": None,
                "cost_budget_include_expenses": False,
                "fee": None,
                "notes": "",
                "starts_on": None,
                "ends_on": None,
            },
            ("client_id", "is_active"),
        ),
        Kind(
            "task_assignments",
            {
                "project_id": "int",
                "task_id": "int",
                "is_active": "bool",
                "billable": "bool",
                "hourly_rate": "float",
                "budget": "float",
            },
            ("project_id", "task_id"),
            {"is_active": True, "billable": None, "hourly_rate": None, "budget": None},
            ("project_id", "is_active"),
            create_only=("project_id", "task_id"),  # updateTaskAssignment
        ),
        Kind(
            "user_assignments",
            {
                "project_id": "int",
                "user_id": "int",
                "is_active": "bool",
                "is_project_manager": "bool",
                "use_default_rates": "bool",
                "hourly_rate": "float",
                "budget": "float",
            },
            ("project_id", "user_id"),
            {
                "is_active": True,
                "is_project_manager": False,
                "use_default_rates": True,
                "hourly_rate": None,
                "budget": None,
            },
            ("project_id", "user_id", "is_active"),
            create_only=("project_id", "user_id"),  # updateUserAssignment
        ),
        Kind(
            "expense_categories",
            {"name": "str", "unit_name": "str", "unit_price": "float", "is_active": "bool"},
            ("name",),
            {"unit_name": None, "unit_price": None, "is_active": True},
            ("is_active",),
        ),
        Kind(
            "time_entries",
            {
                "user_id": "int",
                "project_id": "int",
                "task_id": "int",
                "spent_date": "date",
                "started_time": "str",
                "ended_time": "str",
                "notes": "str",
                "external_reference": "dict",
                "hours": "float",
                "approval_status": "str",
                "is_billed": "bool",
                "billable": "bool",
            },
            ("project_id", "task_id", "spent_date"),
            {"notes": None, "external_reference": None, "started_time": None, "ended_time": None},
            (
                "user_id",
                "project_id",
                "task_id",
                "client_id",
                "is_billed",
                "is_running",
                "approval_status",
                "is_closed",
            ),
            "spent_date",
        ),
        Kind(
            "expenses",
            {
                "user_id": "int",
                "project_id": "int",
                "expense_category_id": "int",
                "spent_date": "date",
                "notes": "str",
                "units": "int",
                "total_cost": "float",
                "billable": "bool",
                "approval_status": "str",
                "is_billed": "bool",
                "receipt": "dict",
            },
            ("project_id", "expense_category_id", "spent_date"),
            {"notes": None, "units": None, "billable": True, "receipt": None},
            ("user_id", "project_id", "client_id", "is_billed", "approval_status", "is_closed"),
            "spent_date",
        ),
        Kind(
            "invoices",
            {
                "client_id": "int",
                "number": "str",
                "purchase_order": "str",
                "tax": "float",
                "tax2": "float",
                "discount": "float",
                "subject": "str",
                "notes": "str",
                "currency": "str",
                "issue_date": "date",
                "due_date": "date",
                "payment_term": "str",
                "period_start": "date",
                "period_end": "date",
                "line_items": "list",
                "state": "str",
            },
            ("client_id",),
            {
                "number": None,
                "purchase_order": None,
                "tax": None,
                "tax2": None,
                "discount": None,
                "subject": None,
                "notes": None,
                "currency": None,
                "issue_date": None,
                "due_date": None,
                "payment_term": "custom",
                "period_start": None,
                "period_end": None,
                "line_items": [],
                "state": "draft",
            },
            ("client_id", "state"),
            "issue_date",
        ),
        # -- sandbox extensions --------------------------------------------------------------
        Kind(
            "x_milestones",
            {
                "project_id": "int",
                "name": "str",
                "amount": "float",
                "currency": "str",
                "due_on": "date",
                "status": "str",
                "notes": "str",
                "external_reference": "str",
            },
            ("project_id", "name", "amount"),
            {
                "currency": None,
                "due_on": None,
                "status": "open",
                "notes": None,
                "external_reference": None,
            },
            ("project_id", "status"),
            "due_on",
        ),
        Kind(
            "x_rate_cards",
            {
                "role": "str",
                "currency": "str",
                "hourly_rate": "float",
                "starts_on": "date",
                "ends_on": "date",
            },
            ("role", "currency", "hourly_rate"),
            {"starts_on": None, "ends_on": None},
            ("role", "currency"),
        ),
    )
}


class Harvest(Vendor):
    system = SYSTEM

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self._admin_key: Key = ID_START  # set by ensure_admin
        sandbox.reset_hooks.append(self.ensure_admin)
        self.ensure_admin()
        # While one list page renders (synchronous code, no await), the nested references it
        # repeats (the same project, user, assignment on every entry) render once.
        self._memo: dict[tuple[Any, ...], Any] | None = None

    # -- gate hooks --------------------------------------------------------------------------

    def object_of(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if (
            len(parts) >= 4
            and parts[1] == "projects"
            and parts[3] in ("task_assignments", "user_assignments")
        ):
            return parts[3]
        return parts[1] if len(parts) > 1 else "other"

    def authenticate(self, request: Request) -> str | Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if token not in TOKENS:
            return JSON(
                {
                    "error": "invalid_token",
                    "error_description": "The access token provided is expired, revoked, malformed "
                    "or invalid for other reasons.",
                },
                401,
            )
        if request.headers.get("harvest-account-id") != TOKENS[token]:
            return JSON(
                {
                    "error": "invalid_token",
                    "error_description": "Missing or invalid Harvest-Account-Id header.",
                },
                401,
            )
        if not request.headers.get("user-agent"):
            return JSON(
                {"code": 403, "message": "A User-Agent header is required. Please include one."},
                403,
            )
        return token

    def error(self, status: int, message: str) -> Response:
        return JSON({"code": status, "message": message}, status)

    def throttled(self, denied: Denied) -> Response:
        body = {
            "code": 429,
            "message": f"Rate limit exceeded. Retry in {denied.retry_after} seconds.",
        }
        return JSON(body, 429, headers={"Retry-After": str(denied.retry_after)})

    def event(self, change: Change) -> dict[str, Any] | None:
        return {
            "id": uuid.uuid4().hex,
            "object": change.obj,
            "record_id": change.row.key,
            "type": change.kind,
            "version": change.row.version,
            "occurred_at": iso(change.row.updated),
            "resource_url": f"{self.sandbox.base_url}/harvest/v2/{change.obj}/{change.row.key}",
            "account_id": ACCOUNT_ID,
        }

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
            Route("/v2/{kind}", self.collection, methods=["GET", "POST"]),
            Route("/v2/{kind}/{id:int}", self.one, methods=["GET", "PATCH", "DELETE"]),
        ]

    def ensure_admin(self) -> None:
        """The token's own user, so ``/users/me`` and default time entry users exist
        after a reset."""
        if self.store.count(SYSTEM, "users"):
            return
        self._admin_key = self.insert(
            "users",
            {
                **KINDS["users"].defaults,
                "first_name": "Sandbox",
                "last_name": "Admin",
                "email": "admin@concord.example",
                "access_roles": ["administrator"],
                "default_hourly_rate": 150.0,
                "cost_rate": 60.0,
            },
            seeded=True,
        ).key

    def admin_id(self) -> int:
        """The token's own user (``/users/me``), created by ``ensure_admin``."""
        return int(self._admin_key)

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
        if kind not in KINDS:
            return self.not_found(request)
        if request.method == "GET":
            return self.list(request, kind, {})
        return await self.create(request, kind, {})

    async def one(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS:
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
        try:
            page = int(params.get("page", "1"))
            per_page = int(params.get("per_page", str(MAX_PER_PAGE)))
        except ValueError:
            return self.unprocessable(request, Invalid("page and per_page must be integers"))
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            return self.unprocessable(
                request, Invalid(f"per_page must be between 1 and {MAX_PER_PAGE}")
            )
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
        chunk = rows[(page - 1) * per_page : page * per_page]

        def link(n: int) -> str:
            query = {k: v for k, v in params.items() if k not in ("page", "per_page")}
            query.update(page=str(n), per_page=str(per_page))
            return f"{request.base_url}{request.url.path.lstrip('/')}?{urlencode(query)}"

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
                "next_page": page + 1 if page < total_pages else None,
                "previous_page": page - 1 if page > 1 else None,
                "page": page,
                "links": {
                    "first": link(1),
                    "next": link(page + 1) if page < total_pages else None,
                    "previous": link(page - 1) if page > 1 else None,
                    "last": link(total_pages),
                },
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
            changes = self._clean(kind, body, partial=True)
            self.validate(kind, {**row.data, **changes}, row, changes)
        except Invalid as exc:
            return self.unprocessable(request, exc)
        self.patch_raw(kind, row, changes)
        return JSON(self.render(kind, row))

    def patch_raw(self, obj: str, row: Row, changes: dict[str, Any], scope: str = "") -> None:
        """Store ``changes`` (validated by a PATCH, or an out-of-band change from the control
        API), derive Harvest's computed fields, re-index and touch."""
        data = {**row.data, **changes}
        self._apply(obj, data, changes)
        self.store.table(SYSTEM, obj).reindex(
            row.key, self.index_keys(obj, row.data), self.index_keys(obj, data)
        )
        row.data = data
        self.store.touch(SYSTEM, obj, row)

    async def create(self, request: Request, kind: str, fixed: dict[str, Any]) -> Response:
        body = await self._json(request)
        if isinstance(body, Response):
            return body
        if kind == "time_entries" and "user_id" not in body:
            body["user_id"] = (
                self.admin_id()
            )  # Harvest: "Defaults to the currently authenticated user"
        try:
            data = {**KINDS[kind].defaults, **self._clean(kind, {**body, **fixed}, partial=False)}
            self.validate(kind, data, None, data)
        except Invalid as exc:
            return self.unprocessable(request, exc)
        self._apply(kind, data, data)
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

    def _clean(self, kind: str, body: dict[str, Any], partial: bool) -> dict[str, Any]:
        spec = KINDS[kind]
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if partial and name in spec.create_only:
                label = name.removesuffix("_id").capitalize()
                raise Invalid(
                    f"{label} can't be changed on an existing {kind[:-1].replace('_', ' ')}"
                )
            if name in spec.fields:
                clean[name] = _coerce(name, spec.fields[name], value)
            # Unknown parameters are ignored, as Harvest does.
        if not partial:
            missing = [name for name in spec.required if clean.get(name) in (None, "")]
            if missing:
                raise Invalid(
                    f"{missing[0].replace('_id', '').replace('_', ' ').capitalize()} can't be blank"
                )
        return clean

    def insert(
        self, kind: str, data: dict[str, Any], *, at: float | None = None, seeded: bool = False
    ) -> Row:
        key = self.store.next_id(SYSTEM, kind, ID_START)
        row = self.store.insert(SYSTEM, kind, key, data, at=at, seeded=seeded)
        self.store.table(SYSTEM, kind).reindex(key, {}, self.index_keys(kind, data))
        return row

    @staticmethod
    def index_keys(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Where a record is found besides its id: every write re-indexes through this."""
        keys: dict[str, Any] = {}
        if kind == "clients":
            keys["name"] = str(data["name"]).casefold()
        elif kind == "projects":
            keys["client_name"] = (data["client_id"], str(data["name"]).casefold())
        elif kind == "task_assignments":
            keys["pt"] = (data["project_id"], data["task_id"])
        elif kind == "user_assignments":
            keys["pu"] = (data["project_id"], data["user_id"])
        elif kind in ("time_entries", "expenses") and data.get("external_reference"):
            ref = data["external_reference"]
            ref_id = ref.get("id") if isinstance(ref, dict) else ref
            if ref_id:
                keys["external_reference"] = str(ref_id)
        return keys

    # -- rules -------------------------------------------------------------------------------

    def _need(self, kind: str, key: Any, label: str) -> Row:
        row = self.store.get(SYSTEM, kind, key)
        if row is None:
            raise Invalid(f"{label} is invalid")
        return row

    def validate(
        self, kind: str, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
    ) -> None:
        stats = self.store.stats.of(SYSTEM, kind)
        table = self.store.table(SYSTEM, kind)
        if kind == "clients" and "name" in changes:
            other = table.index_get("name", data["name"].casefold())
            if other is not None and other is not existing:
                stats.duplicates_detected += 1
                raise Invalid("Name has already been taken", "duplicate")
        elif kind == "contacts":
            self._need("clients", data["client_id"], "Client")
        elif kind == "projects":
            self._need("clients", data["client_id"], "Client")
            if "name" in changes or "client_id" in changes:
                other = table.index_get("client_name", (data["client_id"], data["name"].casefold()))
                if other is not None and other is not existing:
                    stats.duplicates_detected += 1
                    raise Invalid("Name has already been taken", "duplicate")
        elif kind in ("task_assignments", "user_assignments"):
            self._need("projects", data["project_id"], "Project")
            other_kind, index = ("tasks", "pt") if kind == "task_assignments" else ("users", "pu")
            other_key = data["task_id" if kind == "task_assignments" else "user_id"]
            self._need(other_kind, other_key, other_kind[:-1].capitalize())
            if (
                existing is None
                and table.index_get(index, (data["project_id"], other_key)) is not None
            ):
                stats.duplicates_detected += 1
                raise Invalid(
                    f"{other_kind[:-1].capitalize()} has already been assigned to this project",
                    "duplicate",
                )
        elif kind in ("time_entries", "expenses"):
            self._validate_work(kind, data, existing, changes)
        elif kind == "invoices":
            self._need("clients", data["client_id"], "Client")
            if data.get("state") not in ("draft", "open", "paid", "closed"):
                raise Invalid("State is invalid")
            for item in data.get("line_items") or []:
                if not isinstance(item, dict):
                    raise Invalid("Line items are invalid")
                if item.get("project_id") is not None:
                    self._need("projects", item["project_id"], "Line item project")
        elif kind == "x_milestones":
            self._need("projects", data["project_id"], "Project")
            if data.get("status") not in MILESTONE_STATES:
                raise Invalid(f"Status must be one of {', '.join(MILESTONE_STATES)}")
        elif kind == "roles":
            for user_id in data.get("user_ids") or []:
                self._need("users", user_id, "User")

    def _validate_work(
        self, kind: str, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
    ) -> None:
        # Approved work is locked in Harvest; only un-approving (an extension) is allowed.
        unlocking_fields = {"approval_status", "is_billed", "external_reference"}
        if (
            existing is not None
            and existing.data.get("approval_status") == "approved"
            and set(changes) - unlocking_fields
        ):
            raise Invalid(
                f"{'Time entry' if kind == 'time_entries' else 'Expense'} is locked: "
                "it has been approved",
                "locked",
            )
        project = self._need("projects", data["project_id"], "Project")
        if data.get("approval_status", "unsubmitted") not in APPROVAL_STATES:
            raise Invalid(f"Approval status must be one of {', '.join(APPROVAL_STATES)}")
        if existing is None and not project.data.get("is_active"):
            raise Invalid(
                "Project is archived: time and expenses cannot be added", "archived_project"
            )
        self._need("users", data.get("user_id"), "User")
        if kind == "time_entries":
            if "project_id" in changes or "task_id" in changes:
                assignment = self.store.table(SYSTEM, "task_assignments").index_get(
                    "pt", (data["project_id"], data["task_id"])
                )
                if assignment is None:
                    raise Invalid("Task is not assigned to this project", "unassigned_task")
            if data.get("hours") is not None and not 0 <= data["hours"] <= 24:
                raise Invalid("Hours must be between 0 and 24")
        else:
            self._need("expense_categories", data["expense_category_id"], "Expense category")
            if data.get("total_cost") is None and data.get("units") is None:
                raise Invalid("Total cost can't be blank")
        ref = data.get("external_reference")
        ref_id = ref.get("id") if isinstance(ref, dict) else None
        if ref_id and "external_reference" in changes:
            other = self.store.table(SYSTEM, kind).index_get("external_reference", str(ref_id))
            if other is not None and other is not existing:
                # Harvest accepts it; the sandbox counts it so tests can prove nothing doubled.
                self.store.stats.of(SYSTEM, kind).duplicates_detected += 1

    def _apply(self, kind: str, data: dict[str, Any], changes: dict[str, Any]) -> None:
        """Derived fields, set the way Harvest sets them."""
        if kind == "clients":
            data.setdefault("statement_key", secrets.token_hex(16))
        if kind == "time_entries":
            if "hours" in changes or "ended_time" in changes or "is_running" not in data:
                running = data.get("hours") is None and not data.get("ended_time")
                data["is_running"] = running
                data["timer_started_at"] = iso(self.store.clock.now()) if running else None
                if data.get("hours") is None:
                    data["hours"] = 0.0
            data.setdefault("approval_status", "unsubmitted")
            data.setdefault("is_billed", False)
            if {"project_id", "task_id", "user_id", "billable"} & set(changes):
                data["billable"], data["billable_rate"], data["cost_rate"] = self._rates(data)
        if kind == "expenses":
            data.setdefault("approval_status", "unsubmitted")
            data.setdefault("is_billed", False)
            if data.get("total_cost") is None and data.get("units") is not None:
                category = self.store.get(SYSTEM, "expense_categories", data["expense_category_id"])
                unit_price = category.data.get("unit_price") if category else None
                data["total_cost"] = round((unit_price or 0.0) * data["units"], 2)
        if kind == "invoices":
            self._invoice_totals(data)
        if kind == "x_milestones":
            if changes.get("status") == "complete" and not data.get("completed_at"):
                data["completed_at"] = iso(self.store.clock.now())
            data.setdefault("completed_at", None)
            if data.get("currency") is None:
                project = self.store.get(SYSTEM, "projects", data["project_id"])
                client = (
                    self.store.get(SYSTEM, "clients", project.data["client_id"])
                    if project
                    else None
                )
                data["currency"] = client.data.get("currency") if client else None

    def _rates(self, data: dict[str, Any]) -> tuple[bool, float | None, float | None]:
        project = self.store.get(SYSTEM, "projects", data["project_id"])
        user = self.store.get(SYSTEM, "users", data.get("user_id"))
        ta = self.store.table(SYSTEM, "task_assignments").index_get(
            "pt", (data["project_id"], data["task_id"])
        )
        ua = self.store.table(SYSTEM, "user_assignments").index_get(
            "pu", (data["project_id"], data.get("user_id"))
        )
        billable = bool(
            project
            and project.data.get("is_billable")
            and ta
            and ta.data.get("billable") is not False
        )
        rate: float | None = None
        if billable and project is not None:
            bill_by = project.data.get("bill_by")
            if bill_by == "Project":
                rate = project.data.get("hourly_rate")
            elif bill_by == "Tasks" and ta is not None:
                rate = ta.data.get("hourly_rate")
            elif bill_by == "People":
                if ua is not None and not ua.data.get("use_default_rates"):
                    rate = ua.data.get("hourly_rate")
                elif user is not None:
                    rate = user.data.get("default_hourly_rate")
        cost = user.data.get("cost_rate") if user else None
        if "billable" in data and data["billable"] is False:
            billable = False
        return billable, rate, cost

    @staticmethod
    def _invoice_totals(data: dict[str, Any]) -> None:
        subtotal = taxed = taxed2 = 0.0
        items = []
        for n, item in enumerate(data.get("line_items") or [], start=1):
            quantity = float(item.get("quantity") or 1)
            unit_price = float(item.get("unit_price") or 0)
            amount = round(quantity * unit_price, 2)
            items.append(
                {
                    **item,
                    "id": item.get("id") or n,
                    "quantity": quantity,
                    "unit_price": unit_price,
                    "amount": amount,
                }
            )
            subtotal += amount
            taxed += amount if item.get("taxed") else 0.0
            taxed2 += amount if item.get("taxed2") else 0.0
        data["line_items"] = items
        discount_amount = round(subtotal * (data.get("discount") or 0) / 100, 2)
        tax_amount = (
            round(taxed * (data.get("tax") or 0) / 100, 2) if data.get("tax") is not None else None
        )
        tax2_amount = (
            round(taxed2 * (data.get("tax2") or 0) / 100, 2)
            if data.get("tax2") is not None
            else None
        )
        total = round(subtotal - discount_amount + (tax_amount or 0) + (tax2_amount or 0), 2)
        data.update(
            amount=total,
            due_amount=0.0 if data.get("state") in ("paid", "closed") else total,
            discount_amount=discount_amount,
            tax_amount=tax_amount,
            tax2_amount=tax2_amount,
        )

    # -- rendering ---------------------------------------------------------------------------

    def _ref(self, kind: str, key: Any, *fields: str) -> dict[str, Any] | None:
        memo = self._memo
        if memo is None:
            return self._ref_now(kind, key, fields)
        name = ("ref", kind, key, fields)
        if name not in memo:
            memo[name] = self._ref_now(kind, key, fields)
        return memo[name]

    def _nested(self, kind: str, row: Row) -> dict[str, Any]:
        memo = self._memo
        if memo is None:
            return self.render(kind, row)
        name = ("render", kind, row.key)
        if name not in memo:
            memo[name] = self.render(kind, row)
        return memo[name]

    def _ref_now(self, kind: str, key: Any, fields: tuple[str, ...]) -> dict[str, Any] | None:
        row = self.store.get(SYSTEM, kind, key)
        if row is None:
            return None
        out: dict[str, Any] = {"id": row.key}
        for name in fields:
            out[name] = row.data.get(name)
        if kind == "users":
            out["name"] = f"{row.data['first_name']} {row.data['last_name']}"
        return out

    def render(self, kind: str, row: Row) -> dict[str, Any]:
        renderer = RENDERERS.get(kind)
        data = row.data
        out: dict[str, Any] = {"id": row.key}
        out.update(
            renderer(self, data)
            if renderer
            else {k: v for k, v in data.items() if not k.endswith("_id")}
        )
        out["created_at"] = iso(row.created)
        out["updated_at"] = iso(row.updated)
        return out

    def _project_ref(self, project_id: Any) -> dict[str, Any] | None:
        return self._ref("projects", project_id, "name", "code")

    def _client_of(self, project_id: Any) -> dict[str, Any] | None:
        project = self.store.get(SYSTEM, "projects", project_id)
        return (
            None
            if project is None
            else self._ref("clients", project.data["client_id"], "name", "currency")
        )

    def _render_contact(self, d: dict[str, Any]) -> dict[str, Any]:
        return {
            "client": self._ref("clients", d["client_id"], "name"),
            **{k: v for k, v in d.items() if k != "client_id"},
        }

    def _render_project(self, d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "client_id"}
        out["client"] = self._ref("clients", d["client_id"], "name", "currency")
        out["over_budget_notification_date"] = None
        return out

    def _render_assignment(self, d: dict[str, Any], other: str) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if not k.endswith("_id")}
        out["project"] = self._project_ref(d["project_id"])
        out[other] = self._ref(
            f"{other}s", d[f"{other}_id"], *(("name",) if other == "task" else ())
        )
        return out

    def _render_entry(self, d: dict[str, Any]) -> dict[str, Any]:
        approved = d.get("approval_status") == "approved"
        ta = self.store.table(SYSTEM, "task_assignments").index_get(
            "pt", (d["project_id"], d["task_id"])
        )
        ua = self.store.table(SYSTEM, "user_assignments").index_get(
            "pu", (d["project_id"], d.get("user_id"))
        )
        project = self.store.get(SYSTEM, "projects", d["project_id"])
        locked_reason = None
        if approved:
            locked_reason = "Item Approved and Locked for this Time Period"
        elif d.get("is_billed"):
            locked_reason = "Item Invoiced and Locked for this Time Period"
        elif project is not None and not project.data.get("is_active"):
            locked_reason = "Project is archived"
        hours = d.get("hours") or 0.0
        return {
            "spent_date": d["spent_date"],
            "user": self._ref("users", d.get("user_id")),
            "user_assignment": self._nested("user_assignments", ua) if ua else None,
            "client": self._client_of(d["project_id"]),
            "project": self._ref("projects", d["project_id"], "name"),
            "task": self._ref("tasks", d["task_id"], "name"),
            "task_assignment": self._nested("task_assignments", ta) if ta else None,
            "external_reference": d.get("external_reference"),
            "invoice": d.get("invoice"),
            "hours": hours,
            "hours_without_timer": hours,
            "rounded_hours": round(hours * 4) / 4,  # Harvest's default rounding: 15 minutes
            "notes": d.get("notes"),
            "is_locked": locked_reason is not None,
            "locked_reason": locked_reason,
            "is_closed": approved,
            "approval_status": d.get("approval_status"),
            "is_billed": bool(d.get("is_billed")),
            "timer_started_at": d.get("timer_started_at"),
            "started_time": d.get("started_time"),
            "ended_time": d.get("ended_time"),
            "is_running": bool(d.get("is_running")),
            "billable": bool(d.get("billable")),
            "budgeted": True,
            "billable_rate": d.get("billable_rate"),
            "cost_rate": d.get("cost_rate"),
        }

    def _render_expense(self, d: dict[str, Any]) -> dict[str, Any]:
        approved = d.get("approval_status") == "approved"
        category = self.store.get(SYSTEM, "expense_categories", d["expense_category_id"])
        ua = self.store.table(SYSTEM, "user_assignments").index_get(
            "pu", (d["project_id"], d.get("user_id"))
        )
        return {
            "client": self._client_of(d["project_id"]),
            "project": self._project_ref(d["project_id"]),
            "expense_category": None
            if category is None
            else {
                "id": category.key,
                "name": category.data["name"],
                "unit_price": None
                if category.data.get("unit_price") is None
                else str(category.data["unit_price"]),
                "unit_name": category.data.get("unit_name"),
            },
            "user": self._ref("users", d.get("user_id")),
            "user_assignment": self._nested("user_assignments", ua) if ua else None,
            "receipt": d.get("receipt"),
            "invoice": d.get("invoice"),
            "notes": d.get("notes"),
            "units": d.get("units"),
            "total_cost": d.get("total_cost"),
            "billable": bool(d.get("billable")),
            "is_closed": approved,
            "approval_status": d.get("approval_status"),
            "is_locked": approved or bool(d.get("is_billed")),
            "is_billed": bool(d.get("is_billed")),
            "locked_reason": "Item Approved and Locked for this Time Period" if approved else None,
            "spent_date": d["spent_date"],
        }

    def _render_invoice(self, d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k not in ("client_id", "line_items", "creator_id")}
        out["client"] = self._ref("clients", d["client_id"], "name")
        out["creator"] = self._ref("users", d.get("creator_id") or self.admin_id())
        out["line_items"] = [
            {
                **{k: v for k, v in item.items() if k != "project_id"},
                "project": self._project_ref(item.get("project_id")),
            }
            for item in d.get("line_items") or []
        ]
        out.setdefault("client_key", None)
        for name in ("sent_at", "paid_at", "paid_date", "closed_at"):
            out.setdefault(name, None)
        out.update(estimate=None, retainer=None, recurring_invoice_id=None, payment_options=[])
        return out

    def _render_milestone(self, d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "project_id"}
        out["project"] = self._project_ref(d["project_id"])
        return out


Renderer = Callable[[Harvest, dict[str, Any]], dict[str, Any]]
RENDERERS: dict[str, Renderer] = {
    "contacts": Harvest._render_contact,
    "projects": Harvest._render_project,
    "task_assignments": lambda h, d: h._render_assignment(d, "task"),
    "user_assignments": lambda h, d: h._render_assignment(d, "user"),
    "time_entries": Harvest._render_entry,
    "expenses": Harvest._render_expense,
    "invoices": Harvest._render_invoice,
    "x_milestones": Harvest._render_milestone,
    "roles": lambda h, d: dict(d),
}
