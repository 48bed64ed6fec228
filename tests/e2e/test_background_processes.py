"""A real Celery worker and beat, started as processes, make /healthz report ok; killing the
worker makes it report degraded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from integrations.selectors.health import health_report

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = settings.DATABASES["default"]
    name = connection.settings_dict["NAME"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": _database_url(),  # the test database this test runs in
        "CONCORD_HEARTBEAT_INTERVAL_S": "1",
    }
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name, args in {
        "worker": [
            "worker",
            "--concurrency",
            "1",
            "--hostname",
            "e2e-worker@%h",
            "--loglevel",
            "INFO",
        ],
        "beat": ["beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
    }.items():
        started[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", *args],
            cwd=ROOT,
            env=env,
            stdout=open(tmp_path / f"{name}.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
    yield started
    for process in started.values():
        if process.poll() is None:
            process.terminate()
    for process in started.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


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
    processes: dict[str, subprocess.Popen[bytes]],
    settings,
) -> None:
    report = _wait_for(lambda r: r["status"] == "ok", timeout=60)
    assert report["checks"]["worker"]["alive"][0].startswith("e2e-worker@")

    processes["worker"].send_signal(signal.SIGKILL)
    processes["worker"].wait(timeout=10)
    # Beat ticks at least every 5 s (CELERY_BEAT_MAX_LOOP_INTERVAL); 8 s tolerates one late tick.
    settings.CONCORD_HEARTBEAT_MAX_AGE_S = 8
    report = _wait_for(lambda r: r["checks"]["worker"]["status"] == "down", timeout=20)
    assert report["status"] == "degraded"
    assert report["checks"]["beat"]["status"] == "ok"  # beat keeps ticking on its own


def _outbox_backends() -> dict[int, object]:
    """Backends of other processes on this test database whose last query read the outbox."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE %s",
            ["%integrations_outboxmessage%"],
        )
        return dict(cursor.fetchall())


def test_worker_keeps_its_database_connection_between_tasks(tmp_path: Path) -> None:
    """Opening a PostgreSQL connection per task would cost more than many tasks themselves;
    CONN_MAX_AGE keeps it, and Celery's Django fixup honours that between tasks."""
    from integrations.tasks import sweep_outbox

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": _database_url(),
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--concurrency",
            "1",
            "--hostname",
            "conn-worker@%h",
            "--queues",
            "celery",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "worker.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    try:
        sweep_outbox.delay()
        deadline = time.monotonic() + 60
        while not _outbox_backends():
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        first = _outbox_backends()
        for _ in range(5):
            sweep_outbox.delay()
            time.sleep(0.5)
        time.sleep(1)
        assert _outbox_backends() == first  # same backend pid, same start time: never reopened
    finally:
        worker.terminate()
        worker.wait(timeout=20)
