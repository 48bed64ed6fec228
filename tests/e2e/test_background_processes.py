"""A real Celery worker and beat, started as processes, make /healthz report ok; killing the
worker makes it report degraded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from django.db import connection

from dashboards.health import health_report
from tests.processes import Proc, beat_proc, process_env, running, wait_until, worker_proc

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[dict[str, Proc]]:
    env = process_env(CONCORD_HEARTBEAT_INTERVAL_S="1")
    started = {
        "worker": worker_proc(env, tmp_path / "worker.log", name="e2e-worker", concurrency=1),
        "beat": beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule"),
    }
    with running(*started.values()):
        yield started


def _wait_for(predicate, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    report: dict = {}
    while time.monotonic() < deadline:
        report = health_report()
        if predicate(report):
            return report
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout} s; last report: {report}")


def test_worker_and_beat_heartbeats_drive_health(
    processes: dict[str, Proc],
    settings,
) -> None:
    report = _wait_for(lambda r: r["status"] == "ok", timeout=60)
    assert report["checks"]["worker"]["alive"][0].startswith("e2e-worker@")

    processes["worker"].kill()  # SIGKILL, its pool child included
    # Beat ticks at least every 5 s (CELERY_BEAT_MAX_LOOP_INTERVAL); 8 s tolerates one late tick.
    settings.CONCORD_HEARTBEAT_MAX_AGE_S = 8
    report = _wait_for(lambda r: r["checks"]["worker"]["status"] == "down", timeout=20)
    assert report["status"] == "degraded"
    assert report["checks"]["beat"]["status"] == "ok"  # beat keeps ticking on its own


def _outbox_backends() -> dict[int, tuple[datetime, datetime]]:
    """Backends of other processes on this test database whose last query read the outbox:
    pid -> (backend_start, query_start)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start, query_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE %s",
            ["%integrations_outboxmessage%"],
        )
        return {pid: (backend_start, query_start) for pid, backend_start, query_start in cursor}


def _database_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (now,) = cursor.fetchone()
        return now


def _succeeded(log: Path, task_id: str) -> bool:
    """The worker logged the task with this id as succeeded (Celery's own line, at INFO)."""
    return f"[{task_id}] succeeded in" in log.read_text(errors="replace")


def test_worker_keeps_its_database_connection_between_tasks(tmp_path: Path) -> None:
    """Opening a PostgreSQL connection per task would cost more than many tasks themselves;
    CONN_MAX_AGE keeps it, and Celery's Django fixup honours that between tasks."""
    from integrations.tasks import sweep_outbox

    log = tmp_path / "worker.log"
    worker = worker_proc(process_env(), log, name="conn-worker", concurrency=1)
    with running(worker):
        first_task = sweep_outbox.delay().id
        wait_until(lambda: _succeeded(log, first_task), 60, f"the first sweep\n{worker.output()}")
        first = _outbox_backends()
        assert len(first) == 1, first  # the pool's one process, its connection open after a task
        ((pid, (backend_start, _)),) = first.items()
        for _ in range(5):
            sent_at = _database_now()
            task = sweep_outbox.delay().id
            wait_until(lambda t=task: _succeeded(log, t), 30, f"sweep {task}\n{worker.output()}")
        # Each task ran (the worker logged it succeeded), and the last one's queries went
        # through the same backend, opened before the first task: never reopened.
        after = _outbox_backends()
        assert list(after) == [pid], after
        assert after[pid][0] == backend_start
        assert after[pid][1] >= sent_at
