"""Salesforce REST (no openly licensed spec: follows Salesforce's public REST documentation).

Served under ``/salesforce``; the token response's ``instance_url`` is
``<base>/salesforce``, so a client that appends Salesforce's own paths to ``instance_url``
works unchanged:

* ``POST /services/oauth2/token`` (client credentials);
* ``/services/data/v60.0/sobjects/{Account|Opportunity|Contract}``: POST creates (201
  ``{id, success, errors}``); ``/{id}`` GET (``?fields=``) and PATCH (204);
  ``/{External_Id__c}/{value}`` PATCH upserts (201 created / 200 updated);
* ``GET /services/data/v60.0/query?q=SOQL`` and ``/query/{cursor}`` for ``nextRecordsUrl``;
* ``/services/data/v60.0/composite/sobjects``: POST (create) / PATCH (update) up to 200
  records with ``allOrNone``; GET ``/composite/sobjects/{type}?ids=&fields=``.

Errors are Salesforce's JSON list ``[{"message", "errorCode", "fields"}]`` (collections use
``statusCode`` inside each result, as Salesforce does).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .gate import JSON, Sandbox, Vendor, form_fields, refuse
from .ratelimit import Denied, Lease
from .store import Change, Row

SYSTEM = "salesforce"
CLIENT_ID = "concord-salesforce"
CLIENT_SECRET = "sandbox-salesforce-secret"  # noqa: S105 - a documented sandbox credential
ORG_ID = "00D5g000004SandbX"
API_VERSION = "v60.0"
DATA = f"/services/data/{API_VERSION}"
MAX_COLLECTION = 200  # sObject Collections: at most 200 records per create/update request
MAX_COLLECTION_GET = 2000
DEFAULT_BATCH = 2000  # query batch size; Sforce-Query-Options: batchSize=200..2000 changes it
MAX_CURSORS = 1000  # open query cursors kept (oldest dropped first), like Salesforce's per-user cap
PREFIXES = {"Account": "001", "Opportunity": "006", "Contract": "800"}
STAGES = (
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
)
CURRENCIES = ("USD", "GBP", "EUR", "CHF")
BILLING_MODELS = ("Time and Materials", "Fixed Fee", "Retainer")

# Field name -> type. "ref:X" is a lookup to X, "pick:a|b" a restricted picklist, and "ro:..."
# a read-only field (refused on insert/update with INVALID_FIELD_FOR_INSERT_UPDATE).
COMMON = {
    "Id": "ro:id",
    "CreatedDate": "ro:datetime",
    "LastModifiedDate": "ro:datetime",
    "SystemModstamp": "ro:datetime",
    "IsDeleted": "ro:boolean",
    "CurrencyIsoCode": "pick:" + "|".join(CURRENCIES),
    "External_Id__c": "string",
    "Legal_Entity__c": "string",
    "Region__c": "string",
}
FIELDS: dict[str, dict[str, str]] = {
    "Account": {
        **COMMON,
        "Name": "string",
        "AccountNumber": "string",
        "Type": "string",
        "Industry": "string",
        "Phone": "string",
        "Website": "string",
        "BillingStreet": "string",
        "BillingCity": "string",
        "BillingPostalCode": "string",
        "BillingState": "string",
        "BillingCountry": "string",
        "Description": "string",
        "Tax_Number__c": "string",
        "ERP_Customer_Id__c": "string",
        "PSA_Client_Id__c": "string",
    },
    "Opportunity": {
        **COMMON,
        "Name": "string",
        "AccountId": "ref:Account",
        "StageName": "pick:" + "|".join(STAGES),
        "CloseDate": "date",
        "Amount": "double",
        "Probability": "double",
        "Type": "string",
        "Description": "string",
        "IsWon": "ro:boolean",
        "IsClosed": "ro:boolean",
        "Billing_Model__c": "pick:" + "|".join(BILLING_MODELS),
        "PSA_Project_Id__c": "string",
        "ERP_Project_Id__c": "string",
    },
    "Contract": {
        **COMMON,
        "AccountId": "ref:Account",
        "Status": "pick:Draft|In Approval Process|Activated",
        "StartDate": "date",
        "ContractTerm": "int",
        "EndDate": "ro:date",
        "ContractNumber": "ro:string",
        "Description": "string",
        "SpecialTerms": "string",
        "Opportunity__c": "ref:Opportunity",
        "Billing_Model__c": "pick:" + "|".join(BILLING_MODELS),
        "Payment_Terms__c": "pick:Net 15|Net 30|Net 45|Net 60",
        "Tax_Profile__c": "string",
        "Budget__c": "double",
    },
}
REQUIRED = {
    "Account": ("Name",),
    "Opportunity": ("Name", "StageName", "CloseDate"),
    "Contract": ("AccountId",),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "Account": {"CurrencyIsoCode": "USD"},
    "Opportunity": {"CurrencyIsoCode": "USD"},
    "Contract": {"CurrencyIsoCode": "USD", "Status": "Draft"},
}

_CHECK = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def sf_id(prefix: str, n: int) -> str:
    """An 18-character Salesforce id: 15 case-sensitive characters plus the case checksum."""
    digits = ""
    while True:
        n, r = divmod(n, 62)
        digits = _BASE62[r] + digits
        if n == 0:
            break
    base = prefix + "5g" + digits.rjust(10, "0")
    return base + _suffix(base)


def _suffix(base15: str) -> str:
    """The case checksum that makes a 15-character id 18: one character per 5-character
    chunk, whose bits mark the chunk's capital letters."""
    suffix = ""
    for chunk in range(3):
        part = base15[chunk * 5 : chunk * 5 + 5]
        suffix += _CHECK[sum(1 << i for i, c in enumerate(part) if "A" <= c <= "Z")]
    return suffix


def sf_datetime(ts: float) -> str:
    # Salesforce shows whole seconds with ".000"; comparisons still use the exact instant, so
    # "SystemModstamp > <last seen>" may repeat a record from the same second but never skips one.
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class SfError(Exception):
    def __init__(
        self, code: str, message: str, fields: list[str] | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.fields, self.status = code, message, fields or [], status

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]


@dataclass
class Cursor:
    obj: str
    keys: list[str]
    fields: list[str]
    batch: int


class Salesforce(Vendor):
    system = SYSTEM
    public_paths = frozenset({"/services/oauth2/token"})

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self.cursors: dict[str, Cursor] = {}
        sandbox.reset_hooks.append(self.cursors.clear)

    # -- gate hooks --------------------------------------------------------------------------

    def object_of(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[3] == "sobjects":
            return parts[4]
        if len(parts) >= 4 and parts[1] == "data":
            return parts[3]
        return "token" if "oauth2" in parts else "other"

    def authenticate(self, request: Request) -> str | Response:
        auth = request.headers.get("authorization", "")
        token = self.sandbox.tokens.get(auth[7:]) if auth.lower().startswith("bearer ") else None
        if token is None or token["system"] != SYSTEM:
            return JSON(SfError("INVALID_SESSION_ID", "Session expired or invalid").body(), 401)
        return ORG_ID

    def error(self, status: int, message: str) -> Response:
        code = {503: "SERVER_UNAVAILABLE", 504: "REQUEST_RUNNING_TOO_LONG"}.get(
            status, "UNKNOWN_EXCEPTION"
        )
        return JSON(SfError(code, message).body(), status)

    def throttled(self, denied: Denied) -> Response:
        what = "ConcurrentPerOrgLongTxn" if denied.problem == "concurrent" else "TotalRequests"
        # Salesforce refuses over-limit calls with 403 REQUEST_LIMIT_EXCEEDED and no Retry-After;
        # the sandbox adds Retry-After as a hint (documented), the status stays Salesforce's.
        return JSON(
            SfError("REQUEST_LIMIT_EXCEEDED", f"{what} Limit exceeded.").body(),
            403,
            headers={"Retry-After": str(denied.retry_after)},
        )

    def limit_headers(self, lease: Lease) -> list[tuple[bytes, bytes]]:
        limits = self.sandbox.limits.config[SYSTEM].windows.get("day")
        if limits is None or "day" not in lease.remaining:
            return []
        used = limits.limit - lease.remaining["day"]
        return [(b"sforce-limit-info", f"api-usage={used}/{limits.limit}".encode())]

    def event(self, change: Change) -> dict[str, Any] | None:
        return {
            "id": uuid.uuid4().hex,
            "object": change.obj,
            "record_id": change.row.key,
            "type": change.kind,
            "version": change.row.version,
            "occurred_at": sf_datetime(change.row.updated),
            "resource_url": (
                f"{self.sandbox.base_url}/salesforce{DATA}/sobjects/{change.obj}/{change.row.key}"
            ),
        }

    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/services/oauth2/token", self.token, methods=["POST"]),
            Route("/services/data", self.versions, methods=["GET"]),
            Route(f"{DATA}/query", self.query, methods=["GET"]),
            Route(f"{DATA}/query/{{cursor}}", self.query_more, methods=["GET"]),
            Route(f"{DATA}/composite/sobjects", self.collection_write, methods=["POST", "PATCH"]),
            Route(f"{DATA}/composite/sobjects/{{obj}}", self.collection_read, methods=["GET"]),
            Route(f"{DATA}/sobjects/{{obj}}", self.create, methods=["POST"]),
            Route(f"{DATA}/sobjects/{{obj}}/{{id}}", self.one, methods=["GET", "PATCH"]),
            Route(f"{DATA}/sobjects/{{obj}}/{{field}}/{{value}}", self.upsert, methods=["PATCH"]),
        ]

    def fail(self, request: Request, exc: SfError) -> Response:
        refuse(request, exc.code.lower())
        return JSON(exc.body(), exc.status)

    async def token(self, request: Request) -> Response:
        form = await form_fields(request)
        if form.get("grant_type") != "client_credentials":
            refuse(request, "auth")
            return JSON(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                400,
            )
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            refuse(request, "auth")
            return JSON(
                {"error": "invalid_client", "error_description": "invalid client credentials"}, 400
            )
        token = f"{ORG_ID}!{secrets.token_urlsafe(32)}"
        self.sandbox.tokens[token] = {"system": SYSTEM, "expires": float("inf")}
        issued = str(int(time.time() * 1000))
        instance = f"{str(request.base_url).rstrip('/')}/salesforce"
        return JSON(
            {
                "access_token": token,
                "instance_url": instance,
                "id": f"{instance}/id/{ORG_ID}/0055g00000SandbxAAA",
                "token_type": "Bearer",
                "issued_at": issued,
                "signature": base64.b64encode(
                    hashlib.sha256((instance + issued).encode()).digest()
                ).decode(),
            }
        )

    async def versions(self, request: Request) -> Response:
        return JSON([{"label": "Spring '24", "url": DATA, "version": API_VERSION[1:]}])

    # -- records -----------------------------------------------------------------------------

    def render(self, obj: str, row: Row, fields: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"{DATA}/sobjects/{obj}/{row.key}"}
        }
        for name in fields or list(FIELDS[obj]):
            out[name] = self.value(obj, row, name)
        return out

    def value(self, obj: str, row: Row, name: str) -> Any:
        if name == "Id":
            return row.key
        if name == "CreatedDate":
            return sf_datetime(row.created)
        if name in ("LastModifiedDate", "SystemModstamp"):
            return sf_datetime(row.updated)
        if name == "IsDeleted":
            return False
        return row.data.get(name)

    def clean(self, obj: str, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        if obj not in FIELDS:
            raise SfError(
                "NOT_FOUND",
                f"The requested resource does not exist: sObject type '{obj}' is not supported.",
                status=404,
            )
        spec, clean = FIELDS[obj], {}
        for name, value in body.items():
            if name == "attributes":
                continue
            kind = spec.get(name)
            if kind is None:
                raise SfError(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}", [name]
                )
            if kind.startswith("ro:"):
                raise SfError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}.",
                    [name],
                )
            clean[name] = self._typed(obj, name, kind, value)
        if creating:
            clean = {**DEFAULTS[obj], **clean}
            missing = [f for f in REQUIRED[obj] if clean.get(f) in (None, "")]
            if missing:
                raise SfError(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
        return clean

    def _typed(self, obj: str, name: str, kind: str, value: Any) -> Any:
        if value is None:
            return None
        ok = True
        if kind == "string":
            ok = isinstance(value, str)
        elif kind in ("double", "int"):
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (kind == "double" or float(value).is_integer())
            )
            value = (float(value) if kind == "double" else int(value)) if ok else value
        elif kind == "date":
            try:
                date.fromisoformat(value)
            except (TypeError, ValueError):
                ok = False
        elif kind.startswith("pick:"):
            if value not in kind[5:].split("|"):
                raise SfError(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"bad value for restricted picklist field: {value}",
                    [name],
                )
        elif kind.startswith("ref:"):
            target = kind[4:]
            if not isinstance(value, str) or len(value) not in (15, 18):
                raise SfError(
                    "MALFORMED_ID", f"{name}: id value of incorrect type: {value}", [name]
                )
            if self.store.get(SYSTEM, target, self._full_id(value)) is None:
                raise SfError(
                    "FIELD_INTEGRITY_EXCEPTION",
                    f"{name}: id value of incorrect type: {value}",
                    [name],
                )
            value = self._full_id(value)
        if not ok:
            raise SfError(
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of {kind} from value {value!r} for field {name}",
                [name],
            )
        return value

    @staticmethod
    def _full_id(value: str) -> str:
        """The 18-character form of an id (Salesforce accepts both)."""
        return value + _suffix(value) if len(value) == 15 else value

    def derive(self, obj: str, data: dict[str, Any]) -> None:
        """Fields Salesforce computes."""
        if obj == "Opportunity":
            stage = data.get("StageName")
            data["IsWon"] = stage == "Closed Won"
            data["IsClosed"] = stage in ("Closed Won", "Closed Lost")
        if obj == "Contract":
            start, term = data.get("StartDate"), data.get("ContractTerm")
            if start and term:
                d = date.fromisoformat(start)
                month = d.month - 1 + int(term)
                end = date(d.year + month // 12, month % 12 + 1, 1)
                data["EndDate"] = date.fromordinal(end.toordinal() - 1).isoformat()
            else:
                data["EndDate"] = None

    def insert(
        self, obj: str, data: dict[str, Any], *, at: float | None = None, seeded: bool = False
    ) -> Row:
        table = self.store.table(SYSTEM, obj)
        ext = data.get("External_Id__c")
        if ext and table.index_get("External_Id__c", ext) is not None:
            self.store.stats.of(SYSTEM, obj).duplicates_detected += 1
            raise SfError(
                "DUPLICATE_VALUE",
                "duplicate value found: External_Id__c duplicates value on record with id: "
                f"{table.indexes['External_Id__c'][ext]}",
                ["External_Id__c"],
            )
        if (
            obj == "Account"
            and not seeded
            and table.index_get("Name", str(data.get("Name", "")).casefold()) is not None
        ):
            # Salesforce's standard duplicate rule only alerts; the sandbox counts it.
            self.store.stats.of(SYSTEM, obj).duplicates_detected += 1
        self.derive(obj, data)
        key = sf_id(PREFIXES[obj], self.store.next_id(SYSTEM, obj, 1))
        if obj == "Contract":
            data["ContractNumber"] = f"{self.store.next_id(SYSTEM, 'ContractNumber', 100):08d}"
        row = self.store.insert(SYSTEM, obj, key, data, at=at, seeded=seeded)
        table.reindex(row.key, {}, self.index_keys(obj, row.data))
        return row

    @staticmethod
    def index_keys(obj: str, data: dict[str, Any]) -> dict[str, Any]:
        """Where a record is found besides its id: every write re-indexes through this."""
        keys: dict[str, Any] = {}
        if data.get("External_Id__c"):
            keys["External_Id__c"] = data["External_Id__c"]
        if obj == "Account" and data.get("Name"):
            keys["Name"] = str(data["Name"]).casefold()
        return keys

    def update(self, obj: str, row: Row, changes: dict[str, Any]) -> None:
        ext = changes.get("External_Id__c")
        if ext and ext != row.data.get("External_Id__c"):
            other = self.store.table(SYSTEM, obj).index_get("External_Id__c", ext)
            if other is not None and other is not row:
                self.store.stats.of(SYSTEM, obj).duplicates_detected += 1
                raise SfError(
                    "DUPLICATE_VALUE", "duplicate value found: External_Id__c", ["External_Id__c"]
                )
        self.patch_raw(obj, row, changes)

    def patch_raw(self, obj: str, row: Row, changes: dict[str, Any], scope: str = "") -> None:
        data = {**row.data, **changes}
        self.derive(obj, data)
        self.store.table(SYSTEM, obj).reindex(
            row.key, self.index_keys(obj, row.data), self.index_keys(obj, data)
        )
        row.data = data
        self.store.touch(SYSTEM, obj, row)

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise SfError("JSON_PARSER_ERROR", "The request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise SfError("JSON_PARSER_ERROR", "The request body must be a JSON object")
        return body

    async def create(self, request: Request) -> Response:
        obj = request.path_params["obj"]
        try:
            data = self.clean(obj, await self._body(request), creating=True)
            row = self.insert(obj, data)
        except SfError as exc:
            return self.fail(request, exc)
        return JSON({"id": row.key, "success": True, "errors": []}, 201)

    def _get(self, obj: str, ident: str) -> Row:
        if obj not in FIELDS:
            raise SfError("NOT_FOUND", f"sObject type '{obj}' is not supported.", status=404)
        row = self.store.get(SYSTEM, obj, self._full_id(ident))
        if row is None:
            raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
        return row

    async def one(self, request: Request) -> Response:
        obj = request.path_params["obj"]
        try:
            row = self._get(obj, request.path_params["id"])
            if request.method == "GET":
                fields = [
                    f.strip()
                    for f in request.query_params.get("fields", "").split(",")
                    if f.strip()
                ]
                unknown = [f for f in fields if f not in FIELDS[obj]]
                if unknown:
                    raise SfError(
                        "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'", unknown
                    )
                return JSON(self.render(obj, row, fields or None))
            self.update(obj, row, self.clean(obj, await self._body(request), creating=False))
        except SfError as exc:
            return self.fail(request, exc)
        return Response(status_code=204)

    async def upsert(self, request: Request) -> Response:
        obj, field, value = (
            request.path_params["obj"],
            request.path_params["field"],
            request.path_params["value"],
        )
        try:
            if obj not in FIELDS:
                raise SfError("NOT_FOUND", f"sObject type '{obj}' is not supported.", status=404)
            if field != "External_Id__c":
                raise SfError(
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {field}",
                    status=404,
                )
            body = await self._body(request)
            existing = self.store.table(SYSTEM, obj).index_get(field, value)
            if existing is None:
                row = self.insert(obj, self.clean(obj, {**body, field: value}, creating=True))
                return JSON({"id": row.key, "success": True, "errors": [], "created": True}, 201)
            self.update(obj, existing, self.clean(obj, body, creating=False))
            return JSON({"id": existing.key, "success": True, "errors": [], "created": False}, 200)
        except SfError as exc:
            return self.fail(request, exc)

    # -- collections -------------------------------------------------------------------------

    async def collection_write(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            records = body.get("records")
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise SfError("JSON_PARSER_ERROR", "records must be a list of objects")
            if len(records) > MAX_COLLECTION:
                raise SfError(
                    "EXCEEDED_ID_LIMIT",
                    f"record limit exceeded: at most {MAX_COLLECTION} records per request",
                )
        except SfError as exc:
            return self.fail(request, exc)
        all_or_none = bool(body.get("allOrNone"))
        creating = request.method == "POST"
        planned: list[tuple[str, Row | None, dict[str, Any]] | SfError] = []
        ext_in_batch: set[tuple[str, str]] = set()
        for record in records:
            try:
                obj = str((record.get("attributes") or {}).get("type") or "")
                fields = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
                if creating:
                    if record.get("id") or record.get("Id"):
                        raise SfError(
                            "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"]
                        )
                    data = self.clean(obj, fields, creating=True)
                    ext = data.get("External_Id__c")
                    if ext and (
                        (obj, ext) in ext_in_batch
                        or self.store.table(SYSTEM, obj).index_get("External_Id__c", ext)
                    ):
                        self.store.stats.of(SYSTEM, obj).duplicates_detected += 1
                        raise SfError(
                            "DUPLICATE_VALUE",
                            "duplicate value found: External_Id__c",
                            ["External_Id__c"],
                        )
                    if ext:
                        ext_in_batch.add((obj, ext))
                    planned.append((obj, None, data))
                else:
                    ident = str(record.get("id") or record.get("Id") or "")
                    if not ident:
                        raise SfError(
                            "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"]
                        )
                    row = self._get(obj, ident)
                    planned.append((obj, row, self.clean(obj, fields, creating=False)))
            except SfError as exc:
                planned.append(exc)
        failed = any(isinstance(p, SfError) for p in planned)
        results: list[dict[str, Any]] = []
        for plan in planned:
            if isinstance(plan, SfError):
                refuse(request, "validation")
                self.store.stats.refused(SYSTEM, "composite", 200, plan.code.lower())
                results.append(
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": plan.code,
                                "message": plan.message,
                                "fields": plan.fields,
                            }
                        ],
                    }
                )
            elif failed and all_or_none:
                results.append(
                    {
                        "id": plan[1].key if plan[1] else None,
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                "message": "Record rolled back because not all records were valid "
                                "and the request was using AllOrNone header",
                                "fields": [],
                            }
                        ],
                    }
                )
            else:
                obj, target, data = plan
                try:
                    if target is None:
                        target = self.insert(obj, data)
                    else:
                        self.update(obj, target, data)
                except SfError as exc:
                    results.append(
                        {
                            "success": False,
                            "errors": [
                                {
                                    "statusCode": exc.code,
                                    "message": exc.message,
                                    "fields": exc.fields,
                                }
                            ],
                        }
                    )
                    continue
                results.append({"id": target.key, "success": True, "errors": []})
        return JSON(results)

    async def collection_read(self, request: Request) -> Response:
        obj = request.path_params["obj"]
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        fields = [f for f in request.query_params.get("fields", "").split(",") if f]
        try:
            if obj not in FIELDS:
                raise SfError("NOT_FOUND", f"sObject type '{obj}' is not supported.", status=404)
            if not ids or not fields:
                raise SfError("MISSING_ARGUMENT", "ids and fields are required")
            if len(ids) > MAX_COLLECTION_GET:
                raise SfError("EXCEEDED_ID_LIMIT", f"at most {MAX_COLLECTION_GET} ids per request")
            unknown = [f for f in fields if f not in FIELDS[obj]]
            if unknown:
                raise SfError(
                    "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'", unknown
                )
        except SfError as exc:
            return self.fail(request, exc)
        out: list[dict[str, Any] | None] = []
        for ident in ids:
            row = self.store.get(SYSTEM, obj, self._full_id(ident))
            out.append(None if row is None else self.render(obj, row, fields))
        return JSON(out)

    # -- SOQL --------------------------------------------------------------------------------

    async def query(self, request: Request) -> Response:
        soql = request.query_params.get("q", "")
        batch = DEFAULT_BATCH
        options = request.headers.get("sforce-query-options", "")
        match = re.search(r"batchSize=(\d+)", options)
        if match:
            batch = min(2000, max(200, int(match.group(1))))
        try:
            parsed = parse_soql(soql)
            obj = parsed.obj
            if obj not in FIELDS:
                raise SfError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
            unknown = [
                f
                for f in parsed.fields + [c[0] for c in parsed.where] + [o[0] for o in parsed.order]
                if f not in FIELDS[obj]
            ]
            if unknown:
                raise SfError("INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'.")
            rows = [
                r
                for r in self.store.rows(SYSTEM, obj)
                if all(self._match(obj, r, c) for c in parsed.where)
            ]
        except SfError as exc:
            return self.fail(request, exc)
        for name, descending in reversed(parsed.order):  # stable sorts: last key first

            def sort_key(row: Row, field: str = name) -> tuple[int, Any]:
                return _order_key(self._raw(obj, row, field))

            rows.sort(key=sort_key, reverse=descending)
        if parsed.offset:
            rows = rows[parsed.offset :]
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        if parsed.count:
            return JSON({"totalSize": len(rows), "done": True, "records": []})
        cursor = Cursor(obj, [str(r.key) for r in rows], parsed.fields, batch)
        return self._page(cursor, "01g" + secrets.token_hex(6), 0)

    async def query_more(self, request: Request) -> Response:
        locator, _, offset = request.path_params["cursor"].rpartition("-")
        cursor = self.cursors.get(locator)
        if cursor is None or not offset.isdigit():
            return self.fail(
                request, SfError("INVALID_QUERY_LOCATOR", "invalid query locator", status=400)
            )
        return self._page(cursor, locator, int(offset))

    def _page(self, cursor: Cursor, locator: str, offset: int) -> Response:
        chunk = cursor.keys[offset : offset + cursor.batch]
        records = []
        for key in chunk:
            row = self.store.get(SYSTEM, cursor.obj, key)
            if row is not None:
                records.append(self.render(cursor.obj, row, cursor.fields))
        done = offset + cursor.batch >= len(cursor.keys)
        body: dict[str, Any] = {"totalSize": len(cursor.keys), "done": done}
        if done:
            self.cursors.pop(locator, None)
        else:
            self.cursors[locator] = cursor
            while len(self.cursors) > MAX_CURSORS:
                self.cursors.pop(next(iter(self.cursors)))
            body["nextRecordsUrl"] = f"{DATA}/query/{locator}-{offset + cursor.batch}"
        body["records"] = records
        return JSON(body)

    def _raw(self, obj: str, row: Row, name: str) -> Any:
        if name == "CreatedDate":
            return row.created
        if name in ("LastModifiedDate", "SystemModstamp"):
            return row.updated
        return self.value(obj, row, name)

    def _match(self, obj: str, row: Row, condition: tuple[str, str, Any]) -> bool:
        name, op, expected = condition
        value = self._raw(obj, row, name)
        if isinstance(expected, _DateTime):
            if not isinstance(value, int | float):
                raise SfError(
                    "INVALID_FIELD",
                    f"value of filter criterion for field '{name}' must be of type date "
                    "and should not be enclosed in quotes",
                )
            expected = expected.ts
        if op == "IN":
            return value in expected
        if op == "NOT IN":
            return value not in expected
        if op == "LIKE":
            pattern = "^" + re.escape(str(expected)).replace("%", ".*").replace("_", ".") + "$"
            return value is not None and re.match(pattern, str(value), re.IGNORECASE) is not None
        if op == "=":
            return bool(value == expected)
        if op == "!=":
            return bool(value != expected)
        if value is None or expected is None:
            return False
        try:
            return bool(_COMPARE[op](value, expected))
        except TypeError:
            return False


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class _DateTime:
    ts: float


@dataclass
class Soql:
    obj: str
    fields: list[str]
    where: list[tuple[str, str, Any]]
    order: list[tuple[str, bool]]
    limit: int | None
    offset: int
    count: bool


_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<obj>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>.+?))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?"
    r"(?:\s+OFFSET\s+(?P<offset>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<>|>=|<=|=|>|<)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<word>[^\s,()=<>!']+))"
)
_DT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})$")


def _literal(token: str) -> Any:
    if token.startswith("'"):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if _DT.match(token):
        text = token.replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", text):
            text = text[:-2] + ":" + text[-2:]
        return _DateTime(datetime.fromisoformat(text).timestamp())
    if re.match(r"^\d{4}-\d{2}-\d{2}$", token):
        return token
    try:
        return float(token) if "." in token else int(token)
    except ValueError as exc:
        raise SfError("MALFORMED_QUERY", f"unexpected token: '{token}'") from exc


def parse_soql(soql: str) -> Soql:
    """The simple SOQL a connector needs: SELECT fields FROM X [WHERE a op v AND ...]
    [ORDER BY f [ASC|DESC], ...] [LIMIT n] [OFFSET n]. OR, sub-queries, relationships and
    functions other than COUNT() are refused with MALFORMED_QUERY."""
    match = _SOQL.match(soql)
    if match is None:
        raise SfError("MALFORMED_QUERY", f"unexpected token or unsupported query: {soql[:200]}")
    raw_fields = [f.strip() for f in match["fields"].split(",")]
    count = [f.upper() for f in raw_fields] == ["COUNT()"]
    if not count and any(not re.match(r"^\w+$", f) for f in raw_fields):
        raise SfError(
            "MALFORMED_QUERY", "only plain field names (or COUNT()) are supported in SELECT"
        )
    where: list[tuple[str, str, Any]] = []
    if match["where"]:
        tokens = [m for m in _TOKEN.finditer(match["where"]) if m.group(0).strip()]
        pos, values = 0, [(m.lastgroup, m.group(m.lastgroup or 0)) for m in tokens]

        def take() -> tuple[str | None, str]:
            nonlocal pos
            if pos >= len(values):
                raise SfError("MALFORMED_QUERY", "unexpected end of WHERE clause")
            pos += 1
            return values[pos - 1]

        while pos < len(values):
            kind, name = take()
            if kind != "word":
                raise SfError("MALFORMED_QUERY", f"unexpected token: '{name}'")
            kind, op = take()
            op_upper = op.upper()
            if kind == "word" and op_upper == "NOT":
                kind, op = take()
                op_upper = "NOT " + op.upper()
            if kind == "op":
                _, literal = take()
                where.append((name, "!=" if op == "<>" else op, _literal(literal)))
            elif op_upper in ("IN", "NOT IN"):
                kind, _ = take()
                if kind != "lp":
                    raise SfError("MALFORMED_QUERY", "expected ( after IN")
                items: list[Any] = []
                while True:
                    kind, literal = take()
                    if kind == "rp":
                        break
                    if kind != "comma":
                        items.append(_literal(literal))
                where.append((name, op_upper, items))
            elif op_upper == "LIKE":
                _, literal = take()
                where.append((name, "LIKE", _literal(literal)))
            else:
                raise SfError("MALFORMED_QUERY", f"unexpected token: '{op}'")
            if pos < len(values):
                kind, joiner = take()
                if joiner.upper() != "AND":
                    raise SfError(
                        "MALFORMED_QUERY",
                        f"only AND is supported between conditions, got '{joiner}'",
                    )
    order: list[tuple[str, bool]] = []
    if match["order"]:
        for part in match["order"].split(","):
            words = part.split()
            if not words or len(words) > 4:
                raise SfError("MALFORMED_QUERY", f"bad ORDER BY: {part}")
            order.append((words[0], len(words) > 1 and words[1].upper() == "DESC"))
    return Soql(
        obj=match["obj"],
        fields=[] if count else raw_fields,
        where=where,
        order=order,
        limit=int(match["limit"]) if match["limit"] else None,
        offset=int(match["offset"]) if match["offset"] else 0,
        count=count,
    )


def _order_key(value: Any) -> tuple[int, Any]:
    # Salesforce sorts nulls first in ascending order.
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))
