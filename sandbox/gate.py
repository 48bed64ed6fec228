"""The front door every vendor request passes through, and the shared sandbox state.

Order of checks for a request to ``/xero``, ``/harvest`` or ``/salesforce`` (never
``/_control``), chosen so that each refusal happens where the real service would refuse:

1. outage window -> the vendor's 503 (nothing else is looked at, the service is "down");
2. authentication (token endpoints excepted) -> the vendor's 401/403;
3. rate limits (per tenant / token / org) -> the vendor's throttle response;
4. injected faults: throttle, error, timeout, latency (see ``faults.py``);
5. the vendor's own handler; a write may then have its response dropped.

Every step counts what it did in ``Store.stats`` so ``GET /_control/stats`` shows it.
Pure ASGI (no ``BaseHTTPMiddleware``): that wrapper costs ~30% of throughput on small reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Router
from starlette.types import Message, Receive, Scope, Send

from .faults import Faults
from .ratelimit import Denied, Lease, RateLimiter
from .store import Change, Row, Store
from .webhooks import WebhookDispatcher

SYSTEMS = ("salesforce", "harvest", "xero")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON; orjson for speed (a 2,000-record page is megabytes), json for the
    rare value orjson refuses (an integer over 64 bits)."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class JSON(Response):
    """A JSON response without Starlette's extra validation pass (cheaper per read)."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return dumps(content)


async def form_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the OAuth token requests), parsed without
    Starlette's form support, which would need the python-multipart package for no gain here."""
    return {
        k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()
    }


def refuse(request: Request, reason: str) -> None:
    """Record why a handler refused a request; the gate counts it under ``by_reason``."""
    request.scope.setdefault("state", {})["refusal"] = reason


@dataclass
class IdempotentResult:
    fingerprint: str
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass
class Sandbox:
    """Everything the vendors and the control API share. One instance per process."""

    base_url: str = "http://127.0.0.1:8100"
    store: Store = field(default_factory=Store)
    limits: RateLimiter = field(default_factory=RateLimiter)
    webhooks: WebhookDispatcher = field(default_factory=WebhookDispatcher)
    faults: dict[str, Faults] = field(default_factory=lambda: {s: Faults() for s in SYSTEMS})
    # (system, scope, key) -> the first response; kept until reset (Xero keeps keys 24 h,
    # longer than any test or benchmark here).
    idempotency: dict[tuple[str, str, str], IdempotentResult] = field(default_factory=dict)
    # Access tokens survive a reset: they are credentials, not data, and a running Concord
    # should not have to log in again because a test reset the records.
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    reset_hooks: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store.listeners.append(self.webhooks.on_change)

    def reset(self) -> None:
        self.store.reset()
        self.limits.reset()
        self.webhooks.reset()
        self.faults = {s: Faults() for s in SYSTEMS}
        self.idempotency.clear()
        for hook in self.reset_hooks:
            hook()


class Vendor:
    """What each vendor module provides to the gate. Subclasses override the hooks."""

    system: str = ""
    public_paths: frozenset[str] = frozenset()  # token endpoints: no auth, no limits

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.store = sandbox.store
        sandbox.webhooks.builders[self.system] = self.event

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def object_of(self, path: str) -> str:
        """The object a path is about, for the counters.

        ``/v2/time_entries/5`` -> ``time_entries``.
        """
        raise NotImplementedError

    def authenticate(self, request: Request) -> str | Response:
        """Return the rate-limit key of the caller, or the vendor's refusal."""
        raise NotImplementedError

    def error(self, status: int, message: str) -> Response:
        """The vendor's generic error body for injected 500/503/504s."""
        raise NotImplementedError

    def throttled(self, denied: Denied) -> Response:
        raise NotImplementedError

    def limit_headers(self, lease: Lease) -> list[tuple[bytes, bytes]]:
        return []

    def event(self, change: Change) -> dict[str, Any] | None:
        """The webhook event for a change, or None if the vendor would not announce it."""
        return None

    def patch_raw(self, obj: str, row: Row, changes: dict[str, Any], scope: str = "") -> None:
        """Store ``changes`` as given (no validation: an out-of-band change, as a person would
        make in the vendor's own UI), then derive, re-index and touch the record the way the
        vendor's own update does. Raises ValueError, TypeError, KeyError or AttributeError,
        leaving the record untouched, when the vendor cannot derive its fields from them."""
        raise NotImplementedError

    def create_raw(self, obj: str, data: dict[str, Any], scope: str = "") -> tuple[Row, str]:
        """Create a record out of band, as a person enters one in the vendor's own UI (a
        payment received, in Xero): checked by the vendor's own rules, stored, derived and
        announced as the vendor's own create is. Returns the record and its scope (the tenant
        it went to). Raises ValueError naming what the vendor refuses, NotImplementedError for
        an object the control API cannot create."""
        raise NotImplementedError


class VendorGate:
    """ASGI app mounted at ``/<system>``: checks, then the vendor's router."""

    def __init__(self, vendor: Vendor) -> None:
        self.vendor = vendor
        self.system = vendor.system
        self.router = Router(routes=vendor.routes())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        sandbox = self.vendor.sandbox
        stats = sandbox.store.stats
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        obj = self.vendor.object_of(path)
        stats.of(self.system, obj).requests += 1
        faults = sandbox.faults[self.system]

        async def reply(response: Response, reason: str | None) -> None:
            if response.status_code == 429 or reason == "throttled":
                stats.of(self.system, obj).throttled += 1
            elif reason is not None:
                stats.refused(self.system, obj, response.status_code, reason)
            await response(scope, receive, send)

        if faults.in_outage():
            response = self.vendor.error(503, "Service unavailable (sandbox outage window)")
            response.headers["Retry-After"] = str(faults.outage_retry_after())
            await reply(response, "outage")
            return

        lease: Lease | None = None
        if path not in self.vendor.public_paths:
            request = Request(scope)
            key = self.vendor.authenticate(request)
            if isinstance(key, Response):
                await reply(key, "auth")
                return
            admitted = sandbox.limits.acquire(self.system, key)
            if isinstance(admitted, Denied):
                await reply(self.vendor.throttled(admitted), "throttled")
                return
            lease = admitted
        try:
            if faults.roll(faults.throttle_rate):
                await reply(self.vendor.throttled(Denied("minute", 1)), "throttled")
                return
            if faults.roll(faults.error_rate):
                await reply(self.vendor.error(500, "Internal error (sandbox fault)"), "fault_error")
                return
            if faults.roll(faults.timeout_rate):
                await asyncio.sleep(faults.timeout_s)
                await reply(
                    self.vendor.error(504, "Gateway timeout (sandbox fault)"), "fault_timeout"
                )
                return
            delay = faults.latency_s()
            if delay:
                await asyncio.sleep(delay)
            drop = scope["method"] in WRITE_METHODS and faults.roll(faults.drop_response_rate)
            await self._handle(scope, receive, send, obj, lease, drop)
        finally:
            if lease is not None:
                lease.release()

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, obj: str, lease: Lease | None, drop: bool
    ) -> None:
        stats = self.vendor.sandbox.store.stats
        extra = self.vendor.limit_headers(lease) if lease is not None else []
        start: dict[str, Any] = {}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                if drop:
                    return
            elif drop:
                return
            await send(message)

        await self.router(scope, receive, tracking_send)
        status = int(start.get("status", 500))
        state: Mapping[str, Any] = scope.get("state") or {}
        if status == 429:
            stats.of(self.system, obj).throttled += 1
        elif status >= 400:
            stats.refused(self.system, obj, status, str(state.get("refusal", f"http_{status}")))
        if drop:
            stats.of(self.system, obj).dropped_responses += 1
            if start:
                # Headers go out, the body never does: uvicorn closes the connection because
                # the response is incomplete. The client sees a broken response although the
                # write above was applied, which is what idempotency keys are for.
                await send(start)
