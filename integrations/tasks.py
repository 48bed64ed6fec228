"""Celery tasks: ids in, call one service, out. Names are a contract with queued messages and
beat rows; do not rename them."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from celery import shared_task
from django.core.cache import cache

from integrations.flags import flag_clear, flag_set
from integrations.models import Connection
from integrations.sync.dispatch import outbox_dispatch
from integrations.sync.inbound import inbound_process_batch, inbound_sweep
from integrations.sync.outbox import outbox_sweep

logger = logging.getLogger(__name__)

# While a dispatch task for a connection waits in the queue, more rings for it add nothing: the
# queued task will see every row committed before it starts. The flag is cleared when the task
# starts; its expiry only matters if the task message is lost, and the sweeper rings regardless.
RING_FLAG_TTL_S = 30
# Polling complements webhooks (which may be lost or not offered): every 2 minutes, each
# connection's changes since its cursor.
POLL_INTERVAL_S = 120


# A message redelivered after its worker died (acks_late + reject_on_worker_lost) runs again; a
# message that kills its worker every time must not do so forever. After this many deliveries
# it is dropped with an error in the log: the work it stood for is in the database, and the
# sweepers ring for it again.
MAX_DELIVERIES = 5


def too_many_deliveries(task: Any) -> bool:
    """Count this delivery of the task's message; True once it exceeds MAX_DELIVERIES."""
    key = f"celery:deliveries:{task.request.id}"
    try:
        if cache.add(key, 1, timeout=3600):
            return False
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        return False
    if count > MAX_DELIVERIES:
        logger.error("task %s %s delivered %d times: dropped", task.name, task.request.id, count)
        return True
    return False


def outbox_queue(vendor: str) -> str:
    """One queue per target system, so a slow vendor never delays the others."""
    return f"outbox.{vendor}"


def dispatch_outbox_later(connection_id: int, *, force: bool = False) -> None:
    flag = f"outbox:queued:{connection_id}"
    if not force and not flag_set(flag, RING_FLAG_TTL_S):
        return
    # A ring older than the sweep cycle is redundant: the sweeper has rung again since.
    _send_dispatch(connection_id, expires=60)


def _send_dispatch(connection_id: int, **options: Any) -> None:
    """Queue a dispatch task on the connection's vendor queue (nothing for a gone connection)."""
    vendor = Connection.objects.filter(pk=connection_id).values_list("vendor", flat=True).first()
    if vendor is not None:
        dispatch_outbox.apply_async(args=(connection_id,), queue=outbox_queue(vendor), **options)


@shared_task(name="integrations.dispatch_outbox", bind=True)
def dispatch_outbox(self: Any, connection_id: int) -> dict[str, Any]:
    flag_clear(f"outbox:queued:{connection_id}")
    if too_many_deliveries(self):
        return {}
    report = outbox_dispatch(connection_id=connection_id, worker=str(self.request.hostname))
    if report.more:
        dispatch_outbox_later(connection_id, force=True)
    else:
        _ring_when_next_due(connection_id)
    return asdict(report)


# Rows waiting for their backoff or for the rate limit are rung for when they fall due, rather
# than at the sweeper's next 5-second tick; a minute-long limit window then loses no capacity.
# Beyond this horizon the sweeper rings (and no countdown nears the broker's visibility timeout).
NEXT_DUE_HORIZON_S = 120


def _ring_when_next_due(connection_id: int) -> None:
    from django.db.models import Min
    from django.utils import timezone

    from integrations.models import OutboxMessage

    due = OutboxMessage.objects.filter(
        connection_id=connection_id, state=OutboxMessage.State.PENDING
    ).aggregate(at=Min("next_attempt_at"))["at"]
    if due is None:
        return
    delay = max(0.0, (due - timezone.now()).total_seconds())
    if delay > NEXT_DUE_HORIZON_S:
        return
    # One scheduled ring per connection at a time.
    if not flag_set(f"outbox:scheduled:{connection_id}", int(delay) + 1):
        return
    _send_dispatch(connection_id, countdown=delay, expires=delay + 60)


@shared_task(name="integrations.sweep_outbox")
def sweep_outbox() -> dict[str, Any]:
    return outbox_sweep()


@shared_task(name="integrations.process_inbound_batch", bind=True)
def process_inbound_batch(self: Any, connection_id: int) -> dict[str, int]:
    flag_clear(f"inbound:queued:{connection_id}")
    if too_many_deliveries(self):
        return {}
    return inbound_process_batch(connection_id=connection_id)


@shared_task(name="integrations.sweep_inbound")
def sweep_inbound() -> int:
    return inbound_sweep()


@shared_task(name="integrations.billing_run")
def billing_run_task() -> dict[str, Any]:
    from integrations.workflows.time_to_erp import billing_run

    report = billing_run()
    return {
        "considered": report.considered,
        "billed": report.billed,
        "invoices": report.invoices,
        "blocked": report.blocked,
    }


@shared_task(name="integrations.poll_all")
def poll_all() -> int:
    """Kick-off: one polling task per enabled connection, each expiring before the next kick."""
    ids = list(Connection.objects.filter(enabled=True).values_list("pk", flat=True))
    for connection_id in ids:
        poll_connection_task.apply_async(args=(connection_id,), expires=POLL_INTERVAL_S)
    return len(ids)


@shared_task(name="integrations.poll_connection", bind=True)
def poll_connection_task(self: Any, connection_id: int) -> dict[str, Any]:
    from integrations.sync.polling import poll_connection

    if too_many_deliveries(self):
        return {}
    reports = poll_connection(connection_id=connection_id)
    return {object_type: asdict(report) for object_type, report in reports.items()}
