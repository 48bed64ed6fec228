"""Per-connection limits shared by every worker: rate, concurrency, vendor pause, circuit breaker.

One ``Limits`` object guards one connection. Before each vendor call ``acquire`` checks, in
this order (cheapest refusal first):

1. the **circuit breaker**: closed lets calls through; open refuses at once (no call is made)
   until the cool-down has passed; then half-open lets exactly ONE probe through, whose
   success closes the circuit and whose failure opens it again. It opens after
   ``failure_threshold`` consecutive transient failures (5 by default: at Xero's 60 calls a
   minute five failures in a row is ~5 s of an unreachable vendor, not a single 500).
2. a **vendor pause**: a 429 (or 503) with ``Retry-After`` pauses the connection for every
   worker until that time has passed, so the other workers do not each collect their own 429.
3. the **concurrency cap** (``connection.max_concurrency``, Xero allows 5 in flight): a
   semaphore whose slots are leases; a worker killed mid-call gives its slot back when the
   lease runs out instead of holding it forever.
4. the **rate limit** (``connection.rate_limit_per_minute``): a sliding log of admission times
   that never admits more than N calls in any window. The window is the vendor's (60 s) plus
   a margin (1 s): the vendor counts arrival times, we count admission times, and the two
   differ by the send delay, which varies by up to a TLS handshake (~0.3 s on a new
   connection). 60 calls per 61 s is 98.4% of Xero's 60/min, above the 95% target, with no
   429 caused by Concord.

Where state lives: with ``settings.REDIS_URL`` set, in Redis, each check one Lua script
(atomic, and timed by Redis' own clock so workers on machines with skewed clocks agree).
With no Redis (the embedded default: SQLite and the filesystem broker) an in-process store
with the same interface is used; its limits are then **per process**, so two worker processes
could together exceed a vendor's limit. The embedded default runs one worker, so it holds
there; anything with several workers must set REDIS_URL.

Every circuit transition (and last success / failure times) is mirrored into the
``ConnectionHealth`` row so pages can show it; the live state stays in the store.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from integrations.connectors.errors import CircuitOpenError, LimitWaitExceeded, TransientError

logger = logging.getLogger(__name__)

# Redis keys are "<prefix>:{<connection id>}:<what>"; the braces keep one connection's keys in
# one Redis Cluster slot, which Lua scripts touching several keys would need.
KEY_PREFIX = "concord:limits"


@dataclass(frozen=True)
class LimitSettings:
    # Calls admitted per `window_s` (a minute but for Harvest's 15 s: connection_limits.py).
    rate_per_minute: int
    max_concurrency: int
    # The vendor's window, and the margin explained in the module docstring.
    window_s: float = 60.0
    window_margin_s: float = 1.0
    # How long a concurrency slot (or the half-open probe) is held if its worker dies. httpx's
    # read timeout (30 s) is per read, so a trickling response can outlive it; 120 s covers any
    # call we make, and a killed worker's slot returns within two minutes.
    lease_s: float = 120.0
    # Consecutive transient failures that open the circuit, and how long it stays open. 30 s is
    # about as long as a vendor's 503 outage windows last and shorter than the outbox backoff
    # after a few retries, so a recovered vendor is probed before the backlog is due again.
    failure_threshold: int = 5
    cooldown_s: float = 30.0

    @property
    def rate_window_s(self) -> float:
        return self.window_s + self.window_margin_s


@dataclass(frozen=True)
class CircuitChange:
    """What a breaker update did; ``transition`` is the new state when it changed."""

    state: str  # closed | open | half_open
    failures: int
    transition: str | None = None
    failures_before: int = 0
    opened_at: float | None = None  # epoch seconds (store clock)


class LimitStore(Protocol):
    """The atomic primitives ``Limits`` is built on; Redis and in-process implementations."""

    def rate_take(self, key: str, limit: int, window_s: float, member: str) -> float:
        """Admit one call if fewer than ``limit`` were admitted in the last ``window_s``;
        return 0 if admitted, else the seconds until the oldest admission leaves the window."""
        ...

    def rate_count(self, key: str, window_s: float) -> int:
        """How many calls were admitted in the last `window_s`."""
        ...

    def slot_take(self, key: str, limit: int, lease_s: float, token: str) -> bool: ...

    def slot_release(self, key: str, token: str) -> None: ...

    def pause_until(self, key: str, seconds: float) -> None:
        """Pause for ``seconds`` from now, unless already paused for longer."""
        ...

    def pause_left(self, key: str) -> float: ...

    def circuit_allow(
        self, key: str, cooldown_s: float, probe_lease_s: float, token: str
    ) -> tuple[bool, CircuitChange, float]:
        """(allowed, state, seconds until a call could be allowed when refused)."""
        ...

    def circuit_release_probe(self, key: str, token: str) -> None: ...

    def circuit_success(self, key: str) -> CircuitChange: ...

    def circuit_failure(self, key: str, threshold: int) -> CircuitChange: ...

    def circuit_state(self, key: str) -> CircuitChange: ...

    def clear(self, prefix: str) -> None: ...

    def now(self) -> float: ...


# --- Redis ------------------------------------------------------------------------------------

# Times in the scripts are milliseconds of Redis' own clock (TIME), shared by all workers.
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_RATE_TAKE = (
    _NOW
    + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""
)

_RATE_COUNT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
)

_SLOT_TAKE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local lease = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease) + 1000)
  return 1
end
return 0
"""
)

_PAUSE = (
    _NOW
    + """
local untl = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > current then
  redis.call('SET', KEYS[1], untl, 'PX', math.ceil(untl - now) + 1000)
end
return 0
"""
)

_PAUSE_LEFT = (
    _NOW
    + """
local untl = tonumber(redis.call('GET', KEYS[1]) or '0')
return math.max(0, untl - now)
"""
)

# The breaker's hash: state, failures, opened_at (ms), probe (token), probe_until (ms).
# Every script returns {allowed or 0, state, failures, transition, failures_before, opened_at,
# wait_ms}. The hash expires a week after its last change: long enough for pages to show.
_CIRCUIT_HEAD = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
local keep = 604800000
"""
)

_CIRCUIT_ALLOW = (
    _CIRCUIT_HEAD
    + """
local cooldown, lease, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if state == 'closed' then return {1, state, failures, '', failures, opened, 0} end
if state == 'open' then
  local left = opened + cooldown - now
  if left > 0 then return {0, state, failures, '', failures, opened, left} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', token, 'probe_until', now + lease)
  redis.call('PEXPIRE', KEYS[1], keep)
  return {1, 'half_open', failures, 'half_open', failures, opened, 0}
end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if probe_until > now then return {0, state, failures, '', failures, opened, probe_until - now} end
redis.call('HSET', KEYS[1], 'probe', token, 'probe_until', now + lease)
redis.call('PEXPIRE', KEYS[1], keep)
return {1, state, failures, '', failures, opened, 0}
"""
)

_CIRCUIT_RELEASE_PROBE = """
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'probe_until', 0)
end
return 0
"""

_CIRCUIT_SUCCESS = (
    _CIRCUIT_HEAD
    + """
if state == 'half_open' or (state == 'closed' and failures > 0) then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
  redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
  redis.call('PEXPIRE', KEYS[1], keep)
  local change = ''
  if state == 'half_open' then change = 'closed' end
  return {1, 'closed', 0, change, failures, opened, 0}
end
return {1, state, failures, '', failures, opened, 0}
"""
)

_CIRCUIT_FAILURE = (
    _CIRCUIT_HEAD
    + """
local threshold = tonumber(ARGV[1])
local now_failures = failures + 1
local change = ''
local new_state = state
if state == 'half_open' or (state == 'closed' and now_failures >= threshold) then
  new_state, change, opened = 'open', 'open', now
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'probe_until', 0)
end
redis.call('HSET', KEYS[1], 'failures', now_failures)
redis.call('PEXPIRE', KEYS[1], keep)
return {1, new_state, now_failures, change, failures, opened, 0}
"""
)

_CIRCUIT_STATE = (
    _CIRCUIT_HEAD
    + """
return {1, state, failures, '', failures, opened, 0}
"""
)


def _change(row: list[Any]) -> tuple[bool, CircuitChange, float]:
    allowed, state, failures, transition, before, opened, wait_ms = row
    as_str = [v.decode() if isinstance(v, bytes) else str(v) for v in (state, transition)]
    change = CircuitChange(
        state=as_str[0],
        failures=int(failures),
        transition=as_str[1] or None,
        failures_before=int(before),
        opened_at=int(opened) / 1000 if int(opened) else None,
    )
    return bool(int(allowed)), change, int(wait_ms) / 1000


class RedisLimitStore:
    """The shared store: one Lua script per check, so each is atomic across all workers."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("rate", _RATE_TAKE),
                ("rate_count", _RATE_COUNT),
                ("slot", _SLOT_TAKE),
                ("pause", _PAUSE),
                ("pause_left", _PAUSE_LEFT),
                ("allow", _CIRCUIT_ALLOW),
                ("release_probe", _CIRCUIT_RELEASE_PROBE),
                ("success", _CIRCUIT_SUCCESS),
                ("failure", _CIRCUIT_FAILURE),
                ("state", _CIRCUIT_STATE),
            )
        }

    def _run(self, name: str, key: str, *args: Any) -> Any:
        try:
            return self._scripts[name](keys=[key], args=list(args))
        except redis.RedisError as exc:
            # Redis restarting must delay work, never lose it: the outbox retries transients.
            raise TransientError(f"limit store unavailable: {type(exc).__name__}") from exc

    def rate_take(self, key: str, limit: int, window_s: float, member: str) -> float:
        return int(self._run("rate", key, limit, int(window_s * 1000), member)) / 1000

    def rate_count(self, key: str, window_s: float) -> int:
        return int(self._run("rate_count", key, int(window_s * 1000)))

    def slot_take(self, key: str, limit: int, lease_s: float, token: str) -> bool:
        return bool(int(self._run("slot", key, limit, int(lease_s * 1000), token)))

    def slot_release(self, key: str, token: str) -> None:
        try:
            self.client.zrem(key, token)
        except redis.RedisError:
            # The lease runs out by itself; a failed release only costs capacity until then.
            logger.warning("could not release a concurrency slot; its lease will expire")

    def pause_until(self, key: str, seconds: float) -> None:
        self._run("pause", key, int(seconds * 1000))

    def pause_left(self, key: str) -> float:
        return int(self._run("pause_left", key)) / 1000

    def circuit_allow(
        self, key: str, cooldown_s: float, probe_lease_s: float, token: str
    ) -> tuple[bool, CircuitChange, float]:
        return _change(
            self._run("allow", key, int(cooldown_s * 1000), int(probe_lease_s * 1000), token)
        )

    def circuit_release_probe(self, key: str, token: str) -> None:
        self._run("release_probe", key, token)

    def circuit_success(self, key: str) -> CircuitChange:
        return _change(self._run("success", key))[1]

    def circuit_failure(self, key: str, threshold: int) -> CircuitChange:
        return _change(self._run("failure", key, threshold))[1]

    def circuit_state(self, key: str) -> CircuitChange:
        return _change(self._run("state", key))[1]

    def clear(self, prefix: str) -> None:
        keys = list(self.client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            self.client.delete(*keys)

    def now(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1e6


# --- In process -------------------------------------------------------------------------------


@dataclass
class _Circuit:
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe: str = ""
    probe_until: float = 0.0


@dataclass
class MemoryLimitStore:
    """Same semantics as Redis for one process (the embedded default): see module docstring."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    logs: dict[str, list[float]] = field(default_factory=dict)
    slots: dict[str, dict[str, float]] = field(default_factory=dict)
    pauses: dict[str, float] = field(default_factory=dict)
    circuits: dict[str, _Circuit] = field(default_factory=dict)

    def now(self) -> float:
        return time.time()

    def rate_take(self, key: str, limit: int, window_s: float, member: str) -> float:
        with self.lock:
            now = self.now()
            log = [t for t in self.logs.get(key, []) if t > now - window_s]
            self.logs[key] = log
            if len(log) < limit:
                log.append(now)
                return 0.0
            return max(0.001, log[0] + window_s - now)

    def rate_count(self, key: str, window_s: float) -> int:
        with self.lock:
            now = self.now()
            return sum(1 for t in self.logs.get(key, []) if t > now - window_s)

    def slot_take(self, key: str, limit: int, lease_s: float, token: str) -> bool:
        with self.lock:
            now = self.now()
            held = {t: u for t, u in self.slots.get(key, {}).items() if u > now}
            self.slots[key] = held
            if len(held) < limit:
                held[token] = now + lease_s
                return True
            return False

    def slot_release(self, key: str, token: str) -> None:
        with self.lock:
            self.slots.get(key, {}).pop(token, None)

    def pause_until(self, key: str, seconds: float) -> None:
        with self.lock:
            self.pauses[key] = max(self.pauses.get(key, 0.0), self.now() + seconds)

    def pause_left(self, key: str) -> float:
        with self.lock:
            return max(0.0, self.pauses.get(key, 0.0) - self.now())

    def _snapshot(self, c: _Circuit, transition: str | None, before: int) -> CircuitChange:
        return CircuitChange(c.state, c.failures, transition, before, c.opened_at or None)

    def circuit_allow(
        self, key: str, cooldown_s: float, probe_lease_s: float, token: str
    ) -> tuple[bool, CircuitChange, float]:
        with self.lock:
            c = self.circuits.setdefault(key, _Circuit())
            now = self.now()
            if c.state == "closed":
                return True, self._snapshot(c, None, c.failures), 0.0
            if c.state == "open":
                left = c.opened_at + cooldown_s - now
                if left > 0:
                    return False, self._snapshot(c, None, c.failures), left
                c.state, c.probe, c.probe_until = "half_open", token, now + probe_lease_s
                return True, self._snapshot(c, "half_open", c.failures), 0.0
            if c.probe_until > now:
                return False, self._snapshot(c, None, c.failures), c.probe_until - now
            c.probe, c.probe_until = token, now + probe_lease_s
            return True, self._snapshot(c, None, c.failures), 0.0

    def circuit_release_probe(self, key: str, token: str) -> None:
        with self.lock:
            c = self.circuits.get(key)
            if c is not None and c.probe == token:
                c.probe_until = 0.0

    def circuit_success(self, key: str) -> CircuitChange:
        with self.lock:
            c = self.circuits.setdefault(key, _Circuit())
            before = c.failures
            if c.state == "half_open" or (c.state == "closed" and c.failures > 0):
                transition = "closed" if c.state == "half_open" else None
                c.state, c.failures, c.probe, c.probe_until = "closed", 0, "", 0.0
                return self._snapshot(c, transition, before)
            return self._snapshot(c, None, before)

    def circuit_failure(self, key: str, threshold: int) -> CircuitChange:
        with self.lock:
            c = self.circuits.setdefault(key, _Circuit())
            before = c.failures
            c.failures += 1
            transition = None
            if c.state == "half_open" or (c.state == "closed" and c.failures >= threshold):
                c.state, c.opened_at, c.probe_until, transition = "open", self.now(), 0.0, "open"
            return self._snapshot(c, transition, before)

    def circuit_state(self, key: str) -> CircuitChange:
        with self.lock:
            c = self.circuits.setdefault(key, _Circuit())
            return self._snapshot(c, None, c.failures)

    def clear(self, prefix: str) -> None:
        with self.lock:
            for table in (self.logs, self.slots, self.pauses, self.circuits):
                for key in [k for k in table if k.startswith(prefix)]:
                    del table[key]


_stores: dict[tuple[int, str], LimitStore] = {}
_stores_lock = threading.Lock()


def get_store(redis_url: str | None = None) -> LimitStore:
    """The store for this process: Redis when REDIS_URL is set, else the in-process one."""
    if redis_url is None:
        from django.conf import settings

        redis_url = str(getattr(settings, "REDIS_URL", "") or "")
    # Per process id: a Redis connection pool must not be shared across a fork (Celery prefork).
    key = (os.getpid(), redis_url)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            if redis_url:
                # 2 s socket timeouts: a check is one round trip of well under a millisecond; a
                # Redis that does not answer in 2 s is down, and the call is retried later.
                client = redis.Redis.from_url(
                    redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
                )
                store = RedisLimitStore(client)
            else:
                store = MemoryLimitStore()
            _stores[key] = store
        return store


# --- The per-connection facade ----------------------------------------------------------------


@dataclass
class Permit:
    """Admission of one call: release it when the response (or the failure) is in."""

    slot_token: str
    probe: bool


HealthSink = Callable[[CircuitChange, str, str | None], None]


class Limits:
    """All limits of one connection. ``on_change(change, event, error)`` mirrors the breaker."""

    def __init__(
        self,
        connection_id: int,
        settings: LimitSettings,
        *,
        store: LimitStore | None = None,
        on_change: HealthSink | None = None,
        prefix: str | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.settings = settings
        self.store = store if store is not None else get_store()
        self.on_change = on_change
        self.prefix = f"{prefix or KEY_PREFIX}:{{{connection_id}}}"
        self._last_success_mirror = 0.0

    def key(self, what: str) -> str:
        return f"{self.prefix}:{what}"

    # -- acquire / release ---------------------------------------------------------------------

    def acquire(self, timeout: float) -> Permit:
        """Wait (at most ``timeout`` seconds) until a call may be sent. Raises
        ``CircuitOpenError`` or ``LimitWaitExceeded`` (both transient) instead of sending."""
        deadline = time.monotonic() + timeout
        token = uuid.uuid4().hex
        allowed, change, wait = self.store.circuit_allow(
            self.key("circuit"), self.settings.cooldown_s, self.settings.lease_s, token
        )
        if not allowed:
            what = "circuit open" if change.state == "open" else "circuit half-open, probe running"
            raise CircuitOpenError(f"{what}: call not sent", retry_after=max(wait, 0.1))
        probe = change.state == "half_open"
        if change.transition:
            self._mirror(change, "half_open", None)
        try:
            self._wait_pause(deadline)
            self._take_slot(deadline, token)
            try:
                self._take_rate(deadline, token)
            except BaseException:
                self.store.slot_release(self.key("slots"), token)
                raise
        except BaseException:
            if probe:
                self.store.circuit_release_probe(self.key("circuit"), token)
            raise
        return Permit(slot_token=token, probe=probe)

    def release(self, permit: Permit) -> None:
        self.store.slot_release(self.key("slots"), permit.slot_token)

    def rate_share_used(self) -> float:
        """The share of the rate window's calls already admitted (0 to 1)."""
        limit = self.settings.rate_per_minute
        if limit <= 0:
            return 0.0
        used = self.store.rate_count(self.key("rate"), self.settings.rate_window_s)
        return min(1.0, used / limit)

    def _wait_pause(self, deadline: float) -> None:
        while True:
            left = self.store.pause_left(self.key("pause"))
            if left <= 0:
                return
            if time.monotonic() + left > deadline:
                raise LimitWaitExceeded(
                    "local limit wait exceeded: vendor asked to pause (Retry-After)",
                    retry_after=left,
                )
            time.sleep(left)

    def _take_slot(self, deadline: float, token: str) -> None:
        key, limit = self.key("slots"), self.settings.max_concurrency
        while not self.store.slot_take(key, limit, self.settings.lease_s, token):
            if time.monotonic() >= deadline:
                raise LimitWaitExceeded(
                    "local limit wait exceeded: all concurrency slots busy", retry_after=1.0
                )
            # 10-30 ms between polls: a call takes tens of ms at least, and jitter keeps
            # waiting workers from polling in lockstep.
            time.sleep(0.01 + random.random() * 0.02)  # noqa: S311 - jitter, not a secret

    def _take_rate(self, deadline: float, token: str) -> None:
        key = self.key("rate")
        while True:
            wait = self.store.rate_take(
                key, self.settings.rate_per_minute, self.settings.rate_window_s, token
            )
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise LimitWaitExceeded(
                    "local limit wait exceeded: rate limit reached", retry_after=wait
                )
            time.sleep(wait + random.random() * 0.005)  # noqa: S311 - jitter, not a secret

    # -- outcomes ------------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Every worker holds this connection's calls for ``seconds`` (a vendor Retry-After)."""
        if seconds > 0:
            self.store.pause_until(self.key("pause"), seconds)

    def record_success(self) -> None:
        change = self.store.circuit_success(self.key("circuit"))
        now = time.monotonic()
        if change.transition or change.failures_before:
            self._mirror(change, "success", None)
            self._last_success_mirror = now
        elif now - self._last_success_mirror > 10:
            # Pages show "last success" within 10 s without a database write on every call.
            self._mirror(change, "success", None)
            self._last_success_mirror = now

    def record_failure(self, error: str) -> None:
        change = self.store.circuit_failure(self.key("circuit"), self.settings.failure_threshold)
        self._mirror(change, "failure", error)

    def circuit(self) -> CircuitChange:
        return self.store.circuit_state(self.key("circuit"))

    def reset(self) -> None:
        """Forget all state of this connection (tests, or an admin closing the breaker)."""
        self.store.clear(self.prefix + ":")

    def _mirror(self, change: CircuitChange, event: str, error: str | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(change, event, error)
        except Exception:
            # Mirroring is for pages; a failed write must not fail the vendor call.
            logger.warning("could not mirror circuit state of connection %s", self.connection_id)
