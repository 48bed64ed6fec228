"""Vendor-like rate limits: sliding windows per caller key, plus a concurrency cap.

Defaults follow the vendors' published limits (ON by default; the control API can change or
disable them per system, which is what the benchmarks do):

* Xero, per tenant: 60 calls per rolling minute, 5,000 per rolling day, 5 in flight at once;
  and 10,000 calls per minute for the whole app. Refusals are 429 with ``Retry-After`` and
  ``X-Rate-Limit-Problem`` = ``minute`` | ``day`` | ``appminute`` | ``concurrent``.
* Harvest, per access token: 100 requests per 15 seconds; 429 with ``Retry-After``.
* Salesforce, per org: 100,000 API requests per rolling 24 h (an Enterprise org's base
  allocation) and 25 concurrent requests (Salesforce's long-running-request cap, applied to
  all requests here); refusals are Salesforce's 403 ``REQUEST_LIMIT_EXCEEDED``.

A sliding *log* (a deque of timestamps) is exact and cheap at these sizes: the longest log is
Salesforce's 100,000 floats (~1 MB) and each check pops expired entries from the left.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Window:
    limit: int
    seconds: float
    app_wide: bool = False  # one log for all callers of the system instead of one per key


@dataclass
class Limits:
    enabled: bool = True
    windows: dict[str, Window] = field(default_factory=dict)
    concurrent: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "windows": {
                name: {"limit": w.limit, "seconds": w.seconds, "app_wide": w.app_wide}
                for name, w in self.windows.items()
            },
            "concurrent": self.concurrent,
        }


def vendor_defaults() -> dict[str, Limits]:
    return {
        "xero": Limits(
            windows={
                "minute": Window(60, 60.0),
                "day": Window(5000, 86400.0),
                "appminute": Window(10000, 60.0, app_wide=True),
            },
            concurrent=5,
        ),
        "harvest": Limits(windows={"15s": Window(100, 15.0)}),
        "salesforce": Limits(windows={"day": Window(100_000, 86400.0)}, concurrent=25),
    }


@dataclass(frozen=True)
class Denied:
    problem: str  # the window name, or "concurrent"
    retry_after: int  # whole seconds, at least 1


@dataclass
class Lease:
    """Admission of one request; ``release`` must be called when the response is sent."""

    limiter: RateLimiter | None
    system: str
    key: str
    remaining: dict[str, int]
    _released: bool = False

    def release(self) -> None:
        if self.limiter is not None and not self._released:
            self._released = True
            self.limiter._in_flight[(self.system, self.key)] -= 1


class LimitConfigError(ValueError):
    pass


class RateLimiter:
    def __init__(self) -> None:
        self.config: dict[str, Limits] = vendor_defaults()
        self._logs: dict[tuple[str, str, str], deque[float]] = defaultdict(deque)
        self._in_flight: dict[tuple[str, str], int] = defaultdict(int)

    def reset(self) -> None:
        self.config = vendor_defaults()
        self._logs.clear()
        # In-flight counts are left alone: requests running during a reset still release.

    def acquire(self, system: str, key: str) -> Lease | Denied:
        limits = self.config.get(system)
        if limits is None or not limits.enabled:
            return Lease(None, system, key, {})
        now = time.monotonic()
        if limits.concurrent is not None and self._in_flight[(system, key)] >= limits.concurrent:
            return Denied("concurrent", 1)
        remaining: dict[str, int] = {}
        logs: list[deque[float]] = []
        for name, window in limits.windows.items():
            log = self._logs[(system, name, "*" if window.app_wide else key)]
            horizon = now - window.seconds
            while log and log[0] <= horizon:
                log.popleft()
            if len(log) >= window.limit:
                return Denied(name, max(1, math.ceil(log[0] + window.seconds - now)))
            remaining[name] = window.limit - len(log) - 1
            logs.append(log)
        for log in logs:
            log.append(now)
        self._in_flight[(system, key)] += 1
        return Lease(self, system, key, remaining)

    def configure(self, system: str, body: dict[str, Any]) -> Limits:
        if system not in self.config:
            raise LimitConfigError(f"unknown system {system!r}")
        unknown = set(body) - {"enabled", "windows", "concurrent", "defaults", "system"}
        if unknown:
            raise LimitConfigError(f"unknown limit settings: {sorted(unknown)}")
        if body.get("defaults"):
            self.config[system] = vendor_defaults()[system]
        limits = self.config[system]
        if "enabled" in body:
            limits.enabled = bool(body["enabled"])
        if "concurrent" in body:
            value = body["concurrent"]
            limits.concurrent = None if value is None else int(value)
        for name, spec in (body.get("windows") or {}).items():
            if spec is None:
                limits.windows.pop(name, None)
                continue
            old = limits.windows.get(name)
            limits.windows[name] = Window(
                limit=int(spec.get("limit", old.limit if old else 1)),
                seconds=float(spec.get("seconds", old.seconds if old else 60.0)),
                app_wide=bool(spec.get("app_wide", old.app_wide if old else False)),
            )
        # New limits start from a clean slate, so a test that lowers a limit sees it at once.
        for log_key in [k for k in self._logs if k[0] == system]:
            del self._logs[log_key]
        return limits
