"""Approved time reaches the ERP exactly once, whatever the network, the workers and Redis do.

Real parts only: the vendor sandbox as a process (with injected faults), Celery worker and beat
processes, PostgreSQL, and Redis (a private instance where the test restarts it). Every time
entry's id is on exactly one Xero invoice line at the end; the sandbox's own counters confirm no
duplicate invoice was created.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.utils import timezone

from integrations.models import (
    OutboxMessage,
    TimeEntry,
)
from tests.firms import NEW_TENANT, approved_time_firm
from tests.processes import (
    Proc,
    beat_proc,
    free_port,
    process_env,
    redis_proc,
    running,
    sandbox_proc,
    wait_for_redis,
    wait_for_sandbox,
    wait_until,
    worker_proc,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAULTS = {
    "system": "xero",
    "error_rate": 0.2,
    "throttle_rate": 0.1,
    "drop_response_rate": 0.05,
    "latency_ms": 30,
    "latency_jitter_ms": 30,
    "seed": 11,
}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = sandbox_proc(port, tmp_path / "sandbox.log")
    with running(proc):
        url = f"http://127.0.0.1:{port}"
        wait_for_sandbox(url)
        yield url


def _firm(sandbox_url: str, *, projects: int, entries_per_project: int, **xero: Any) -> list[int]:
    """A UK entity billing GBP through the sandbox's new Xero tenant, with approved time."""
    # The sandbox runs unthrottled here; Concord's own limiter must not be the bottleneck.
    approved_time_firm(
        sandbox_url,
        projects=projects,
        entries_per_project=entries_per_project,
        rate_limit_per_minute=6000,
        **xero,
    )
    return list(TimeEntry.objects.order_by("pk").values_list("pk", flat=True))


def _control(url: str, path: str, body: dict | None = None) -> dict:
    response = httpx.post(f"{url}/_control/{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def _posted_lines(url: str) -> Counter[int]:
    """How many times each time entry id appears on a Xero invoice line."""
    counts: Counter[int] = Counter()
    offset = 0
    while True:
        page = httpx.get(
            f"{url}/_control/records/xero/Invoices",
            params={"tenant": NEW_TENANT, "limit": 500, "offset": offset},
            timeout=30,
        ).json()
        rows = page.get("records", page.get("rows", []))
        for row in rows:
            for line in row["data"].get("LineItems", []):
                description = line.get("Description", "")
                if description.startswith("TE-"):
                    counts[int(description.split()[0][3:])] += 1
        if len(rows) < 500:
            return counts
        offset += 500


def _xero_stats(url: str) -> dict:
    stats = httpx.get(f"{url}/_control/stats", params={"system": "xero"}, timeout=10).json()
    return stats["systems"]["xero"]


def _assert_exactly_once(url: str, entry_ids: list[int]) -> None:
    lines = _posted_lines(url)
    missing, unexpected = set(entry_ids) - set(lines), set(lines) - set(entry_ids)
    assert not missing, f"{len(missing)} entries never reached the ERP"
    assert not unexpected, f"{len(unexpected)} unknown entries on ERP lines"
    twice = [i for i, n in lines.items() if n > 1]
    assert not twice, f"{len(twice)} entries posted more than once, e.g. {twice[:5]}"
    invoices = _xero_stats(url)["Invoices"]
    assert invoices["duplicates_detected"] == 0
    assert invoices["created"] == OutboxMessage.objects.filter(operation="put_invoices").count()


def _outbox_done() -> bool:
    open_rows = OutboxMessage.objects.exclude(state__in=["done", "skipped"]).count()
    return OutboxMessage.objects.exists() and open_rows == 0


def _billing_run(env: dict[str, str], log: Path) -> None:
    proc = Proc([sys.executable, "manage.py", "billing_run"], env, log).start()
    assert proc.popen is not None
    assert proc.popen.wait(timeout=120) == 0, proc.output()


def _purge_queues(env: dict[str, str], log: Path) -> None:
    """Start from empty queues: messages other tests left in the shared Redis are not ours."""
    from django.conf import settings

    queues = ",".join(settings.CONCORD_WORKER_QUEUES)
    proc = Proc(
        [sys.executable, "-m", "celery", "-A", "config", "purge", "-f", "-Q", queues], env, log
    ).start()
    assert proc.popen is not None
    assert proc.popen.wait(timeout=60) == 0, proc.output()


def test_5000_entries_reach_the_erp_exactly_once_through_faults(
    sandbox: str, tmp_path: Path
) -> None:
    entry_ids = _firm(sandbox, projects=250, entries_per_project=20)
    assert len(entry_ids) == 5000
    _control(sandbox, "limits", {"system": "xero", "enabled": False})
    _control(sandbox, "faults", FAULTS)
    # One line per invoice: 5,000 invoices in 100 batch calls, so that the 5% of dropped
    # responses surely hits some of them (grouping has its own tests).
    # A 5 s backoff cap keeps the retry tail of a 35%-failure network short; it changes when
    # rows are retried, not whether.
    env = process_env(
        CONCORD_OUTBOX_LEASE_S="20",
        CONCORD_MAX_LINES_PER_INVOICE="1",
        CONCORD_OUTBOX_BACKOFF_CAP_S="5",
    )
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    _purge_queues(env, tmp_path / "purge.log")
    with running(worker, beat):
        _billing_run(env, tmp_path / "billing.log")
        try:
            wait_until(_outbox_done, timeout=240, what="every invoice delivered", interval=1)
        except AssertionError:
            states = Counter(OutboxMessage.objects.values_list("state", flat=True))
            pytest.fail(f"outbox not drained: {dict(states)}\n{worker.output()}")
    assert not OutboxMessage.objects.filter(state="parked").exists()
    _assert_exactly_once(sandbox, entry_ids)
    stats = _xero_stats(sandbox)["Invoices"]
    # The faults really happened: otherwise this test would prove nothing.
    assert stats["refused"]["by_status"].get("500", 0) > 0
    assert stats["throttled"] > 0
    assert stats["dropped_responses"] > 0


def _held_by(worker: str, since: datetime | None = None) -> set[int]:
    """Rows in flight whose claim (or lease renewal) the given worker made since `since`."""
    rows = OutboxMessage.objects.filter(state="in_flight", claimed_by__startswith=f"{worker}@")
    if since is not None:
        rows = rows.filter(claimed_at__gte=since)
    return set(rows.values_list("pk", flat=True))


def test_killed_worker_and_restarted_redis_lose_nothing(sandbox: str, tmp_path: Path) -> None:
    # One call at a time: the 250 invoices go in five calls in turn (with five at once they
    # all went in the first round, before the kill could land mid-run).
    entry_ids = _firm(sandbox, projects=250, entries_per_project=20, max_concurrency=1)
    _control(sandbox, "limits", {"system": "xero", "enabled": False})
    # Slow calls, so the kill lands while batches are in flight.
    _control(
        sandbox,
        "faults",
        {
            "system": "xero",
            "latency_ms": 400,
            "error_rate": 0.1,
            "drop_response_rate": 0.05,
            "seed": 3,
        },
    )
    redis_port = free_port()
    redis = redis_proc(redis_port, tmp_path / "redis", tmp_path / "redis.log")
    env = process_env(
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        CONCORD_OUTBOX_LEASE_S="15",
        CONCORD_OUTBOX_BACKOFF_CAP_S="5",
    )
    first = worker_proc(env, tmp_path / "worker1.log", name="first", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    redis.start()
    try:
        wait_for_redis(redis_port)
        with running(beat):
            first.start()
            _billing_run(env, tmp_path / "billing.log")
            total = OutboxMessage.objects.count()
            wait_until(
                lambda: OutboxMessage.objects.filter(state="done").count() >= total // 5,
                timeout=120,
                what="a fifth of the invoices delivered",
                interval=0.5,
            )
            # Calls sent from now on take 5 s at Xero: a row the first worker claims (or renews
            # the lease of) from now on is mid-call for 5 s, and the kill lands inside that.
            _control(sandbox, "faults", {"system": "xero", "latency_ms": 5000})
            slowed = timezone.now()
            wait_until(
                lambda: _held_by("first", since=slowed),
                timeout=60,
                what="the first worker sending a slowed call",
                interval=0.1,
            )
            first.kill()  # SIGKILL, mid-call: its rows stay in flight with nobody holding them
            orphaned = _held_by("first")
            assert orphaned, "the SIGKILL should land while the first worker holds rows in flight"
            _control(sandbox, "faults", {"system": "xero", "latency_ms": 400})
            redis.stop()
            redis.start()
            wait_for_redis(redis_port)
            done_at_restart = OutboxMessage.objects.filter(state="done").count()
            assert done_at_restart < total
            second = worker_proc(env, tmp_path / "worker2.log", name="second", concurrency=2)
            with running(second):
                # The sweeper rings every 5 s for the pending rows: work resumes within 30 s,
                # while the killed worker's rows wait out their 15 s lease.
                wait_until(
                    lambda: OutboxMessage.objects.filter(state="done").count() > done_at_restart,
                    timeout=30,
                    what="work resuming within 30 s of the kill and the Redis restart",
                )
                wait_until(_outbox_done, timeout=240, what="every invoice delivered", interval=1)
    finally:
        redis.stop()
    # The rows the killed worker held came back when their lease ran out, and the second worker
    # delivered them (looking each up first: the killed worker's call may have reached Xero).
    recovered = OutboxMessage.objects.filter(pk__in=orphaned)
    assert {m.state for m in recovered} == {"done"}
    assert all(m.claimed_by.startswith("second@") and m.attempts >= 2 for m in recovered)
    _assert_exactly_once(sandbox, entry_ids)
