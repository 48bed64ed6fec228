"""Injected faults per vendor system, set through ``POST /_control/faults``.

The fault model (applied by ``gate.py`` to every vendor request, never to ``/_control``):

* ``outage``: a window ``{"start", "end"}`` (epoch seconds or ISO-8601) or ``duration_s``
  from now; every request in it gets the vendor's 503.
* ``error_rate``: share of requests answered with the vendor's 500 *before* any write.
* ``throttle_rate``: share answered with the vendor's throttle response (429 + Retry-After).
* ``timeout_rate``: share that hang ``timeout_s`` seconds (default 30, longer than a sane
  client timeout) and then get a 504; nothing is written.
* ``latency_ms`` (+ ``latency_jitter_ms``): added to every request.
* ``drop_response_rate``: share of *writes* (POST/PUT/PATCH/DELETE) that are applied, after
  which the response headers are sent and the connection is closed before the body: the
  client sees a broken response although the write happened, the case idempotency exists for.

Rates are probabilities in [0, 1] drawn from a seeded RNG, so a run is reproducible. Settings
stay until ``POST /_control/reset`` or until replaced.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

RATE_FIELDS = ("error_rate", "throttle_rate", "timeout_rate", "drop_response_rate")


class FaultConfigError(ValueError):
    pass


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise FaultConfigError(f"not an ISO-8601 time: {value!r}") from exc
    raise FaultConfigError(f"not a time: {value!r}")


@dataclass
class Faults:
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_response_rate: float = 0.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    timeout_s: float = 30.0
    outage_start: float | None = None
    outage_end: float | None = None
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def in_outage(self, now: float | None = None) -> bool:
        if self.outage_start is None or self.outage_end is None:
            return False
        now = time.time() if now is None else now
        return self.outage_start <= now < self.outage_end

    def outage_retry_after(self) -> int:
        if self.outage_end is None:
            return 1
        return max(1, int(self.outage_end - time.time()) + 1)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def latency_s(self) -> float:
        jitter = self.rng.uniform(0, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("rng")
        out["outage"] = (
            None
            if self.outage_start is None
            else {"start": self.outage_start, "end": self.outage_end, "active": self.in_outage()}
        )
        out.pop("outage_start")
        out.pop("outage_end")
        return out


def apply_settings(current: Faults, body: dict[str, Any]) -> Faults:
    """Return ``current`` updated with the fields given in ``body`` (others are kept)."""
    unknown = set(body) - {
        *RATE_FIELDS,
        "latency_ms",
        "latency_jitter_ms",
        "timeout_s",
        "outage",
        "seed",
        "clear",
    }
    if unknown:
        raise FaultConfigError(f"unknown fault settings: {sorted(unknown)}")
    faults = Faults() if body.get("clear") else current
    for name in RATE_FIELDS:
        if name in body:
            value = float(body[name])
            if not 0.0 <= value <= 1.0:
                raise FaultConfigError(f"{name} must be between 0 and 1")
            setattr(faults, name, value)
    for name in ("latency_ms", "latency_jitter_ms", "timeout_s"):
        if name in body:
            value = float(body[name])
            if value < 0:
                raise FaultConfigError(f"{name} must not be negative")
            setattr(faults, name, value)
    if "outage" in body:
        outage = body["outage"]
        if outage is None:
            faults.outage_start = faults.outage_end = None
        elif isinstance(outage, dict):
            if "duration_s" in outage:
                start = _epoch(outage.get("start", time.time()))
                faults.outage_start, faults.outage_end = start, start + float(outage["duration_s"])
            elif "start" in outage and "end" in outage:
                faults.outage_start, faults.outage_end = (
                    _epoch(outage["start"]),
                    _epoch(outage["end"]),
                )
            else:
                raise FaultConfigError("outage needs {start, end} or {duration_s}")
        else:
            raise FaultConfigError("outage must be an object or null")
    if "seed" in body:
        faults.seed = int(body["seed"])
    faults.rng.seed(faults.seed)
    return faults
