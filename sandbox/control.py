"""The control API under ``/_control/``: reset, seed, faults, limits, stats, records, webhooks.

It is for tests, benchmarks and ``make run``; it has no auth (the sandbox binds loopback only)
and is never subject to faults or rate limits. Binding loopback does not keep out a web page
open in a browser on the same machine, so ``ControlGuard`` refuses what such a page can send:

* a Host that is not a loopback name (DNS rebinding: the attacker's own domain, re-resolved
  to 127.0.0.1, reads ``/_control/credentials`` or resets the data) -> 421;
* a POST, PUT or PATCH whose Content-Type is not ``application/json``. A page may send
  ``text/plain``, form or multipart bodies (or none at all) to any origin without asking
  first; ``application/json`` needs a CORS preflight, which the control API never grants
  (it answers OPTIONS with 405 and no ``Access-Control-Allow-*``), so only a real client can
  send it -> 415. DELETE needs the same preflight; GETs change nothing and a foreign page
  cannot read their answers.
"""

from __future__ import annotations

import gc
import time
from datetime import date
from itertools import islice
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import harvest, salesforce, xero
from .faults import FaultConfigError, apply_settings
from .gate import JSON, SYSTEMS, Sandbox, Vendor
from .ratelimit import LimitConfigError
from .seed import Seeder, default_anchor

MAX_SCALE = 100  # 100,000 time entries
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


def settle_heap() -> None:
    """Move the freshly seeded records out of the garbage collector's sight.

    A 100,000-entry seed is ~2 million long-lived objects; every full collection would walk
    them all, which cut read throughput here from ~2,500 to ~1,500 req/s. They are never
    cyclic garbage, so freezing them after one collection is safe.
    """
    gc.collect()
    gc.freeze()


def _error(message: str, status: int = 400) -> JSON:
    return JSON({"error": message}, status)


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback: ``127.0.0.1``, ``localhost``,
    ``[::1]`` (or a bare ``::1``), each with or without ``:port``."""
    host = host.strip().lower()
    if host == "::1":
        return True
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return False
        return name == "::1"
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return False
    return name in LOOPBACK_NAMES


class ControlGuard:
    """ASGI wrapper of the control API: loopback Host only, JSON bodies only (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def refusal(scope: Scope) -> Response | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        hosts = [v.decode("latin-1") for k, v in headers if k == b"host"]
        if len(hosts) != 1 or not is_loopback_host(hosts[0]):
            # 421 Misdirected Request (RFC 9110, 15.5.20): this server does not answer for
            # the authority the request names. The request itself is well-formed, so 400
            # would blame the wrong thing; a client that used a loopback name never sees it.
            named = hosts[0] if hosts else "(none)"
            return _error(
                f"the control API answers only for a loopback Host (127.0.0.1, localhost or "
                f"[::1], with or without a port), not {named!r}",
                421,
            )
        if scope["method"].encode() in BODY_METHODS:
            types = [v.decode("latin-1") for k, v in headers if k == b"content-type"]
            media = types[0].split(";")[0].strip().lower() if len(types) == 1 else ""
            if media != "application/json":
                got = ", ".join(types) or "none"
                return _error(
                    f"{scope['method']} to the control API needs Content-Type: application/json "
                    f"(got {got!r}), even with an empty body",
                    415,
                )
        return None


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise ValueError("body must be JSON") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _per_system(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accept ``{"system": "xero", ...settings}``, ``{"system": "*", ...}``
    or ``{"xero": {...}}``."""
    if "system" in body:
        settings = {k: v for k, v in body.items() if k != "system"}
        targets = SYSTEMS if body["system"] in ("*", "all") else (body["system"],)
        return {s: settings for s in targets}
    return body


class Control:
    def __init__(
        self, sandbox: Sandbox, sf: salesforce.Salesforce, hv: harvest.Harvest, xr: xero.Xero
    ) -> None:
        self.sandbox, self.sf, self.hv, self.xero = sandbox, sf, hv, xr
        self.vendors: dict[str, Vendor] = {v.system: v for v in (sf, hv, xr)}
        self.started = time.time()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/credentials", self.credentials, methods=["GET"]),
            Route("/reset", self.reset, methods=["POST"]),
            Route("/seed", self.seed, methods=["POST"]),
            Route("/faults", self.faults, methods=["GET", "POST"]),
            Route("/limits", self.limits, methods=["GET", "POST"]),
            Route("/stats", self.stats, methods=["GET"]),
            Route("/records", self.tables, methods=["GET"]),
            Route("/records/{system}/{obj}", self.records, methods=["GET", "POST"]),
            Route("/records/{system}/{obj}/{key}", self.record, methods=["GET", "PATCH"]),
            Route("/webhooks", self.webhooks, methods=["GET", "POST"]),
            Route("/webhooks/{sub_id}", self.unsubscribe, methods=["DELETE"]),
        ]

    async def health(self, request: Request) -> Response:
        return JSON(
            {
                "status": "ok",
                "uptime_s": round(time.time() - self.started, 3),
                "base_url": self.sandbox.base_url,
            }
        )

    async def credentials(self, request: Request) -> Response:
        base = self.sandbox.base_url
        return JSON(
            {
                "salesforce": {
                    "token_url": f"{base}/salesforce/services/oauth2/token",
                    "client_id": salesforce.CLIENT_ID,
                    "client_secret": salesforce.CLIENT_SECRET,
                },
                "harvest": {
                    "base_url": f"{base}/harvest/v2",
                    "access_token": next(iter(harvest.TOKENS)),
                    "account_id": harvest.ACCOUNT_ID,
                },
                "xero": {
                    "token_url": f"{base}/xero/connect/token",
                    "api_url": f"{base}/xero/api.xro/2.0",
                    "client_id": xero.CLIENT_ID,
                    "client_secret": xero.CLIENT_SECRET,
                    "tenants": {t.id: t.name for t in xero.TENANTS.values()},
                },
            }
        )

    async def reset(self, request: Request) -> Response:
        self.sandbox.reset()
        return JSON({"status": "reset"})

    async def seed(self, request: Request) -> Response:
        try:
            body = await _body(request)
            scale = int(body.get("scale", 1))
            seed_value = int(body.get("seed", 42))
            anchor = date.fromisoformat(body["anchor"]) if body.get("anchor") else default_anchor()
        except (ValueError, TypeError) as exc:
            return _error(str(exc))
        if not 1 <= scale <= MAX_SCALE:
            return _error(f"scale must be between 1 and {MAX_SCALE}")
        # Seeding replaces whatever was there, so the same request always gives the same firm.
        # Fault and limit settings are kept (they "survive until reset"), as are subscriptions.
        faults, limits, subs = (
            self.sandbox.faults,
            self.sandbox.limits.config,
            dict(self.sandbox.webhooks.subscriptions),
        )
        self.sandbox.reset()
        self.sandbox.faults, self.sandbox.limits.config = faults, limits
        self.sandbox.webhooks.subscriptions.update(subs)
        result = Seeder(self.sf, self.hv, self.xero, scale, seed_value, anchor).run()
        result["seed"] = seed_value
        settle_heap()
        return JSON(result)

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                for system, settings in _per_system(await _body(request)).items():
                    if system not in SYSTEMS:
                        return _error(f"unknown system {system!r}")
                    if not isinstance(settings, dict):
                        return _error("settings must be an object")
                    self.sandbox.faults[system] = apply_settings(
                        self.sandbox.faults[system], settings
                    )
            except (ValueError, TypeError, FaultConfigError) as exc:
                return _error(str(exc))
        return JSON({system: f.as_dict() for system, f in self.sandbox.faults.items()})

    async def limits(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                for system, settings in _per_system(await _body(request)).items():
                    if not isinstance(settings, dict):
                        return _error("settings must be an object")
                    self.sandbox.limits.configure(system, settings)
            except (ValueError, TypeError, LimitConfigError) as exc:
                return _error(str(exc))
        return JSON({system: lim.as_dict() for system, lim in self.sandbox.limits.config.items()})

    async def stats(self, request: Request) -> Response:
        stats = self.sandbox.store.stats.as_dict()
        system = request.query_params.get("system")
        if system:
            stats = {system: stats.get(system, {})}
        deliveries = list(self.sandbox.webhooks.deliveries)
        return JSON(
            {
                "systems": stats,
                "webhooks": {
                    "deliveries": len(deliveries),
                    "delivered": sum(1 for d in deliveries if d.delivered),
                    "failed": sum(1 for d in deliveries if not d.delivered and d.attempts >= 4),
                },
            }
        )

    async def tables(self, request: Request) -> Response:
        return JSON(
            [
                {"system": s, "object": o, "scope": sc, "count": n}
                for s, o, sc, n in self.sandbox.store.objects()
            ]
        )

    def _scopes(self, system: str, obj: str, request: Request) -> list[str]:
        tenant = request.query_params.get("tenant")
        if tenant is not None:
            return [tenant]
        return self.sandbox.store.scopes(system, obj) or [""]

    @staticmethod
    def _raw(row: Any, scope: str) -> dict[str, Any]:
        out = {
            "id": row.key,
            "version": row.version,
            "created": row.created,
            "updated": row.updated,
            "data": row.data,
        }
        if scope:
            out["tenant"] = scope
        return out

    async def records(self, request: Request) -> Response:
        system, obj = request.path_params["system"], request.path_params["obj"]
        if request.method == "POST":
            return await self.create(request, system, obj)
        try:
            limit = int(request.query_params.get("limit", "1000"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _error("limit and offset must be integers")
        if limit < 0 or offset < 0:
            return _error("limit and offset must not be negative")
        store, scopes = self.sandbox.store, self._scopes(system, obj, request)
        rows = ((scope, row) for scope in scopes for row in store.rows(system, obj, scope))
        return JSON(
            {
                "system": system,
                "object": obj,
                "count": sum(store.count(system, obj, scope) for scope in scopes),
                "records": [
                    self._raw(row, scope) for scope, row in islice(rows, offset, offset + limit)
                ],
            }
        )

    async def create(self, request: Request, system: str, obj: str) -> Response:
        """An out-of-band record, as a person enters one in the vendor's own UI (a payment
        received, in Xero): the vendor's own rules apply (a refusal is a 400 naming them), and
        it is stored, derived and announced as the vendor's own create is."""
        vendor = self.vendors.get(system)
        if vendor is None:
            return _error(f"unknown system {system!r}", 404)
        try:
            body = await _body(request)
        except ValueError as exc:
            return _error(str(exc))
        try:
            row, scope = vendor.create_raw(obj, body, request.query_params.get("tenant", ""))
        except NotImplementedError as exc:
            return _error(str(exc) or f"the control API cannot create {system} {obj}", 405)
        except (ValueError, TypeError, KeyError, AttributeError, StopIteration) as exc:
            return _error(f"refused: {exc}")
        return JSON(self._raw(row, scope), 201)

    async def record(self, request: Request) -> Response:
        system, obj, raw_key = (request.path_params[k] for k in ("system", "obj", "key"))
        key: Any = int(raw_key) if system == "harvest" and raw_key.isdigit() else raw_key
        for scope in self._scopes(system, obj, request):
            row = self.sandbox.store.get(system, obj, key, scope)
            if row is None:
                continue
            if request.method == "PATCH":
                # An out-of-band change, as a person would make in the vendor's own UI (e.g. a
                # manager approving a timesheet); it is versioned and announced by webhook.
                # The vendor stores it as its own update would: derived fields, indexes.
                try:
                    changes = await _body(request)
                except ValueError as exc:
                    return _error(str(exc))
                try:
                    self.vendors[system].patch_raw(obj, row, changes, scope)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    return _error(f"cannot apply the change: {exc}")
            return JSON(self._raw(row, scope))
        return _error("not found", 404)

    async def webhooks(self, request: Request) -> Response:
        hooks = self.sandbox.webhooks
        if request.method == "POST":
            try:
                body = await _body(request)
            except ValueError as exc:
                return _error(str(exc))
            system, url, secret = body.get("system"), body.get("url"), body.get("secret")
            tenant = body.get("tenant")
            if (
                system not in SYSTEMS
                or not isinstance(url, str)
                or not isinstance(secret, str)
                or not secret
            ):
                return _error("need system (salesforce|harvest|xero), url and a non-empty secret")
            if tenant is not None and (system != "xero" or tenant not in xero.TENANTS):
                return _error(
                    "tenant is for xero subscriptions only, and must be one of "
                    + ", ".join(xero.TENANTS)
                )
            return JSON(hooks.subscribe(system, url, secret, tenant).as_dict(), 201)
        return JSON(
            {
                "subscriptions": [s.as_dict() for s in hooks.subscriptions.values()],
                "deliveries": [d.as_dict() for d in hooks.deliveries],
            }
        )

    async def unsubscribe(self, request: Request) -> Response:
        if self.sandbox.webhooks.unsubscribe(request.path_params["sub_id"]):
            return Response(status_code=204)
        return _error("not found", 404)
