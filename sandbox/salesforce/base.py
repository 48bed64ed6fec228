"""What every Salesforce resource shares: the gate hooks (bearer token, Salesforce's error
list, ``REQUEST_LIMIT_EXCEEDED``, ``Sforce-Limit-Info``, change-feed events) and the record
store: type-checked fields, derived fields, ids, ``External_Id__c`` uniqueness, indexes.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, Vendor, refuse
from ..ratelimit import Denied, Lease
from ..store import Change, Row
from .schema import (
    DATA,
    DEFAULTS,
    FIELDS,
    ORG_ID,
    PREFIXES,
    REQUIRED,
    SYSTEM,
    SfError,
    case_suffix,
    sf_datetime,
    sf_id,
)


class SalesforceBase(Vendor):
    system = SYSTEM
    public_paths = frozenset({"/services/oauth2/token"})

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

    def fail(self, request: Request, exc: SfError) -> Response:
        refuse(request, exc.code.lower())
        return JSON(exc.body(), exc.status)

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
        return value + case_suffix(value) if len(value) == 15 else value

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

    def _get(self, obj: str, ident: str) -> Row:
        if obj not in FIELDS:
            raise SfError("NOT_FOUND", f"sObject type '{obj}' is not supported.", status=404)
        row = self.store.get(SYSTEM, obj, self._full_id(ident))
        if row is None:
            raise SfError("NOT_FOUND", "The requested resource does not exist", status=404)
        return row
