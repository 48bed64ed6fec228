"""Xero: identity (token, connections) and the Accounting API under ``/xero/api.xro/2.0``.

Follows ../shared/specs/xero-accounting.yaml and xero-identity.yaml. The quirks a connector
must handle are kept: PUT creates and POST creates-or-updates; ``Xero-Tenant-Id`` on every
Accounting call; dates as ``/Date(1700000000000+0000)/``; ``If-Modified-Since`` (inclusive);
``page`` + ``pageSize`` (without ``page`` every record is returned, as Xero does for
Contacts); ``summarizeErrors``; ``Idempotency-Key`` (replay returns the first response,
the same key with another body is refused); validation errors as ``ValidationException``
with ``Elements[].ValidationErrors[]``; batch writes of up to 50 elements.

Two tenants (organisations) are always connected: a legacy ERP (US and German legal
entities, base USD) and a new ERP (UK, base GBP). See README.md for the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .gate import JSON, IdempotentResult, Sandbox, Vendor, form_fields, refuse
from .ratelimit import Denied, Lease
from .store import Change, Row

SYSTEM = "xero"
CLIENT_ID = "concord-xero"
CLIENT_SECRET = "sandbox-xero-secret"  # noqa: S105 - a documented sandbox credential
TOKEN_TTL_S = 1800  # Xero access tokens live 30 minutes
MAX_BATCH = 50  # Xero's guidance for elements per PUT/POST; the sandbox enforces it
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
API = "/api.xro/2.0"


@dataclass(frozen=True)
class Tenant:
    id: str
    connection_id: str
    name: str
    base_currency: str
    country: str
    currencies: tuple[tuple[str, str], ...]
    # (TaxType, Name, rate %, ReportTaxType, requires the contact's TaxNumber)
    tax_rates: tuple[tuple[str, str, float, str, bool], ...]


LEGACY = Tenant(
    id="6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01",
    connection_id="0c9a3b44-7e21-4d8f-8b55-2f1e6a7c9d01",
    name="Concord Legacy ERP",
    base_currency="USD",
    country="US",
    currencies=(("USD", "United States Dollar"), ("EUR", "Euro")),
    tax_rates=(
        ("NONE", "Tax Exempt", 0.0, "NONE", False),
        ("OUTPUT", "Umsatzsteuer 19%", 19.0, "OUTPUT", False),
        ("TAX001", "US Sales Tax 8.875%", 8.875, "OUTPUT", False),
        # EU reverse charge: the customer accounts for VAT, so its VAT id must be on file.
        ("TAX002", "Reverse Charge EU Services", 0.0, "REVERSECHARGES", True),
    ),
)
NEW = Tenant(
    id="9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02",
    connection_id="1d0b4c55-8f32-4e9a-9c66-3a2f7b8d0e02",
    name="Concord ERP",
    base_currency="GBP",
    country="GB",
    currencies=(("GBP", "British Pound"), ("EUR", "Euro"), ("USD", "United States Dollar")),
    tax_rates=(
        ("OUTPUT2", "20% (VAT on Income)", 20.0, "OUTPUT", False),
        ("ZERORATEDOUTPUT", "Zero Rated Income", 0.0, "OUTPUT", False),
        ("ECZROUTPUTSERVICES", "Zero Rated EC Services", 0.0, "ECOUTPUTSERVICES", True),
        ("NONE", "No VAT", 0.0, "NONE", False),
    ),
)
TENANTS = {t.id: t for t in (LEGACY, NEW)}
ACCOUNTS = (
    ("090", "Business Bank Account", "BANK"),
    ("200", "Sales", "REVENUE"),
    ("260", "Other Revenue", "REVENUE"),
)
PAYMENT_TYPES = {"ACCREC": "ACCRECPAYMENT", "ACCPAY": "ACCPAYPAYMENT"}  # by invoice Type
INVOICE_STATUSES = ("DRAFT", "SUBMITTED", "AUTHORISED", "PAID", "VOIDED", "DELETED")
# Status changes a client may request (PAID only ever comes from payments).
TRANSITIONS = {
    "DRAFT": {"DRAFT", "SUBMITTED", "AUTHORISED", "DELETED"},
    "SUBMITTED": {"SUBMITTED", "DRAFT", "AUTHORISED", "DELETED"},
    "AUTHORISED": {"AUTHORISED", "VOIDED"},
}


def ms_date(ts: float) -> str:
    return f"/Date({int(ts * 1000)}+0000)/"  # floor: a watermark never passes the record


def day_to_ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def parse_day(value: Any) -> str | None:
    """Xero accepts ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM:SS`` and ``/Date(ms+0000)/``."""
    if not isinstance(value, str) or not value:
        return None
    match = _MS_DATE.match(value)
    if match:
        return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC).date().isoformat()
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        return None


def parse_since(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


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


def money(value: float) -> float:
    return round(value + 0.0, 2)


class Invalid(Exception):
    def __init__(self, *messages: str, reason: str = "validation") -> None:
        super().__init__(messages[0])
        self.messages = list(messages)
        self.reason = reason


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {
        "Type": None,
        "Title": title,
        "Status": status,
        "Detail": detail,
        "Instance": str(uuid.uuid4()),
        "Extensions": {},
    }


class Xero(Vendor):
    system = SYSTEM
    public_paths = frozenset({"/connect/token"})

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        sandbox.reset_hooks.append(self.install_reference_data)
        self.install_reference_data()

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
            return JSON(_problem(401, "Unauthorized", "AuthenticationUnsuccessful"), 401)
        if not request.url.path.startswith(f"{request.scope.get('root_path', '')}{API}"):
            return "token:" + auth[7:]
        tenant = request.headers.get("xero-tenant-id", "")
        if tenant not in TENANTS:
            return JSON(_problem(403, "Forbidden", "AuthorizationUnsuccessful"), 403)
        return tenant

    def error(self, status: int, message: str) -> Response:
        return JSON(
            _problem(
                status,
                {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error"),
                message,
            ),
            status,
        )

    def throttled(self, denied: Denied) -> Response:
        return JSON(
            _problem(429, "Too Many Requests", f"Rate limit exceeded ({denied.problem})"),
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

    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        w = self.writes
        return [
            Route("/connect/token", self.token, methods=["POST"]),
            Route("/connections", self.connections, methods=["GET"]),
            Route("/Connections", self.connections, methods=["GET"]),
            Route(f"{API}/Organisation", self.organisation, methods=["GET"]),
            Route(f"{API}/Accounts", self.accounts, methods=["GET"]),
            Route(f"{API}/TaxRates", self.tax_rates, methods=["GET"]),
            Route(f"{API}/Currencies", self.currencies, methods=["GET"]),
            Route(
                f"{API}/Contacts", w(self.list_or_write_contacts), methods=["GET", "PUT", "POST"]
            ),
            Route(f"{API}/Contacts/{{id}}", w(self.one_contact), methods=["GET", "POST"]),
            Route(
                f"{API}/Invoices", w(self.list_or_write_invoices), methods=["GET", "PUT", "POST"]
            ),
            Route(f"{API}/Invoices/{{id}}", w(self.one_invoice), methods=["GET", "POST"]),
            Route(f"{API}/Payments", w(self.list_or_write_payments), methods=["GET", "PUT"]),
            Route(f"{API}/Payments/{{id}}", w(self.one_payment), methods=["GET", "POST"]),
            Route(f"{API}/TrackingCategories", w(self.tracking_categories), methods=["GET", "PUT"]),
            Route(
                f"{API}/TrackingCategories/{{id}}",
                w(self.tracking_category),
                methods=["GET", "POST"],
            ),
            Route(
                f"{API}/TrackingCategories/{{id}}/Options",
                w(self.tracking_options),
                methods=["PUT"],
            ),
            Route(
                f"{API}/TrackingCategories/{{id}}/Options/{{option}}",
                w(self.tracking_option),
                methods=["POST"],
            ),
        ]

    # -- identity ----------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        form = await form_fields(request)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                client_id = client_secret = None
        if form.get("grant_type") != "client_credentials":
            refuse(request, "auth")
            return JSON({"error": "unsupported_grant_type"}, 400)
        if client_id != CLIENT_ID or client_secret != CLIENT_SECRET:
            refuse(request, "auth")
            return JSON({"error": "invalid_client"}, 400)
        token = secrets.token_urlsafe(32)
        self.sandbox.tokens[token] = {"system": SYSTEM, "expires": time.time() + TOKEN_TTL_S}
        scope = str(
            form.get("scope") or "accounting.transactions accounting.contacts accounting.settings"
        )
        return JSON(
            {
                "access_token": token,
                "expires_in": TOKEN_TTL_S,
                "token_type": "Bearer",
                "scope": scope,
            }
        )

    async def connections(self, request: Request) -> Response:
        created = "2024-01-02T09:00:00.0000000Z"
        return JSON(
            [
                {
                    "id": t.connection_id,
                    "authEventId": "5c4f3a2b-1d0e-4f9a-8b7c-6d5e4f3a2b10",
                    "tenantId": t.id,
                    "tenantType": "ORGANISATION",
                    "tenantName": t.name,
                    "createdDateUtc": created,
                    "updatedDateUtc": created,
                }
                for t in TENANTS.values()
            ]
        )

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
            _problem(404, "Not Found", "The resource you're looking for cannot be found"), 404
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
                return self.bad_request(request, "If-Modified-Since is not a valid date")
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
            items.sort(key=lambda item: _sort_key(item.get(field_name)), reverse=reverse)
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

    # -- reference data ----------------------------------------------------------------------

    def install_reference_data(self) -> None:
        """Tax rates, currencies and accounts every tenant has; recreated after a reset."""
        for tenant in TENANTS.values():
            if self.store.count(SYSTEM, "TaxRates", tenant.id):
                continue
            for tax_type, name, rate, report, needs_number in tenant.tax_rates:
                self.store.insert(
                    SYSTEM,
                    "TaxRates",
                    tax_type,
                    {
                        "Name": name,
                        "Rate": rate,
                        "ReportTaxType": report,
                        "RequiresTaxNumber": needs_number,
                    },
                    tenant.id,
                    at=day_to_ts("2024-01-01"),
                    seeded=True,
                )
            for code, description in tenant.currencies:
                self.store.insert(
                    SYSTEM, "Currencies", code, {"Description": description}, tenant.id, seeded=True
                )
            for code, name, kind in ACCOUNTS:
                account_id = str(uuid.uuid5(uuid.UUID(tenant.id), code))
                self.store.insert(
                    SYSTEM,
                    "Accounts",
                    code,
                    {"AccountID": account_id, "Name": name, "Type": kind},
                    tenant.id,
                    seeded=True,
                )

    async def organisation(self, request: Request) -> Response:
        tenant = self.tenant(request)
        return self.envelope(
            "Organisations",
            [
                {
                    "OrganisationID": tenant.id,
                    "Name": tenant.name,
                    "LegalName": tenant.name,
                    "BaseCurrency": tenant.base_currency,
                    "CountryCode": tenant.country,
                    "OrganisationType": "COMPANY",
                    "OrganisationStatus": "ACTIVE",
                    "IsDemoCompany": False,
                }
            ],
        )

    async def accounts(self, request: Request) -> Response:
        tenant = self.tenant(request)
        return self.envelope(
            "Accounts",
            [
                {
                    "AccountID": r.data["AccountID"],
                    "Code": r.key,
                    "Name": r.data["Name"],
                    "Type": r.data["Type"],
                    "Status": "ACTIVE",
                    "EnablePaymentsToAccount": r.data["Type"] == "BANK",
                }
                for r in self.store.rows(SYSTEM, "Accounts", tenant.id)
            ],
        )

    async def tax_rates(self, request: Request) -> Response:
        tenant = self.tenant(request)
        return self.envelope(
            "TaxRates",
            [self.render_tax_rate(r) for r in self.store.rows(SYSTEM, "TaxRates", tenant.id)],
        )

    @staticmethod
    def render_tax_rate(row: Row) -> dict[str, Any]:
        d = row.data
        return {
            "Name": d["Name"],
            "TaxType": row.key,
            "ReportTaxType": d["ReportTaxType"],
            "Status": "ACTIVE",
            "TaxComponents": [
                {
                    "Name": d["Name"],
                    "Rate": d["Rate"],
                    "IsCompound": False,
                    "IsNonRecoverable": False,
                }
            ],
            "CanApplyToAssets": True,
            "CanApplyToEquity": True,
            "CanApplyToExpenses": True,
            "CanApplyToLiabilities": True,
            "CanApplyToRevenue": True,
            "DisplayTaxRate": d["Rate"],
            "EffectiveRate": d["Rate"],
        }

    async def currencies(self, request: Request) -> Response:
        tenant = self.tenant(request)
        rows = self.store.rows(SYSTEM, "Currencies", tenant.id)
        return self.envelope(
            "Currencies", [{"Code": r.key, "Description": r.data["Description"]} for r in rows]
        )

    # -- contacts ----------------------------------------------------------------------------

    CONTACT_FIELDS = (
        "ContactNumber",
        "AccountNumber",
        "ContactStatus",
        "Name",
        "FirstName",
        "LastName",
        "CompanyNumber",
        "EmailAddress",
        "TaxNumber",
        "AccountsReceivableTaxType",
        "AccountsPayableTaxType",
        "Addresses",
        "Phones",
        "DefaultCurrency",
        "Website",
    )

    def render_contact(self, row: Row, tenant: Tenant | None = None) -> dict[str, Any]:
        d = row.data
        out: dict[str, Any] = {"ContactID": row.key}
        for name in self.CONTACT_FIELDS:
            value = d.get(name)
            if value not in (None, ""):
                out[name] = value
        out.setdefault("ContactStatus", "ACTIVE")
        out.setdefault("Addresses", [])
        out.setdefault("Phones", [])
        out.update(
            BankAccountDetails="",
            IsSupplier=False,
            IsCustomer=bool(d.get("IsCustomer")),
            UpdatedDateUTC=ms_date(row.updated),
            ContactGroups=[],
            HasAttachments=False,
            HasValidationErrors=False,
        )
        return out

    async def list_or_write_contacts(self, request: Request) -> Response:
        if request.method == "GET":
            return self.select(request, "Contacts", self.render_contact)
        return await self.write_contacts(request, None)

    async def one_contact(self, request: Request) -> Response:
        tenant = self.tenant(request)
        key = request.path_params["id"].lower()
        row = self.store.get(SYSTEM, "Contacts", key, tenant.id)
        if row is None:
            row = self.store.table(SYSTEM, "Contacts", tenant.id).index_get(
                "number", request.path_params["id"]
            )
        if request.method == "GET":
            return (
                self.not_found(request)
                if row is None
                else self.envelope("Contacts", [self.render_contact(row)])
            )
        if row is None:
            return self.not_found(request)
        return await self.write_contacts(request, row)

    async def write_contacts(self, request: Request, target: Row | None) -> Response:
        tenant = self.tenant(request)
        items = await self.elements(request, "Contacts")
        if isinstance(items, Response):
            return items
        plans: list[tuple[dict[str, Any], Row | None, list[str]]] = []
        table = self.store.table(SYSTEM, "Contacts", tenant.id)
        names_in_batch: set[str] = set()
        for item in items:
            row = target
            if row is None and request.method == "POST":
                if item.get("ContactID"):
                    row = self.store.get(
                        SYSTEM, "Contacts", str(item["ContactID"]).lower(), tenant.id
                    )
                    if row is None:
                        plans.append((item, None, ["Contact not found"]))
                        continue
                elif item.get("ContactNumber"):
                    row = table.index_get("number", item["ContactNumber"])
            errors = self._contact_errors(item, row, tenant, names_in_batch)
            if item.get("Name"):
                names_in_batch.add(str(item["Name"]).casefold())
            plans.append((item, row, errors))
        return self._commit(
            request, "Contacts", plans, self._apply_contact, self.render_contact, tenant
        )

    def _contact_errors(
        self, item: dict[str, Any], row: Row | None, tenant: Tenant, batch: set[str]
    ) -> list[str]:
        errors: list[str] = []
        name = item.get("Name", row.data.get("Name") if row else None)
        if not name:
            errors.append("The contact name must be specified.")
        elif "Name" in item:
            other = self.store.table(SYSTEM, "Contacts", tenant.id).index_get(
                "name", str(name).casefold()
            )
            if (
                other is not None
                and other is not row
                and other.data.get("ContactStatus", "ACTIVE") == "ACTIVE"
            ) or str(name).casefold() in batch:
                self.store.stats.of(SYSTEM, "Contacts").duplicates_detected += 1
                errors.append(
                    f"The contact name {name} is already assigned to another contact. "
                    "The contact name must be unique across all active contacts."
                )
        for address in item.get("Addresses") or []:
            if not isinstance(address, dict) or address.get("AddressType") not in (
                "POBOX",
                "STREET",
            ):
                errors.append("AddressType must be POBOX or STREET.")
        if item.get("TaxNumber") is not None and len(str(item["TaxNumber"])) > 50:
            errors.append("The TaxNumber must be at most 50 characters long.")
        if item.get("ContactStatus") not in (None, "ACTIVE", "ARCHIVED"):
            errors.append("ContactStatus must be ACTIVE or ARCHIVED.")
        currency = item.get("DefaultCurrency")
        if currency and self.store.get(SYSTEM, "Currencies", currency, tenant.id) is None:
            errors.append(f"Organisation is not subscribed to currency {currency}")
        return errors

    def _apply_contact(self, item: dict[str, Any], row: Row | None, tenant: Tenant) -> Row:
        data = {k: item[k] for k in self.CONTACT_FIELDS if k in item}
        if row is None:
            data.setdefault("ContactStatus", "ACTIVE")
            return self.insert("Contacts", str(uuid.uuid4()), data, tenant.id)
        self.replace("Contacts", row, {**row.data, **data}, tenant.id)
        return row

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

    def patch_raw(self, obj: str, row: Row, changes: dict[str, Any], scope: str = "") -> None:
        data = {**row.data, **changes}
        if obj == "Invoices" and {"LineItems", "LineAmountTypes"} & changes.keys():
            # Lines and totals as Xero computes them; a total the change sets itself wins.
            data["LineItems"] = [
                self._line(line, data["LineAmountTypes"], TENANTS[scope])
                for line in data.get("LineItems") or []
            ]
            totals = self.totals(data["LineItems"])
            data.update({k: v for k, v in totals.items() if k not in changes})
        settle = obj == "Payments" and bool(
            {"Amount", "Date", "InvoiceID", "Status"} & changes.keys()
        )
        if settle and (
            not isinstance(data.get("Amount"), int | float) or isinstance(data["Amount"], bool)
        ):
            raise ValueError("a payment's Amount must be a number")
        before = row.data.get("InvoiceID")
        self.replace(obj, row, data, scope)
        if settle:
            for invoice_id in dict.fromkeys((before, data.get("InvoiceID"))):
                invoice = self.store.get(SYSTEM, "Invoices", invoice_id, scope)
                if invoice is None:
                    continue
                paid_by = invoice.data.get("PaymentIDs") or []
                if invoice.key == data.get("InvoiceID") and row.key not in paid_by:
                    invoice.data["PaymentIDs"] = [*paid_by, row.key]
                self._settle(invoice, scope)

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

    # -- tracking categories (the project dimension) -----------------------------------------

    def render_category(self, row: Row, tenant: Tenant) -> dict[str, Any]:
        options = self.store.table(SYSTEM, "TrackingOptions", tenant.id).rows
        return {
            "TrackingCategoryID": row.key,
            "Name": row.data["Name"],
            "Status": row.data.get("Status", "ACTIVE"),
            "Options": [
                self.render_option(options[o]) for o in row.data["Options"] if o in options
            ],
        }

    @staticmethod
    def render_option(row: Row) -> dict[str, Any]:
        return {
            "TrackingOptionID": row.key,
            "Name": row.data["Name"],
            "Status": row.data.get("Status", "ACTIVE"),
            "TrackingCategoryID": row.data["TrackingCategoryID"],
        }

    async def tracking_categories(self, request: Request) -> Response:
        tenant = self.tenant(request)
        if request.method == "GET":
            include_archived = request.query_params.get("includeArchived") == "true"
            rows = [
                r
                for r in self.store.rows(SYSTEM, "TrackingCategories", tenant.id)
                if include_archived or r.data.get("Status") != "ARCHIVED"
            ]
            return self.envelope(
                "TrackingCategories", [self.render_category(r, tenant) for r in rows]
            )
        try:
            body = await request.json()
        except ValueError:
            return self.bad_request(request, "The request body is not valid JSON")
        name = body.get("Name") if isinstance(body, dict) else None
        if not name:
            return self.bad_request(
                request, "Tracking Category Name must be specified", "validation"
            )
        existing = [
            r
            for r in self.store.rows(SYSTEM, "TrackingCategories", tenant.id)
            if r.data.get("Status", "ACTIVE") == "ACTIVE"
        ]
        if any(r.data["Name"].casefold() == str(name).casefold() for r in existing):
            self.store.stats.of(SYSTEM, "TrackingCategories").duplicates_detected += 1
            return self.bad_request(
                request, "For each specified tracking category, name must be unique.", "duplicate"
            )
        if len(existing) >= 2:
            return self.bad_request(
                request, "You can only have 2 active tracking categories", "validation"
            )
        row = self.store.insert(
            SYSTEM,
            "TrackingCategories",
            str(uuid.uuid4()),
            {"Name": name, "Status": "ACTIVE", "Options": []},
            tenant.id,
        )
        return self.envelope("TrackingCategories", [self.render_category(row, tenant)])

    async def tracking_category(self, request: Request) -> Response:
        tenant = self.tenant(request)
        row = self.store.get(
            SYSTEM, "TrackingCategories", request.path_params["id"].lower(), tenant.id
        )
        if row is None:
            return self.not_found(request)
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return self.bad_request(request, "The request body is not valid JSON")
            if not isinstance(body, dict):
                return self.bad_request(request, "Expected a TrackingCategory object")
            for key in ("Name", "Status"):
                if key in body:
                    row.data[key] = body[key]
            self.store.touch(SYSTEM, "TrackingCategories", row, tenant.id)
        return self.envelope("TrackingCategories", [self.render_category(row, tenant)])

    async def tracking_options(self, request: Request) -> Response:
        tenant = self.tenant(request)
        category = self.store.get(
            SYSTEM, "TrackingCategories", request.path_params["id"].lower(), tenant.id
        )
        if category is None:
            return self.not_found(request)
        items = await self.elements(request, "Options")
        if isinstance(items, Response):
            return items
        options = self.store.table(SYSTEM, "TrackingOptions", tenant.id).rows
        taken = {
            options[o].data["Name"].casefold() for o in category.data["Options"] if o in options
        }
        for item in items:
            name = str(item.get("Name") or "")
            if not name or len(name) > 100:
                return self.bad_request(
                    request, "Tracking option name must be 1 to 100 characters", "validation"
                )
            if name.casefold() in taken:
                self.store.stats.of(SYSTEM, "TrackingOptions").duplicates_detected += 1
                return self.bad_request(
                    request, "For each specified tracking option, name must be unique.", "duplicate"
                )
            taken.add(name.casefold())
        created = [self.add_option(category, str(item["Name"]), tenant.id) for item in items]
        return self.envelope("Options", [self.render_option(r) for r in created])

    def add_option(
        self,
        category: Row,
        name: str,
        tenant_id: str,
        *,
        seeded: bool = False,
        option_id: str | None = None,
    ) -> Row:
        row = self.store.insert(
            SYSTEM,
            "TrackingOptions",
            option_id or str(uuid.uuid4()),
            {"Name": name, "Status": "ACTIVE", "TrackingCategoryID": category.key},
            tenant_id,
            at=category.updated if seeded else None,
            seeded=seeded,
        )
        category.data["Options"].append(row.key)
        if not seeded:
            self.store.touch(SYSTEM, "TrackingCategories", category, tenant_id)
        return row

    async def tracking_option(self, request: Request) -> Response:
        tenant = self.tenant(request)
        option = self.store.get(
            SYSTEM, "TrackingOptions", request.path_params["option"].lower(), tenant.id
        )
        if option is None or option.data["TrackingCategoryID"] != request.path_params["id"].lower():
            return self.not_found(request)
        try:
            body = await request.json()
        except ValueError:
            return self.bad_request(request, "The request body is not valid JSON")
        for key in ("Name", "Status"):
            if isinstance(body, dict) and key in body:
                option.data[key] = body[key]
        self.store.touch(SYSTEM, "TrackingOptions", option, tenant.id)
        return self.envelope("Options", [self.render_option(option)])

    # -- invoices ----------------------------------------------------------------------------

    def render_invoice(self, row: Row, tenant: Tenant | None = None) -> dict[str, Any]:
        d = row.data
        contact = self.store.get(SYSTEM, "Contacts", d["ContactID"], d["TenantID"])
        out: dict[str, Any] = {
            "Type": d["Type"],
            "InvoiceID": row.key,
            "InvoiceNumber": d.get("InvoiceNumber") or "",
            "Reference": d.get("Reference") or "",
            "Contact": {
                "ContactID": d["ContactID"],
                "Name": contact.data.get("Name") if contact else "",
                "HasValidationErrors": False,
            },
            "Date": ms_date(day_to_ts(d["Date"])),
            "DateString": f"{d['Date']}T00:00:00",
            "DueDate": ms_date(day_to_ts(d["DueDate"])),
            "DueDateString": f"{d['DueDate']}T00:00:00",
            "LineAmountTypes": d["LineAmountTypes"],
            "LineItems": d["LineItems"],
            "SubTotal": d["SubTotal"],
            "TotalTax": d["TotalTax"],
            "Total": d["Total"],
            "TotalDiscount": d["TotalDiscount"],
            "AmountDue": money(d["Total"] - d["AmountPaid"])
            if d["Status"] not in ("VOIDED", "DELETED")
            else 0.0,
            "AmountPaid": d["AmountPaid"],
            "AmountCredited": 0.0,
            "CurrencyCode": d["CurrencyCode"],
            "CurrencyRate": d.get("CurrencyRate") or 1.0,
            "Status": d["Status"],
            "SentToContact": bool(d.get("SentToContact")),
            "IsDiscounted": d["TotalDiscount"] > 0,
            "HasAttachments": False,
            "HasErrors": False,
            "UpdatedDateUTC": ms_date(row.updated),
            "Payments": [self.payment_summary(p, d["TenantID"]) for p in d.get("PaymentIDs", [])],
            "Prepayments": [],
            "Overpayments": [],
            "CreditNotes": [],
        }
        if d.get("FullyPaidOnDate"):
            out["FullyPaidOnDate"] = ms_date(day_to_ts(d["FullyPaidOnDate"]))
        if d.get("Url"):
            out["Url"] = d["Url"]
        return out

    async def list_or_write_invoices(self, request: Request) -> Response:
        if request.method == "GET":
            return self.select(request, "Invoices", self.render_invoice)
        return await self.write_invoices(request, None)

    async def one_invoice(self, request: Request) -> Response:
        tenant = self.tenant(request)
        ident = request.path_params["id"]
        row = self.store.get(SYSTEM, "Invoices", ident.lower(), tenant.id)
        if row is None:  # Xero also accepts the InvoiceNumber here
            row = self.store.table(SYSTEM, "Invoices", tenant.id).index_get("number", ident)
        if row is None:
            return self.not_found(request)
        if request.method == "GET":
            return self.envelope("Invoices", [self.render_invoice(row)])
        return await self.write_invoices(request, row)

    async def write_invoices(self, request: Request, target: Row | None) -> Response:
        tenant = self.tenant(request)
        items = await self.elements(request, "Invoices")
        if isinstance(items, Response):
            return items
        plans: list[tuple[dict[str, Any], Row | None, list[str]]] = []
        numbers_in_batch: set[str] = set()
        for item in items:
            row = target
            if row is None and request.method == "POST" and item.get("InvoiceID"):
                row = self.store.get(SYSTEM, "Invoices", str(item["InvoiceID"]).lower(), tenant.id)
                if row is None:
                    plans.append((item, None, ["Invoice not found"]))
                    continue
            errors = self._invoice_errors(item, row, tenant, numbers_in_batch)
            if item.get("InvoiceNumber"):
                numbers_in_batch.add(str(item["InvoiceNumber"]))
            plans.append((item, row, errors))
        return self._commit(
            request, "Invoices", plans, self._apply_invoice, self.render_invoice, tenant
        )

    def _resolve_contact(self, item: dict[str, Any], tenant: Tenant) -> Row | None:
        contact = item.get("Contact") or {}
        if not isinstance(contact, dict):
            return None
        if contact.get("ContactID"):
            return self.store.get(SYSTEM, "Contacts", str(contact["ContactID"]).lower(), tenant.id)
        if contact.get("ContactNumber"):
            return self.store.table(SYSTEM, "Contacts", tenant.id).index_get(
                "number", contact["ContactNumber"]
            )
        if contact.get("Name"):
            return self.store.table(SYSTEM, "Contacts", tenant.id).index_get(
                "name", str(contact["Name"]).casefold()
            )
        return None

    def _invoice_errors(
        self, item: dict[str, Any], row: Row | None, tenant: Tenant, batch: set[str]
    ) -> list[str]:
        errors: list[str] = []
        current = row.data if row else {}
        status = str(item.get("Status") or current.get("Status") or "DRAFT").upper()
        if row is not None:
            allowed = TRANSITIONS.get(current["Status"], set())
            if status not in allowed:
                return [
                    "Invoice not of valid status for modification. "
                    f"Current status: {current['Status']}"
                ]
            if current["Status"] == "AUTHORISED" and current.get("PaymentIDs"):
                return [
                    "This document cannot be edited as it has a payment or credit note "
                    "allocated to it."
                ]
        elif status not in ("DRAFT", "SUBMITTED", "AUTHORISED"):
            errors.append(f"Invoice Status '{status}' cannot be set on a new invoice.")
        invoice_type = item.get("Type", current.get("Type"))
        if invoice_type not in ("ACCREC", "ACCPAY"):
            errors.append("Invoice Type must be specified as ACCREC or ACCPAY.")
        contact = self._resolve_contact(item, tenant) if "Contact" in item else None
        if row is None or "Contact" in item:
            if not isinstance(item.get("Contact"), dict):
                errors.append("A Contact must be specified for this type of transaction")
            elif contact is None and not item["Contact"].get("Name"):
                errors.append("The Contact could not be found")
        if contact is None and row is not None:
            contact = self.store.get(SYSTEM, "Contacts", current["ContactID"], tenant.id)
        new_contact = (
            item["Contact"] if contact is None and isinstance(item.get("Contact"), dict) else None
        )
        currency = item.get("CurrencyCode", current.get("CurrencyCode")) or tenant.base_currency
        if self.store.get(SYSTEM, "Currencies", currency, tenant.id) is None:
            errors.append(f"Organisation is not subscribed to currency {currency}")
        for key in ("Date", "DueDate"):
            if key in item and parse_day(item[key]) is None:
                errors.append(f"{key} is not a valid date")
        number = item.get("InvoiceNumber")
        if number and invoice_type == "ACCREC":
            other = self.store.table(SYSTEM, "Invoices", tenant.id).index_get("number", str(number))
            if (other is not None and other is not row) or str(number) in batch:
                self.store.stats.of(SYSTEM, "Invoices").duplicates_detected += 1
                errors.append("Invoice # must be unique.")
        lines = item.get("LineItems", current.get("LineItems") if row else [])
        if not isinstance(lines, list):
            return [*errors, "LineItems must be a list"]
        if status in ("SUBMITTED", "AUTHORISED") and not lines:
            errors.append(
                "An invoice must have at least one line item to be submitted or authorised."
            )
        for line in lines:
            if not isinstance(line, dict):
                errors.append("Each line item must be an object")
                continue
            errors.extend(self._line_errors(line, status, tenant, contact, new_contact))
        return errors

    def _line_errors(
        self,
        line: dict[str, Any],
        status: str,
        tenant: Tenant,
        contact: Row | None,
        new_contact: dict[str, Any] | None = None,
    ) -> list[str]:
        """`new_contact`: the invoice's Contact object when it names a contact that does not
        exist yet (Xero creates it from the invoice), so its TaxNumber is what counts."""
        errors: list[str] = []
        if not str(line.get("Description") or "").strip() and not line.get("ItemCode"):
            errors.append("Description needs to be at least 1 char long")
        for key in ("Quantity", "UnitAmount", "LineAmount", "DiscountRate"):
            if key in line and (
                not isinstance(line[key], int | float) or isinstance(line[key], bool)
            ):
                errors.append(f"{key} must be a number")
        code = line.get("AccountCode")
        if code and self.store.get(SYSTEM, "Accounts", str(code), tenant.id) is None:
            errors.append(f"Account code '{code}' is not a valid code for this document.")
        elif not code and status in ("SUBMITTED", "AUTHORISED"):
            errors.append(
                "Account code must be specified for line items on a submitted or "
                "authorised invoice."
            )
        tax_type = line.get("TaxType")
        if tax_type:
            rate = self.store.get(SYSTEM, "TaxRates", str(tax_type), tenant.id)
            if rate is None:
                errors.append(
                    f"The TaxType code '{tax_type}' does not exist or cannot be used for this "
                    "type of transaction."
                )
            elif rate.data["RequiresTaxNumber"]:
                named = contact.data if contact is not None else new_contact
                if named is not None and not named.get("TaxNumber"):
                    errors.append(
                        f"The tax rate '{rate.data['Name']}' requires the contact to have a tax "
                        f"number (VAT number); contact '{named.get('Name')}' has none."
                    )
        for tracking in line.get("Tracking") or []:
            if self._tracking(tracking, tenant) is None:
                errors.append(
                    f"Tracking category '{tracking.get('Name')}' option "
                    f"'{tracking.get('Option')}' does not exist or is not active."
                )
        return errors

    def _tracking(self, tracking: Any, tenant: Tenant) -> dict[str, Any] | None:
        if not isinstance(tracking, dict):
            return None
        options = self.store.table(SYSTEM, "TrackingOptions", tenant.id)
        for category in self.store.rows(SYSTEM, "TrackingCategories", tenant.id):
            if category.data.get("Status", "ACTIVE") != "ACTIVE":
                continue
            wanted_id = str(tracking.get("TrackingCategoryID") or "").lower()
            if (
                wanted_id != category.key
                and str(tracking.get("Name") or "").casefold() != category.data["Name"].casefold()
            ):
                continue
            for option_id in category.data["Options"]:
                option = options.rows.get(option_id)
                if option is None or option.data.get("Status", "ACTIVE") != "ACTIVE":
                    continue
                if option_id == str(tracking.get("TrackingOptionID") or "").lower() or (
                    str(tracking.get("Option") or "").casefold() == option.data["Name"].casefold()
                ):
                    return {
                        "TrackingCategoryID": category.key,
                        "TrackingOptionID": option_id,
                        "Name": category.data["Name"],
                        "Option": option.data["Name"],
                    }
        return None

    def _apply_invoice(self, item: dict[str, Any], row: Row | None, tenant: Tenant) -> Row:
        data: dict[str, Any] = (
            dict(row.data) if row else {"AmountPaid": 0.0, "PaymentIDs": [], "TenantID": tenant.id}
        )
        contact = self._resolve_contact(item, tenant) if "Contact" in item else None
        if "Contact" in item and contact is None:
            # Xero creates a contact when an unknown name is given on an invoice.
            contact = self._apply_contact({"Name": item["Contact"]["Name"]}, None, tenant)
        if contact is not None:
            data["ContactID"] = contact.key
            if (
                not contact.data.get("IsCustomer")
                and item.get("Type", data.get("Type")) == "ACCREC"
            ):
                contact.data["IsCustomer"] = True
        for key in ("Type", "InvoiceNumber", "Reference", "CurrencyRate", "SentToContact", "Url"):
            if key in item:
                data[key] = item[key]
        data["Status"] = str(item.get("Status") or data.get("Status") or "DRAFT").upper()
        data["CurrencyCode"] = (
            item.get("CurrencyCode") or data.get("CurrencyCode") or tenant.base_currency
        )
        data["LineAmountTypes"] = (
            item.get("LineAmountTypes") or data.get("LineAmountTypes") or "Exclusive"
        )
        today = datetime.now(UTC).date()
        data["Date"] = parse_day(item.get("Date")) or data.get("Date") or today.isoformat()
        data["DueDate"] = (
            parse_day(item.get("DueDate"))
            or data.get("DueDate")
            or (date.fromisoformat(data["Date"]) + timedelta(days=30)).isoformat()
        )
        if "LineItems" in item or row is None:
            data["LineItems"] = [
                self._line(line, data["LineAmountTypes"], tenant)
                for line in item.get("LineItems") or []
            ]
        data.update(self.totals(data["LineItems"]))
        table = self.store.table(SYSTEM, "Invoices", tenant.id)
        while not data.get("InvoiceNumber") and data["Type"] == "ACCREC":
            number = f"INV-{self.store.next_id(SYSTEM, 'InvoiceNumber:' + tenant.id, 1):05d}"
            if table.index_get("number", number) is None:  # skip numbers a client chose itself
                data["InvoiceNumber"] = number
        if row is None:
            reference = data.get("Reference")
            if reference and table.index_get("reference", reference) is not None:
                # Xero allows it; counted so a test can see the same billing run posted twice.
                self.store.stats.of(SYSTEM, "Invoices").duplicates_detected += 1
            return self.insert("Invoices", str(uuid.uuid4()), data, tenant.id)
        self.replace("Invoices", row, data, tenant.id)
        return row

    def _line(self, line: dict[str, Any], amount_types: str, tenant: Tenant) -> dict[str, Any]:
        quantity = float(line.get("Quantity", 1.0))
        unit = float(line.get("UnitAmount", 0.0))
        discount = float(line.get("DiscountRate") or 0.0)
        amount = money(
            float(line["LineAmount"])
            if "LineAmount" in line
            else quantity * unit * (100 - discount) / 100
        )
        rate_row = self.store.get(SYSTEM, "TaxRates", str(line.get("TaxType") or ""), tenant.id)
        rate = rate_row.data["Rate"] if rate_row else 0.0
        if amount_types == "NoTax":
            tax = 0.0
        elif amount_types == "Inclusive":
            tax = money(amount - amount / (1 + rate / 100))
        else:
            tax = money(amount * rate / 100)
        out: dict[str, Any] = {
            "LineItemID": str(line.get("LineItemID") or uuid.uuid4()),
            "Description": str(line.get("Description") or ""),
            "Quantity": quantity,
            "UnitAmount": unit,
            "TaxAmount": tax,
            "LineAmount": amount,
            "Tracking": [
                t for t in (self._tracking(t, tenant) for t in line.get("Tracking") or []) if t
            ],
        }
        for key in ("AccountCode", "TaxType", "ItemCode"):
            if line.get(key):
                out[key] = str(line[key])
        if discount:
            out["DiscountRate"] = discount
        return out

    @staticmethod
    def totals(lines: list[dict[str, Any]]) -> dict[str, float]:
        subtotal = money(sum(line["LineAmount"] for line in lines))
        tax = money(sum(line["TaxAmount"] for line in lines))
        discount = money(
            sum(
                line["Quantity"] * line["UnitAmount"] - line["LineAmount"]
                for line in lines
                if line.get("DiscountRate")
            )
        )
        return {
            "SubTotal": subtotal,
            "TotalTax": tax,
            "Total": money(subtotal + tax),
            "TotalDiscount": discount,
        }

    # -- payments ----------------------------------------------------------------------------

    def payment_summary(self, payment_id: str, tenant_id: str) -> dict[str, Any]:
        row = self.store.get(SYSTEM, "Payments", payment_id, tenant_id)
        if row is None:
            return {"PaymentID": payment_id}
        return {
            "PaymentID": row.key,
            "Date": ms_date(day_to_ts(row.data["Date"])),
            "Amount": row.data["Amount"],
            "Reference": row.data.get("Reference") or "",
            "CurrencyRate": row.data.get("CurrencyRate") or 1.0,
            "HasAccount": True,
            "HasValidationErrors": False,
        }

    def render_payment(self, row: Row, tenant: Tenant | None = None) -> dict[str, Any]:
        d = row.data
        invoice = self.store.get(SYSTEM, "Invoices", d["InvoiceID"], d["TenantID"])
        account = self.store.get(SYSTEM, "Accounts", d["AccountCode"], d["TenantID"])
        contact = (
            self.store.get(SYSTEM, "Contacts", invoice.data["ContactID"], d["TenantID"])
            if invoice
            else None
        )
        return {
            "PaymentID": row.key,
            "Date": ms_date(day_to_ts(d["Date"])),
            "Amount": d["Amount"],
            "BankAmount": d["Amount"],
            "Reference": d.get("Reference") or "",
            "CurrencyRate": d.get("CurrencyRate") or 1.0,
            "PaymentType": PAYMENT_TYPES.get(
                invoice.data["Type"] if invoice else "ACCREC", "ACCRECPAYMENT"
            ),
            "Status": d["Status"],
            "IsReconciled": bool(d.get("IsReconciled")),
            "UpdatedDateUTC": ms_date(row.updated),
            "HasAccount": True,
            "HasValidationErrors": False,
            "Account": {
                "AccountID": account.data["AccountID"] if account else None,
                "Code": d["AccountCode"],
            },
            "Invoice": {
                "InvoiceID": d["InvoiceID"],
                "InvoiceNumber": invoice.data.get("InvoiceNumber", "") if invoice else "",
                "Type": invoice.data["Type"] if invoice else "ACCREC",
                "CurrencyCode": invoice.data["CurrencyCode"] if invoice else "USD",
                "Contact": {"ContactID": contact.key, "Name": contact.data["Name"]}
                if contact
                else {},
            },
        }

    async def list_or_write_payments(self, request: Request) -> Response:
        if request.method == "GET":
            return self.select(request, "Payments", self.render_payment)
        tenant = self.tenant(request)
        items = await self.elements(request, "Payments")
        if isinstance(items, Response):
            return items
        plans: list[tuple[dict[str, Any], Row | None, list[str]]] = []
        owed: dict[Any, float] = {}
        for item in items:
            plans.append((item, None, self._payment_errors(item, tenant, owed)))
        return self._commit(
            request, "Payments", plans, self._apply_payment, self.render_payment, tenant
        )

    def _payment_invoice(self, item: dict[str, Any], tenant: Tenant) -> Row | None:
        ref: dict[str, Any] = item["Invoice"] if isinstance(item.get("Invoice"), dict) else {}
        table = self.store.table(SYSTEM, "Invoices", tenant.id)
        if ref.get("InvoiceID"):
            return table.rows.get(str(ref["InvoiceID"]).lower())
        if ref.get("InvoiceNumber"):
            return table.index_get("number", str(ref["InvoiceNumber"]))
        return None

    def _payment_errors(
        self, item: dict[str, Any], tenant: Tenant, owed: dict[Any, float]
    ) -> list[str]:
        invoice = self._payment_invoice(item, tenant)
        if invoice is None:
            return ["Invoice could not be found"]
        errors: list[str] = []
        if invoice.data["Status"] != "AUTHORISED":
            errors.append("Payments can only be made against Authorised documents")
        account: dict[str, Any] = item["Account"] if isinstance(item.get("Account"), dict) else {}
        code = account.get("Code")
        if not code and account.get("AccountID"):
            code = next(
                (
                    r.key
                    for r in self.store.rows(SYSTEM, "Accounts", tenant.id)
                    if r.data["AccountID"] == account["AccountID"]
                ),
                None,
            )
        acct = self.store.get(SYSTEM, "Accounts", str(code), tenant.id) if code else None
        if acct is None or acct.data["Type"] != "BANK":
            errors.append("Account must be a bank account or have payments enabled")
        amount = item.get("Amount")
        if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
            errors.append("Payment amount must be greater than zero")
        else:
            due = owed.get(invoice.key, money(invoice.data["Total"] - invoice.data["AmountPaid"]))
            if amount > due + 0.005:
                errors.append("Payment amount exceeds the amount outstanding on this document")
            owed[invoice.key] = money(due - amount)
        if "Date" in item and parse_day(item["Date"]) is None:
            errors.append("Date is not a valid date")
        return errors

    def _apply_payment(self, item: dict[str, Any], row: Row | None, tenant: Tenant) -> Row:
        invoice = self._payment_invoice(item, tenant)
        if invoice is None:  # checked by _payment_errors before any apply
            raise LookupError("payment without an invoice")
        account = item.get("Account") or {}
        code = account.get("Code") or next(
            r.key
            for r in self.store.rows(SYSTEM, "Accounts", tenant.id)
            if r.data["AccountID"] == account.get("AccountID")
        )
        day = parse_day(item.get("Date")) or datetime.now(UTC).date().isoformat()
        data = {
            "InvoiceID": invoice.key,
            "AccountCode": str(code),
            "Date": day,
            "Amount": money(float(item["Amount"])),
            "Reference": item.get("Reference"),
            "CurrencyRate": item.get("CurrencyRate"),
            "Status": "AUTHORISED",
            "TenantID": tenant.id,
        }
        table = self.store.table(SYSTEM, "Payments", tenant.id)
        if table.index_get("same", self.index_keys("Payments", data)["same"]) is not None:
            self.store.stats.of(SYSTEM, "Payments").duplicates_detected += 1
        payment = self.insert("Payments", str(uuid.uuid4()), data, tenant.id)
        invoice.data["PaymentIDs"] = [*invoice.data.get("PaymentIDs", []), payment.key]
        self._settle(invoice, tenant.id, day)
        return payment

    def _settle(self, invoice: Row, tenant_id: str, day: str | None = None) -> None:
        """Amount paid, status and the payment list from the invoice's live payments."""
        payments = self.store.table(SYSTEM, "Payments", tenant_id).rows
        live = [
            p
            for p in (payments.get(key) for key in invoice.data.get("PaymentIDs", []))
            if p is not None
            and p.data["InvoiceID"] == invoice.key
            and p.data["Status"] == "AUTHORISED"
        ]
        invoice.data["PaymentIDs"] = [p.key for p in live]
        invoice.data["AmountPaid"] = money(sum(p.data["Amount"] for p in live))
        if invoice.data["AmountPaid"] >= invoice.data["Total"] - 0.005 and live:
            invoice.data["Status"] = "PAID"
            invoice.data["FullyPaidOnDate"] = day or max(p.data["Date"] for p in live)
        elif invoice.data["Status"] == "PAID":
            invoice.data["Status"] = "AUTHORISED"
            invoice.data.pop("FullyPaidOnDate", None)
        self.store.touch(SYSTEM, "Invoices", invoice, tenant_id)

    async def one_payment(self, request: Request) -> Response:
        tenant = self.tenant(request)
        row = self.store.get(SYSTEM, "Payments", request.path_params["id"].lower(), tenant.id)
        if row is None:
            return self.not_found(request)
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return self.bad_request(request, "The request body is not valid JSON")
            items = (
                body.get("Payments") if isinstance(body, dict) and "Payments" in body else [body]
            )
            if not items or not isinstance(items[0], dict) or items[0].get("Status") != "DELETED":
                return self.bad_request(
                    request, "A payment can only be deleted (Status DELETED)", "validation"
                )
            row.data["Status"] = "DELETED"
            self.store.touch(SYSTEM, "Payments", row, tenant.id)
            invoice = self.store.get(SYSTEM, "Invoices", row.data["InvoiceID"], tenant.id)
            if invoice is not None:
                self._settle(invoice, tenant.id)
        return self.envelope("Payments", [self.render_payment(row)])


# -- the ``where`` filter ----------------------------------------------------------------------

_CONDITION = re.compile(
    r"""^\s*([A-Za-z][\w.]*)\s*(==|!=|>=|<=|>|<)\s*(?:"([^"]*)"|Guid\("([^"]*)"\)|(true|false|null)|(-?\d+(?:\.\d+)?))\s*$"""
)


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, str):
        match = _MS_DATE.match(value)
        if match:
            return (1, int(match.group(1)))
    return (1, value) if isinstance(value, int | float) else (2, str(value))


def _lookup(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compile_where(where: str) -> Callable[[dict[str, Any]], bool]:
    """A small subset of Xero's ``where``: comparisons joined by AND (``&&``), alternatives
    joined by OR (``||``), AND binding tighter, optionally in one pair of parentheses each.

    ``Status=="AUTHORISED" AND Contact.ContactID==Guid("...")``, ``Reference!=null``,
    ``Total>=100``, ``Reference=="A" OR Reference=="B"`` (how a client looks up a batch of its
    own references in one call). Anything else raises ValueError (a 400, as Xero's parser would).
    Quoted values must not themselves contain `` AND `` or `` OR ``.
    """
    alternatives: list[list[Callable[[dict[str, Any]], bool]]] = []
    for alternative in re.split(r"\s+(?:OR|or)\s+|\s*\|\|\s*", where.strip()):
        alternative = alternative.strip()
        if alternative.startswith("(") and alternative.endswith(")"):
            alternative = alternative[1:-1]
        tests: list[Callable[[dict[str, Any]], bool]] = []
        for part in re.split(r"\s+(?:AND|and)\s+|\s*&&\s*", alternative):
            match = _CONDITION.match(part)
            if match is None:
                raise ValueError(f"Unsupported where clause: {part!r}")
            path, op, text, guid, word, number = match.groups()
            expected: Any = text if text is not None else guid.lower() if guid is not None else None
            if word is not None:
                expected = {"true": True, "false": False, "null": None}[word]
            if number is not None:
                expected = float(number)
            tests.append(_comparison(path, op, expected, guid is not None))
        alternatives.append(tests)
    return lambda item: any(all(test(item) for test in tests) for tests in alternatives)


def _comparison(
    path: str, op: str, expected: Any, is_guid: bool
) -> Callable[[dict[str, Any]], bool]:
    def test(item: dict[str, Any]) -> bool:
        value = _lookup(item, path)
        if is_guid and isinstance(value, str):
            value = value.lower()
        if op == "==":
            return bool(value == expected)
        if op == "!=":
            return bool(value != expected)
        if value is None or expected is None:
            return False
        left, right = _sort_key(value), _sort_key(expected)
        return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]

    return test
