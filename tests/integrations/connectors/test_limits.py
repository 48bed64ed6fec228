"""Shared limits: the sliding window across processes, the concurrency cap and its leases, the
circuit breaker and its mirror in ConnectionHealth, and Xero's rate used to the full."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, cast

import pytest
import redis
from django.conf import settings

from integrations.connectors.connection_limits import limits_for
from integrations.connectors.errors import CircuitOpenError, LimitWaitExceeded, TransientError
from integrations.connectors.limits import (
    CircuitChange,
    Limits,
    LimitSettings,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    get_store,
)
from integrations.models import Connection, ConnectionHealth
from integrations.vendors import connector_for
from tests.integrations.conftest import REPO, Sandbox

# One worker process: takes permits for `duration` seconds from `start_at` (epoch) and prints
# the admission time of each (read back from the rate log itself, to the millisecond).
WORKER = """
import json, sys, threading, time
from integrations.connectors.limits import LimitSettings, Limits, get_store
url, prefix, limit, window, start_at, duration, threads = sys.argv[1:8]
store = get_store(url)
limits = Limits(1, LimitSettings(int(limit), 100, window_s=float(window), window_margin_s=0),
                store=store, prefix=prefix)
times = []
def run():
    time.sleep(max(0, float(start_at) - time.time()))
    end = float(start_at) + float(duration)
    while time.time() < end:
        try:
            permit = limits.acquire(timeout=max(0.01, end - time.time()))
        except Exception:
            break
        score = store.client.zscore(limits.key("rate"), permit.slot_token)
        times.append(score / 1000)
        limits.release(permit)
workers = [threading.Thread(target=run) for _ in range(int(threads))]
[w.start() for w in workers]
[w.join() for w in workers]
print(json.dumps(times))
"""

HOLDER = """
import sys, time
from integrations.connectors.limits import LimitSettings, Limits, get_store
url, prefix, lease = sys.argv[1:4]
limits = Limits(1, LimitSettings(100, 1, lease_s=float(lease)), store=get_store(url), prefix=prefix)
limits.acquire(timeout=2)
print("held", flush=True)
time.sleep(60)
"""


def python(script: str, *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> LimitStore:
    return get_store() if request.param == "redis" else MemoryLimitStore()


def test_sliding_window_admits_exactly_n_per_window_across_processes(isolated_state: str) -> None:
    limit, window, duration = 8, 1.0, 2.5
    start_at = time.time() + 1.5  # the processes start within that
    procs = [
        python(WORKER, settings.REDIS_URL, isolated_state, limit, window, start_at, duration, 3)
        for _ in range(2)
    ]
    admitted = sorted(t for p in procs for t in json.loads(p.communicate(timeout=20)[0]))

    busiest = max(sum(1 for t in admitted if s <= t < s + window) for s in admitted)
    assert busiest == limit
    # 2.5 s from a cold start holds three windows' worth: full use, nothing over.
    assert len(admitted) == limit * 3


def test_the_share_of_the_rate_window_spent_counts_admissions_only(store: LimitStore) -> None:
    limits = Limits(7, LimitSettings(10, 5), store=store, prefix=f"t{uuid.uuid4().hex}")
    assert limits.rate_share_used() == 0.0
    for _ in range(4):
        limits.release(limits.acquire(timeout=1))
    assert limits.rate_share_used() == pytest.approx(0.4)


def test_concurrency_cap_holds_across_threads(store: LimitStore) -> None:
    limits = Limits(7, LimitSettings(10_000, 3), store=store, prefix=f"t{uuid.uuid4().hex}")
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def work() -> None:
        for _ in range(5):
            permit = limits.acquire(timeout=10)
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.02)
            with lock:
                in_flight[0] -= 1
            limits.release(permit)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 3


def test_a_killed_holder_s_slot_comes_back_when_its_lease_expires(isolated_state: str) -> None:
    holder = python(HOLDER, settings.REDIS_URL, isolated_state, 1.0)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    held_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    limits = Limits(1, LimitSettings(100, 1, lease_s=1.0), prefix=isolated_state)
    # The dead holder's slot, and when its lease ends (ms of Redis' clock): one lease from now
    # at most, so the slot comes back when the 1 s lease ends, not at some later clean-up.
    store = limits.store
    assert isinstance(store, RedisLimitStore)
    slots = cast(
        list[tuple[bytes, float]], store.client.zrange(limits.key("slots"), 0, -1, withscores=True)
    )
    ((_token, lease_end_ms),) = slots
    assert 0 < lease_end_ms / 1000 - store.now() <= 1.0

    with pytest.raises(LimitWaitExceeded, match="concurrency slots busy"):
        limits.acquire(timeout=0.1)
    permit = limits.acquire(timeout=3)

    assert store.now() >= lease_end_ms / 1000  # not before the lease ended
    assert time.monotonic() - held_at > 0.5
    limits.release(permit)


def test_circuit_opens_rejects_half_opens_one_probe_and_closes(store: LimitStore) -> None:
    changes: list[tuple[str, str | None]] = []

    def sink(change: CircuitChange, event: str, error: str | None) -> None:
        changes.append((change.state, change.transition))

    limits = Limits(
        3,
        LimitSettings(10_000, 10, failure_threshold=3, cooldown_s=0.3),
        store=store,
        on_change=sink,
        prefix=f"t{uuid.uuid4().hex}",
    )
    for _ in range(2):
        limits.release(limits.acquire(timeout=1))
        limits.record_failure("500")
    assert limits.circuit().state == "closed"
    limits.record_failure("500")
    assert limits.circuit().state == "open"
    with pytest.raises(CircuitOpenError, match="circuit open") as refused:
        limits.acquire(timeout=1)
    assert 0 < (refused.value.retry_after or 0) <= 0.3

    time.sleep(0.35)
    probe = limits.acquire(timeout=1)
    assert probe.probe
    with pytest.raises(CircuitOpenError, match="probe running"):
        limits.acquire(timeout=1)  # only ONE probe while half-open
    limits.release(probe)
    limits.record_failure("500 again")
    assert limits.circuit().state == "open"  # the probe failed: open again

    time.sleep(0.35)
    limits.release(limits.acquire(timeout=1))
    limits.record_success()
    assert limits.circuit().state == "closed"
    assert limits.circuit().failures == 0
    transitions = [t for _, t in changes if t]
    assert transitions == ["open", "half_open", "open", "half_open", "closed"]


def test_circuit_through_the_connector_is_mirrored_in_connection_health(
    sandbox: Sandbox, xero_connection: Connection, db: None
) -> None:
    limits = limits_for(xero_connection, failure_threshold=3, cooldown_s=0.5)
    connector = connector_for(xero_connection, limits=limits)
    list(connector.read_changed("Currencies", None))
    sandbox.faults("xero", error_rate=1.0)

    for _ in range(3):
        with pytest.raises(TransientError, match="vendor error 500"):
            list(connector.read_changed("Currencies", None))
    health = ConnectionHealth.objects.get(connection=xero_connection)
    assert health.circuit_state == "open"
    assert health.consecutive_failures == 3
    assert health.opened_at is not None
    assert health.last_failure_at is not None
    assert "vendor error 500" in health.last_error
    sent = sandbox.stats("xero", "Currencies")["requests"]

    with pytest.raises(CircuitOpenError):
        list(connector.read_changed("Currencies", None))
    assert sandbox.stats("xero", "Currencies")["requests"] == sent  # rejected without calling

    sandbox.faults("xero", error_rate=0.0)
    time.sleep(0.55)
    assert list(connector.read_changed("Currencies", None))  # the probe
    health.refresh_from_db()
    assert health.circuit_state == "closed"
    assert health.consecutive_failures == 0
    assert health.opened_at is None
    assert health.last_success_at is not None
    assert health.last_success_at > health.last_failure_at


class WatchedStore(RedisLimitStore):
    """The Redis store, noting each admission (ms of Redis' clock, from the rate log) and, for
    each refusal, how many admissions the window held at that moment."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.admitted_ms: list[int] = []
        self.held_at_refusal: list[int] = []

    def rate_take(self, key: str, limit: int, window_s: float, member: str) -> float:
        wait = super().rate_take(key, limit, window_s, member)
        if wait > 0:
            # Only rate_take prunes the log, and this test is its only caller: the log now holds
            # exactly what the refusing script counted.
            self.held_at_refusal.append(int(self.client.zcard(key)))
        else:
            score = self.client.zscore(key, member)
            assert score is not None
            self.admitted_ms.append(int(score))
        return wait


def test_xero_rate_is_used_to_the_full_without_a_429(
    sandbox: Sandbox, make_connection: Any
) -> None:
    # Xero's 60 per minute, scaled to 10 per 2 s so the test takes seconds, not minutes.
    quota, calls = 10, 21  # two full windows and one call more
    sandbox.limits("xero", windows={"minute": {"limit": quota, "seconds": 2}})
    connection = make_connection("xero", rate_limit_per_minute=quota)
    store = WatchedStore(redis.Redis.from_url(settings.REDIS_URL))
    limits = limits_for(connection, window_s=2.0, window_margin_s=0.1, store=store)
    connector = connector_for(connection, limits=limits)
    for _ in range(calls):
        assert list(connector.read_changed("Currencies", None))

    # Every call was admitted once and reached Xero, and Xero refused none of them.
    stats = sandbox.stats("xero", "Currencies")
    assert stats["throttled"] == 0
    assert len(store.admitted_ms) == calls
    assert stats["requests"] == calls
    # Spaced per the limit: never more than the quota in any window of the limiter (2.1 s),
    # so the last call came no sooner than two windows after the first.
    window_ms = round(limits.settings.rate_window_s * 1000)
    admitted = store.admitted_ms
    assert all(b - a >= window_ms for a, b in zip(admitted, admitted[quota:], strict=False))
    assert admitted[-1] - admitted[0] >= 2 * window_ms
    # Used to the full: the limiter held a call back only when the window held the whole quota
    # (how much of the quota a real minute gets is the benchmark figure xero_rate_utilisation).
    assert store.held_at_refusal, "the limiter never held a call back"
    assert set(store.held_at_refusal) == {quota}


def test_without_redis_limits_live_in_the_process(
    settings: Any, xero_connection: Connection
) -> None:
    settings.REDIS_URL = ""
    limits = limits_for(xero_connection)
    assert isinstance(limits.store, MemoryLimitStore)
    assert limits.store is limits_for(xero_connection).store  # one store per process
    permit = limits.acquire(timeout=1)
    limits.release(permit)
