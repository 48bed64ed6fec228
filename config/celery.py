"""The Celery app. Settings come from Django settings under the CELERY_ prefix."""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("concord")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Celery's Django fixup closes the database connection before and after every task unless told
# to reuse it; opening a PostgreSQL connection costs more than many of our tasks do. Reuse it, and
# let Django's own rules decide when to close (CONN_MAX_AGE, health checks, errors), as for web
# requests: see close_stale_connections below.
app.conf["CELERY_DB_REUSE_MAX"] = 1_000_000_000


def _ensure_filesystem_broker_folders() -> None:
    """kombu's filesystem transport needs its folders to exist before anyone connects."""
    from pathlib import Path

    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "control_folder"):
            Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key])).mkdir(
                parents=True, exist_ok=True
            )


_ensure_filesystem_broker_folders()

# Periodic work, defined here and stored by django-celery-beat. Every entry expires within its
# own period, so a worker that lags behind runs the latest tick instead of a pile of old ones.
app.conf.beat_schedule = {
    "sweep-outbox": {
        "task": "integrations.sweep_outbox",
        # 5 s: a lost dispatch message or a killed worker delays work by seconds, not minutes.
        "schedule": 5.0,
        "options": {"expires": 5},
    },
    "sweep-inbound": {
        "task": "integrations.sweep_inbound",
        # Messages are rung on commit; this only catches rings the broker lost.
        "schedule": 30.0,
        "options": {"expires": 30},
    },
    "poll-all": {
        "task": "integrations.poll_all",
        # Matches integrations.sync.polling.POLL_INTERVAL_S; webhooks carry the urgent changes.
        "schedule": 120.0,
        "options": {"expires": 120},
    },
    "check-stale-polls": {
        "task": "integrations.check_stale_polls",
        # A poll runs every 120 s and is stale after 3 of them: checking every minute opens the
        # case within a minute of the SLA passing, at one indexed query per check.
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    "check-expected-work": {
        "task": "integrations.check_expected_work",
        # Approved time late for the ERP, runs stuck at a step, polls beat has not sent: each
        # check is one query, and its threshold is minutes to days, so every 5 minutes is soon.
        "schedule": 300.0,
        "options": {"expires": 300},
    },
    "billing-run": {
        "task": "integrations.billing_run",
        # Approved time becomes draft invoices within a minute; a run takes seconds.
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    "compact-case-tally": {
        "task": "exceptions.compact_case_tally",
        # The queue totals sum the tally and the deltas not yet folded: every 10 s keeps those
        # few, and costs one statement when nothing changed.
        "schedule": 10.0,
        "options": {"expires": 10},
    },
    "case-digests": {
        "task": "exceptions.send_case_digests",
        # Every 5 minutes: an SLA breach or a big new case reaches its queue within minutes, in
        # at most 12 messages an hour per queue, however many cases fail.
        "schedule": 300.0,
        "options": {"expires": 300},
    },
}

logger = logging.getLogger(__name__)


@task_prerun.connect
@task_postrun.connect
def close_stale_connections(**kwargs: object) -> None:
    """Drop connections that are broken or older than CONN_MAX_AGE; keep the rest."""
    from django.db import close_old_connections

    close_old_connections()


@worker_ready.connect
def start_worker_heartbeat(sender: object = None, **kwargs: object) -> None:
    """Record a worker heartbeat from a daemon thread in the worker's main process.

    A thread rather than a periodic task: a task goes through beat, and the worker would then read
    as down whenever beat is down. Celery's remote-control ping does not exist on the filesystem
    transport, so the heartbeat goes to the database, which every deployment has.
    """
    from django.conf import settings
    from django.db import close_old_connections

    from integrations.services.health import heartbeat_record

    hostname = str(getattr(sender, "hostname", None) or socket.gethostname())
    interval = settings.CONCORD_HEARTBEAT_INTERVAL_S

    def beat_forever() -> None:
        stop = threading.Event()
        while True:
            try:
                close_old_connections()
                heartbeat_record(component="worker", hostname=hostname)
            except Exception:
                # A missed beat is exactly what /healthz reports; keep trying.
                logger.exception("worker heartbeat failed")
            stop.wait(interval)

    threading.Thread(target=beat_forever, name="concord-heartbeat", daemon=True).start()
