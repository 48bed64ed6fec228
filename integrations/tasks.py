"""Celery tasks: ids in, one service call, out (the web layer's door for workers).

Names are a contract with queued messages and beat rows; do not rename them. The sync layer
rings these by name through integrations/sync/ring.py, which also clears a task's debounce flag
(`ring_answered`) as the task starts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

from exceptions.alerts import case_digests_send
from exceptions.services import case_tally_compact
from integrations.services.schedules import RECONCILE_CONNECTION_TASK
from integrations.sync import ring
from integrations.sync.dispatch import outbox_dispatch_alone
from integrations.sync.inbound import inbound_process_batch, inbound_sweep
from integrations.sync.outbox import outbox_sweep
from integrations.sync.poll_schedules import polling_kick_off_unscheduled
from integrations.sync.polling import poll_connection, poll_stale_check
from integrations.sync.steps import run_after_poll
from integrations.workflows.checks import expected_work_check
from integrations.workflows.milestones import milestone_billing_sweep
from integrations.workflows.reconciliation import reconcile_connection
from integrations.workflows.time_to_erp import billing_arrived, billing_run

logger = logging.getLogger(__name__)

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


@shared_task(name=ring.DISPATCH_OUTBOX, bind=True)
def dispatch_outbox(self: Any, connection_id: int) -> dict[str, Any]:
    ring.ring_answered(ring.DISPATCH_OUTBOX, connection_id)
    if too_many_deliveries(self):
        return {}
    report = outbox_dispatch_alone(connection_id=connection_id, worker=str(self.request.hostname))
    if report is None:
        return {"skipped": "another task dispatches this connection now"}
    return asdict(report)


@shared_task(name="integrations.sweep_outbox")
def sweep_outbox() -> dict[str, Any]:
    return outbox_sweep()


@shared_task(name=ring.PROCESS_INBOUND_BATCH, bind=True)
def process_inbound_batch(self: Any, connection_id: int) -> dict[str, int]:
    ring.ring_answered(ring.PROCESS_INBOUND_BATCH, connection_id)
    if too_many_deliveries(self):
        return {}
    return inbound_process_batch(connection_id=connection_id)


@shared_task(name="integrations.sweep_inbound")
def sweep_inbound() -> int:
    return inbound_sweep()


@shared_task(name="integrations.billing_run")
def billing_run_task() -> dict[str, Any]:
    report = billing_run()
    return {
        "considered": report.considered,
        "billed": report.billed,
        "invoices": report.invoices,
        "blocked": report.blocked,
    }


@shared_task(name=ring.BILLING_ARRIVED, bind=True)
def billing_arrived_task(self: Any, complete: bool) -> dict[str, Any]:
    """Time billed as it arrives: rung by each committed page of a poll's time entries (whole
    chunks) and by the PSA's poll once it is done (the rest)."""
    ring.ring_answered(ring.BILLING_ARRIVED, "rest" if complete else "chunks")
    if too_many_deliveries(self):
        return {}
    report = billing_arrived(complete=complete)
    if report is None:
        return {"skipped": "another run bills what has arrived now"}
    return {"considered": report.considered, "billed": report.billed, "invoices": report.invoices}


@shared_task(name="integrations.poll_all")
def poll_all() -> int:
    """Kick-off: one polling task per enabled connection without a polling schedule of its own
    (each connection normally has one: integrations/services/schedules.py)."""
    return polling_kick_off_unscheduled()


@shared_task(name=ring.POLL_CONNECTION, bind=True)
def poll_connection_task(self: Any, connection_id: int) -> dict[str, Any]:
    ring.ring_answered(ring.POLL_CONNECTION, connection_id)
    if too_many_deliveries(self):
        return {}
    started = timezone.now()
    reports = poll_connection(connection_id=connection_id)
    # Polled records reach no workflow by themselves: the workflows' after-poll hooks look at
    # what this poll stored (integrations/sync/steps.py; back-sync and milestone billing).
    run_after_poll(connection_id=connection_id, since=started)
    return {object_type: asdict(report) for object_type, report in reports.items()}


@shared_task(name=ring.MILESTONE_SWEEP, bind=True)
def milestone_sweep_task(self: Any) -> int:
    ring.ring_answered(ring.MILESTONE_SWEEP, 0)
    if too_many_deliveries(self):
        return 0
    return milestone_billing_sweep()


@shared_task(name=RECONCILE_CONNECTION_TASK, bind=True)
def reconcile_connection_task(self: Any, connection_id: int) -> dict[str, Any]:
    """One ERP connection's reconciliation (its ``reconcile connection <id>`` beat row)."""
    if too_many_deliveries(self):
        return {}
    run = reconcile_connection(connection_id=connection_id)
    if run is None:  # not an ERP connection (any more), or a run of it is under way
        return {}
    return {
        "run": run.pk,
        "state": run.state,
        "gaps": run.gap_count,
        "records_cleared": run.records_cleared,
        "cases_resolved": run.cases_resolved,
        "duration_ms": run.duration_ms,
    }


@shared_task(name="integrations.check_stale_polls")
def check_stale_polls() -> dict[str, int]:
    """Open a case for each connection whose polls have not succeeded within their SLA."""
    return poll_stale_check()


@shared_task(name="integrations.check_expected_work")
def check_expected_work() -> dict[str, dict[str, int]]:
    """Cases for expected work that did not happen (integrations/workflows/checks.py)."""
    return expected_work_check()


@shared_task(name="exceptions.compact_case_tally")
def compact_case_tally() -> int:
    """Fold the open cases' tally deltas into the tally the queue pages' totals read."""
    return case_tally_compact()


@shared_task(name="exceptions.send_case_digests")
def send_case_digests() -> dict[str, int]:
    """Each queue's digest of SLA breaches and new high-impact cases (one message per queue)."""
    return case_digests_send()
