"""What every Harvest resource shares: the gate hooks (personal access token auth, Harvest's
error and throttle bodies, change-feed events), the admin user behind the token, the store
writes that run each resource's rules (``Kind`` hooks), and rendering with nested references.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, Sandbox, Vendor
from ..ratelimit import Denied
from ..store import Change, Key, Row
from .kinds import KINDS
from .schema import ACCOUNT_ID, ID_START, SYSTEM, TOKENS, Invalid, iso


class HarvestBase(Vendor):
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
        if len(parts) >= 4 and parts[1] == "invoices" and parts[3] == "payments":
            return "invoice_payments"
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
        if change.obj == "invoice_payments":
            return None  # announced as its invoice's update (it settles the invoice)
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

    # -- the token's own user -----------------------------------------------------------------

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

    # -- storage: every write runs the resource's rules through these ------------------------

    def insert(
        self, kind: str, data: dict[str, Any], *, at: float | None = None, seeded: bool = False
    ) -> Row:
        key = self.store.next_id(SYSTEM, kind, ID_START)
        row = self.store.insert(SYSTEM, kind, key, data, at=at, seeded=seeded)
        self.store.table(SYSTEM, kind).reindex(key, {}, self.index_keys(kind, data))
        return row

    def patch_raw(self, obj: str, row: Row, changes: dict[str, Any], scope: str = "") -> None:
        """Store ``changes`` (validated by a PATCH, or an out-of-band change from the control
        API), derive Harvest's computed fields, re-index and touch."""
        data = {**row.data, **changes}
        self.derive(obj, data, changes)
        self.store.table(SYSTEM, obj).reindex(
            row.key, self.index_keys(obj, row.data), self.index_keys(obj, data)
        )
        row.data = data
        self.store.touch(SYSTEM, obj, row)

    @staticmethod
    def index_keys(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Where a record is found besides its id: every write re-indexes through this."""
        spec = KINDS.get(kind)
        return spec.index_keys(data) if spec is not None and spec.index_keys else {}

    def validate(
        self, kind: str, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
    ) -> None:
        """Raise ``Invalid`` if the write (``changes``, giving ``data``) breaks a rule."""
        spec = KINDS.get(kind)
        if spec is not None and spec.validate:
            spec.validate(self, data, existing, changes)

    def derive(self, kind: str, data: dict[str, Any], changes: dict[str, Any]) -> None:
        """Derived fields, set the way Harvest sets them."""
        spec = KINDS.get(kind)
        if spec is not None and spec.derive:
            spec.derive(self, data, changes)

    def need(self, kind: str, key: Any, label: str) -> Row:
        """The record ``key`` refers to, or the 422 Harvest gives for a dangling reference."""
        row = self.store.get(SYSTEM, kind, key)
        if row is None:
            raise Invalid(f"{label} is invalid")
        return row

    # -- rendering ---------------------------------------------------------------------------

    def render(self, kind: str, row: Row) -> dict[str, Any]:
        spec = KINDS.get(kind)
        data = row.data
        out: dict[str, Any] = {"id": row.key}
        out.update(
            spec.render(self, data)
            if spec is not None and spec.render
            else {k: v for k, v in data.items() if not k.endswith("_id")}
        )
        out["created_at"] = iso(row.created)
        out["updated_at"] = iso(row.updated)
        return out

    def ref(self, kind: str, key: Any, *fields: str) -> dict[str, Any] | None:
        """``{"id", <fields>}`` of a referenced record (users also get ``name``)."""
        memo = self._memo
        if memo is None:
            return self._ref_now(kind, key, fields)
        name = ("ref", kind, key, fields)
        if name not in memo:
            memo[name] = self._ref_now(kind, key, fields)
        return memo[name]

    def rendered(self, kind: str, row: Row) -> dict[str, Any]:
        """A record rendered whole inside another (an entry's assignments)."""
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

    def project_ref(self, project_id: Any) -> dict[str, Any] | None:
        return self.ref("projects", project_id, "name", "code")

    def client_of(self, project_id: Any) -> dict[str, Any] | None:
        project = self.store.get(SYSTEM, "projects", project_id)
        return (
            None
            if project is None
            else self.ref("clients", project.data["client_id"], "name", "currency")
        )
