"""What every Xero resource shares: the gate hooks (auth by bearer token and ``Xero-Tenant-Id``,
Xero's error bodies, rate-limit headers, webhook events), the response envelope, validation
errors, ``Idempotency-Key`` replay, batch bodies and ``summarizeErrors``, list filtering with
``If-Modified-Since``/``IDs``/``where``/``order``/paging, and the indexed store writes.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, IdempotentResult, Vendor, refuse
from ..ratelimit import Denied, Lease
from ..store import Change, Row
from .formats import ms_date, parse_since, problem
from .tenants import TENANTS, Tenant
from .where import compile_where, sort_key

SYSTEM = "xero"
MAX_BATCH = 50  # Xero's guidance for elements per PUT/POST; the sandbox enforces it
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
API = "/api.xro/2.0"

# Fields ``searchTerm`` looks in (of the rendered contact, invoice or payment).
SEARCHED = (
    "Name",
    "FirstName",
    "LastName",
    "ContactNumber",
    "EmailAddress",
    "InvoiceNumber",
    "Reference",
)


class XeroBase(Vendor):
    """The shared part of the Xero look-alike; one mixin per resource builds on it."""

    system = SYSTEM
    public_paths = frozenset({"/connect/token"})

    # -- gate hooks --------------------------------------------------------------------------

    def object_of(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if parts[0] == "api.xro" and len(parts) > 2:
            return parts[2]
        return parts[0].lower() or "other"

    def authenticate(self, request: Request) -> str | Response:
        auth = request.headers.get("authorization", "")
        token = self.sandbox.tokens.get(auth[7:]) if auth.lower().startswith("bearer ") else None
        if token is None or token["system"] != SYSTEM or token["expires"] < time.time():
            return JSON(problem(401, "Unauthorized", "AuthenticationUnsuccessful"), 401)
        if not request.url.path.startswith(f"{request.scope.get('root_path', '')}{API}"):
            return "token:" + auth[7:]
        tenant = request.headers.get("xero-tenant-id", "")
        if tenant not in TENANTS:
            return JSON(problem(403, "Forbidden", "AuthorizationUnsuccessful"), 403)
        return tenant

    def error(self, status: int, message: str) -> Response:
        return JSON(
            problem(
                status,
                {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error"),
                message,
            ),
            status,
        )

    def throttled(self, denied: Denied) -> Response:
        return JSON(
            problem(429, "Too Many Requests", f"Rate limit exceeded ({denied.problem})"),
            429,
            headers={
                "Retry-After": str(denied.retry_after),
                "X-Rate-Limit-Problem": denied.problem,
            },
        )

    def limit_headers(self, lease: Lease) -> list[tuple[bytes, bytes]]:
        names = {
            "minute": b"x-minlimit-remaining",
            "day": b"x-daylimit-remaining",
            "appminute": b"x-appminlimit-remaining",
        }
        return [(names[k], str(v).encode()) for k, v in lease.remaining.items() if k in names]

    def event(self, change: Change) -> dict[str, Any] | None:
        category = {"Contacts": "CONTACT", "Invoices": "INVOICE"}.get(change.obj)
        if category is None:
            return None  # Xero only publishes contact and invoice events
        stamp = datetime.fromtimestamp(change.row.updated, UTC)
        return {
            "resourceUrl": f"{self.sandbox.base_url}/xero{API}/{change.obj}/{change.row.key}",
            "resourceId": change.row.key,
            "tenantId": change.scope,
            "tenantType": "ORGANISATION",
            "eventCategory": category,
            "eventType": "CREATE" if change.kind == "created" else "UPDATE",
            # Xero writes this without a zone (it is UTC), milliseconds included.
            "eventDateUtc": stamp.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{stamp.microsecond // 1000:03d}",
        }

    # -- plumbing ----------------------------------------------------------------------------

    def envelope(
        self, name: str, items: list[dict[str, Any]], pagination: dict[str, int] | None = None
    ) -> JSON:
        body: dict[str, Any] = {
            "Id": str(uuid.uuid4()),
            "Status": "OK",
            "ProviderName": "Concord Sandbox",
            "DateTimeUTC": ms_date(time.time()),
        }
        if pagination is not None:
            body["pagination"] = pagination
        body[name] = items
        return JSON(body)

    def not_found(self, request: Request) -> Response:
        refuse(request, "not_found")
        return JSON(
            problem(404, "Not Found", "The resource you're looking for cannot be found"), 404
        )

    def validation_error(
        self, request: Request, elements: list[dict[str, Any]], reason: str
    ) -> Response:
        refuse(request, reason)
        return JSON(
            {
                "ErrorNumber": 10,
                "Type": "ValidationException",
                "Message": "A validation exception occurred",
                "Elements": elements,
            },
            400,
        )

    def bad_request(self, request: Request, message: str, reason: str = "malformed") -> Response:
        return self.validation_error(
            request, [{"ValidationErrors": [{"Message": message}]}], reason
        )

    def writes(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler with Xero's ``Idempotency-Key`` semantics for PUT/POST."""

        async def endpoint(request: Request) -> Response:
            key = request.headers.get("idempotency-key")
            if request.method == "GET" or not key:
                return await handler(request)
            tenant = request.headers.get("xero-tenant-id", "")
            obj = self.object_of(request.url.path[len(request.scope.get("root_path", "")) :])
            if len(key) > 128:
                return self.bad_request(request, "Idempotency-Key must be at most 128 characters")
            body = await request.body()
            fingerprint = hashlib.sha256(
                f"{request.method} {request.url.path}?{request.url.query}\n".encode() + body
            ).hexdigest()
            seen = self.sandbox.idempotency.get((SYSTEM, tenant, key))
            if seen is not None:
                if seen.fingerprint != fingerprint:
                    return self.bad_request(
                        request,
                        f"Idempotency-Key '{key}' has already been used for a different request",
                        "idempotency_conflict",
                    )
                self.store.stats.of(SYSTEM, obj).idempotent_replays += 1
                return Response(
                    seen.body,
                    seen.status,
                    headers=dict((k.decode(), v.decode()) for k, v in seen.headers),
                )
            response = await handler(request)
            if response.status_code < 500:
                headers = [(k, v) for k, v in response.raw_headers if k == b"content-type"]
                self.sandbox.idempotency[(SYSTEM, tenant, key)] = IdempotentResult(
                    fingerprint, response.status_code, bytes(response.body), headers
                )
            return response

        return endpoint

    async def elements(self, request: Request, name: str) -> list[dict[str, Any]] | Response:
        """The request's elements: ``{"Invoices": [...]}`` or a single bare object."""
        try:
            body = await request.json()
        except ValueError:
            return self.bad_request(request, "The request body is not valid JSON")
        if isinstance(body, dict) and isinstance(body.get(name), list):
            items = body[name]
        elif isinstance(body, dict) and name not in body:
            items = [body]
        else:
            return self.bad_request(request, f"Expected an object with a '{name}' array")
        if not all(isinstance(item, dict) for item in items):
            return self.bad_request(request, f"Each element of '{name}' must be an object")
        if len(items) > MAX_BATCH:
            return self.bad_request(
                request,
                f"No more than {MAX_BATCH} {name} can be submitted in one request",
                "batch_too_large",
            )
        return items

    def tenant(self, request: Request) -> Tenant:
        return TENANTS[request.headers["xero-tenant-id"]]

    def select(
        self, request: Request, obj: str, render: Callable[[Row, Tenant], dict[str, Any]]
    ) -> Response:
        """GET list: If-Modified-Since, IDs, where, order, page/pageSize, common filters.

        Filters that read stored fields run on the rows; only what they keep is rendered (an
        invoice renders its contact and payments). Without ``where``, ``order`` or
        ``searchTerm``, which read the rendered shape, only the requested page is rendered.
        """
        tenant, params = self.tenant(request), request.query_params
        since: float | None = None
        if request.headers.get("if-modified-since"):
            since = parse_since(request.headers["if-modified-since"])
            if since is None:
                return self.bad_request(
                    request,
                    "If-Modified-Since is not a date-time with its offset (RFC 3339, e.g. "
                    "2020-02-06T12:17:43.202-08:00 or ...Z) nor an HTTP date",
                )
        test: Callable[[dict[str, Any]], bool] | None = None
        if params.get("where"):
            try:
                test = compile_where(params["where"])
            except ValueError as exc:
                refuse(request, "malformed")
                return JSON(
                    {"ErrorNumber": 16, "Type": "QueryParseException", "Message": str(exc)}, 400
                )
        paging: tuple[int, int] | None = None
        if "page" in params:
            try:
                paging = (
                    max(1, int(params["page"])),
                    min(MAX_PAGE_SIZE, max(1, int(params.get("pageSize", DEFAULT_PAGE_SIZE)))),
                )
            except ValueError:
                return self.bad_request(request, "page and pageSize must be integers")
        keep = self._row_filter(obj, params, since)
        rows = [r for r in self._candidates(obj, tenant.id, params) if keep(r)]
        term = params.get("searchTerm", "").casefold()
        order = params.get("order", "")
        if paging is not None and test is None and not term and not order:
            page, size = paging
            chunk = [render(r, tenant) for r in rows[(page - 1) * size : page * size]]
            return self.envelope(obj, chunk, self._pagination(page, size, len(rows)))
        items = [render(r, tenant) for r in rows]
        if term:
            items = [
                i for i in items if any(term in str(i.get(k) or "").casefold() for k in SEARCHED)
            ]
        if test is not None:
            items = [item for item in items if test(item)]
        if order:
            field_name, _, direction = order.partition(" ")
            reverse = direction.strip().upper() == "DESC"
            items.sort(key=lambda item: sort_key(item.get(field_name)), reverse=reverse)
        if paging is None:
            return self.envelope(obj, items)
        page, size = paging
        chunk = items[(page - 1) * size : page * size]
        return self.envelope(obj, chunk, self._pagination(page, size, len(items)))

    @staticmethod
    def _pagination(page: int, size: int, count: int) -> dict[str, int]:
        return {"page": page, "pageSize": size, "pageCount": -(-count // size), "itemCount": count}

    def _candidates(self, obj: str, tenant_id: str, params: Any) -> Iterable[Row]:
        """The rows an ``IDs`` list names (looked up, not scanned for), else all rows."""
        ids = {i.strip().lower() for i in params.get("IDs", "").split(",") if i.strip()}
        if not ids:
            return self.store.rows(SYSTEM, obj, tenant_id)
        hits = [r for key in ids if (r := self.store.get(SYSTEM, obj, key, tenant_id)) is not None]
        if len(hits) < 2:
            return hits
        # Several: back into the table's (creation) order, as the list without IDs has it.
        wanted = {r.key for r in hits}
        return [r for r in self.store.rows(SYSTEM, obj, tenant_id) if r.key in wanted]

    @staticmethod
    def _row_filter(obj: str, params: Any, since: float | None) -> Callable[[Row], bool]:
        """If-Modified-Since and the list filters that compare stored fields, as one test."""
        tests: list[Callable[[Row], bool]] = []
        if since is not None:
            tests.append(lambda r: r.updated >= since)
        if obj == "Contacts" and params.get("includeArchived") != "true":
            tests.append(lambda r: r.data.get("ContactStatus") != "ARCHIVED")
        if obj == "Invoices":
            if params.get("Statuses"):
                wanted = set(params["Statuses"].upper().split(","))
                tests.append(lambda r: r.data["Status"] in wanted)
            if params.get("InvoiceNumbers"):
                numbers = set(params["InvoiceNumbers"].split(","))
                tests.append(lambda r: (r.data.get("InvoiceNumber") or "") in numbers)
            if params.get("ContactIDs"):
                contacts = {c.lower() for c in params["ContactIDs"].split(",")}
                tests.append(lambda r: r.data["ContactID"] in contacts)
        return lambda row: all(test(row) for test in tests)

    # -- storage: every write of a contact, invoice or payment goes through these ----------

    @staticmethod
    def index_keys(obj: str, data: dict[str, Any]) -> dict[str, Any]:
        """Where a record is found besides its id; ``insert`` and ``replace`` keep them."""
        keys: dict[str, Any] = {}
        if obj == "Contacts":
            if data.get("Name"):
                keys["name"] = str(data["Name"]).casefold()
            if data.get("ContactNumber"):
                keys["number"] = data["ContactNumber"]
        elif obj == "Invoices":
            if data.get("InvoiceNumber"):
                keys["number"] = str(data["InvoiceNumber"])
            if data.get("Reference"):
                keys["reference"] = data["Reference"]
        elif obj == "Payments":
            # A payment identical to an earlier one (counted as a duplicate; Xero allows it).
            keys["same"] = (
                data.get("InvoiceID"),
                data.get("Amount"),
                data.get("Date"),
                data.get("Reference"),
            )
        return keys

    def insert(
        self,
        obj: str,
        key: str,
        data: dict[str, Any],
        tenant_id: str,
        *,
        at: float | None = None,
        seeded: bool = False,
    ) -> Row:
        row = self.store.insert(SYSTEM, obj, key, data, tenant_id, at=at, seeded=seeded)
        self.store.table(SYSTEM, obj, tenant_id).reindex(key, {}, self.index_keys(obj, data))
        return row

    def replace(self, obj: str, row: Row, data: dict[str, Any], tenant_id: str) -> None:
        """Make ``data`` the record's content: re-index, then touch (versioned, announced)."""
        self.store.table(SYSTEM, obj, tenant_id).reindex(
            row.key, self.index_keys(obj, row.data), self.index_keys(obj, data)
        )
        row.data = data
        self.store.touch(SYSTEM, obj, row, tenant_id)

    # -- batch writes: contacts, invoices and payments -----------------------------------------

    def _commit(
        self,
        request: Request,
        name: str,
        plans: list[tuple[dict[str, Any], Row | None, list[str]]],
        apply: Callable[[dict[str, Any], Row | None, Tenant], Row],
        render: Callable[[Row, Tenant], dict[str, Any]],
        tenant: Tenant,
    ) -> Response:
        """Apply a batch the way ``summarizeErrors`` says.

        Default (``summarizeErrors=true``): any invalid element fails the whole request with
        one 400 listing the invalid elements, and nothing is written. With ``false``: valid
        elements are written, invalid ones come back with ``ValidationErrors`` in a 200.
        """
        summarize = request.query_params.get("summarizeErrors", "true").lower() != "false"
        failed = [(item, row, errors) for item, row, errors in plans if errors]
        if failed and summarize:
            elements = [
                self._echo(name, item, row, errors, tenant, render) for item, row, errors in failed
            ]
            return self.validation_error(request, elements, "validation")
        out: list[dict[str, Any]] = []
        for item, row, errors in plans:
            if errors:
                refuse(request, "validation")
                self.store.stats.refused(SYSTEM, name, 200, "validation_in_batch")
                out.append(self._echo(name, item, row, errors, tenant, render))
                continue
            saved = apply(item, row, tenant)
            rendered = render(saved, tenant)
            if not summarize:
                rendered["StatusAttributeString"] = "OK"
            out.append(rendered)
        return self.envelope(name, out)

    def _echo(
        self,
        name: str,
        item: dict[str, Any],
        row: Row | None,
        errors: list[str],
        tenant: Tenant,
        render: Callable[[Row, Tenant], dict[str, Any]],
    ) -> dict[str, Any]:
        """An invalid element as Xero returns it: what was sent, plus its errors."""
        id_field = {"Contacts": "ContactID", "Invoices": "InvoiceID", "Payments": "PaymentID"}[name]
        echo: dict[str, Any] = (
            render(row, tenant)
            if row is not None
            else {id_field: "00000000-0000-0000-0000-000000000000"}
        )
        for key in ("Name", "Reference", "InvoiceNumber", "Type", "Status", "Amount"):
            if key in item and isinstance(item[key], str | int | float):
                echo[key] = item[key]
        echo["StatusAttributeString"] = "ERROR"
        echo["ValidationErrors"] = [{"Message": message} for message in errors]
        echo["HasErrors" if name == "Invoices" else "HasValidationErrors"] = True
        return echo
