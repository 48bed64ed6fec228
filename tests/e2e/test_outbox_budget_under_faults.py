"""A fault run at 20% 5xx and 10% 429 parks nothing for lack of attempts, and still delivers
exactly once (real sandbox, worker and beat processes, PostgreSQL, Redis).

The budget is cut to 2 attempts here (CONCORD_OUTBOX_MIN_ATTEMPTS) with a 10-minute window: a
count alone would park every row whose first two calls failed (about one row in eleven at a 30%
failure rate). The window keeps them going, so the test also checks that some rows did need
more than 2 attempts: without that it would prove nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from integrations.models import OutboxMessage
from tests.e2e.test_time_to_erp_exactly_once import (
    _assert_exactly_once,
    _billing_run,
    _control,
    _firm,
    _outbox_done,
    _purge_queues,
    _xero_stats,
    sandbox,  # noqa: F401 - the fixture
)
from tests.processes import beat_proc, process_env, running, wait_until, worker_proc

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAULTS = {
    "system": "xero",
    "error_rate": 0.2,
    "throttle_rate": 0.1,
    "latency_ms": 20,
    "latency_jitter_ms": 20,
    "seed": 23,
}
MIN_ATTEMPTS = 2


def test_faults_park_nothing_for_lack_of_attempts_and_deliver_exactly_once(
    sandbox: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # 5,000 invoices of one line: 100 batch calls, so that rows whose first calls fail are
    # certain (at 30% per call, about 30 batches fail once and 9 twice).
    entry_ids = _firm(sandbox, projects=250, entries_per_project=20)
    _control(sandbox, "limits", {"system": "xero", "enabled": False})
    _control(sandbox, "faults", FAULTS)
    env = process_env(
        CONCORD_OUTBOX_LEASE_S="20",
        CONCORD_MAX_LINES_PER_INVOICE="1",
        CONCORD_OUTBOX_BACKOFF_CAP_S="5",
        CONCORD_OUTBOX_MIN_ATTEMPTS=str(MIN_ATTEMPTS),
        CONCORD_OUTBOX_RETRY_WINDOW_S="600",
    )
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    _purge_queues(env, tmp_path / "purge.log")
    with running(worker, beat):
        _billing_run(env, tmp_path / "billing.log")
        try:
            wait_until(_outbox_done, timeout=300, what="every invoice delivered", interval=1)
        except AssertionError:
            states = Counter(OutboxMessage.objects.values_list("state", flat=True))
            pytest.fail(f"outbox not drained: {dict(states)}\n{worker.output()}")

    assert not OutboxMessage.objects.filter(state="parked").exists()
    attempts = Counter(OutboxMessage.objects.values_list("attempts", flat=True))
    assert max(attempts) > MIN_ATTEMPTS, f"no row needed the window: {dict(attempts)}"
    _assert_exactly_once(sandbox, entry_ids)
    stats = _xero_stats(sandbox)["Invoices"]
    # The faults really happened.
    assert stats["refused"]["by_status"].get("500", 0) > 0
    assert stats["throttled"] > 0
