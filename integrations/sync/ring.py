"""Ringing workers: the one place that queues a Celery task, by name, on commit, debounced.

The database is the source of truth and the broker only a doorbell (ARCHITECTURE.md). So:

- **By name.** A task is sent as ``send_task("integrations.<name>")``: the sync layer never
  imports ``integrations.tasks`` (the web layer above it). Task names are a contract with queued
  messages and beat rows; they are listed here once.
- **On commit.** A ring inside a transaction waits for the commit (a worker must never start on
  rows it cannot see yet, or on rows rolled back); outside one it goes at once. ``robust``: a
  broker outage never fails the caller's committed work; the sweepers ring again.
- **Debounced.** While a ring for (task, key) waits in the queue, more rings add nothing: the
  queued task will see every row committed before it starts. The flag is cleared by the task
  when it starts (``ring_answered``); its lifetime only matters when a message is lost, and the
  sweepers ring regardless (``force``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from integrations.flags import flag_clear, flag_set
from integrations.models import Connection, OutboxMessage

logger = logging.getLogger(__name__)

# The task names this module rings (defined in integrations/tasks.py).
DISPATCH_OUTBOX = "integrations.dispatch_outbox"
PROCESS_INBOUND_BATCH = "integrations.process_inbound_batch"
POLL_CONNECTION = "integrations.poll_connection"

# A flag outlives a normal queue wait (well under a second) by far; if the message is lost the
# flag blocks new rings for at most this long, and the 5-second sweepers ring with force anyway.
DEBOUNCE_S = 30
# A ring older than the sweep cycle is redundant: the sweeper has rung again since.
RING_EXPIRES_S = 60
# Rows waiting for backoff or the rate limit are rung for when they fall due, rather than at
# the sweeper's next tick; a minute-long limit window then loses no capacity. Beyond this
# horizon the sweeper rings (and no countdown nears the broker's visibility timeout, 1 hour).
NEXT_DUE_HORIZON_S = 120


def outbox_queue(vendor: str) -> str:
    """One queue per target system, so a slow vendor never delays the others."""
    return f"outbox.{vendor}"


def _flag(task_name: str, key: object) -> str:
    return f"ring:{task_name}:{key}"


def ring(
    task_name: str,
    *,
    key: object,
    args: tuple[Any, ...] = (),
    force: bool = False,
    debounce: bool = True,
    **options: Any,
) -> None:
    """Queue ``task_name(*args)`` once the current transaction commits, unless a ring for the
    same (task, key) is already waiting. ``options`` go to ``send_task`` (queue, expires,
    countdown)."""
    options.setdefault("expires", RING_EXPIRES_S)

    def send() -> None:
        if debounce and not force and not flag_set(_flag(task_name, key), DEBOUNCE_S):
            return
        try:
            current_app.send_task(task_name, args=args, **options)
        except Exception:
            # The work is in the database; the sweepers ring for it again.
            logger.exception("could not ring %s for %s", task_name, key)

    transaction.on_commit(send, robust=True)


def ring_answered(task_name: str, key: object) -> None:
    """Called by a task as it starts: rings from now on queue a new task (this one may have
    read its rows before theirs were committed)."""
    flag_clear(_flag(task_name, key))


# --- The rings the sync engine uses -----------------------------------------------------------


def ring_inbound(connection_ids: Iterable[int], *, force: bool = False) -> None:
    """Ask a worker to process these connections' received inbound messages."""
    for connection_id in set(connection_ids):
        ring(PROCESS_INBOUND_BATCH, key=connection_id, args=(connection_id,), force=force)


def ring_dispatch(connection_ids: Iterable[int], *, force: bool = False, **options: Any) -> None:
    """Ask a worker to dispatch these connections' due outbox rows, each on its vendor's
    queue: one query for all of them, one ring per connection however many rows wait."""
    wanted = set(connection_ids)
    if not wanted:
        return
    vendors = dict(Connection.objects.filter(pk__in=wanted).values_list("pk", "vendor"))
    for connection_id, vendor in vendors.items():
        ring(
            DISPATCH_OUTBOX,
            key=connection_id,
            args=(connection_id,),
            queue=outbox_queue(vendor),
            force=force,
            **options,
        )


def ring_dispatch_when_due(connection_id: int) -> None:
    """Ring once for the connection's next pending row, when it falls due (within the
    horizon); one scheduled ring per connection at a time."""
    due = OutboxMessage.objects.filter(
        connection_id=connection_id, state=OutboxMessage.State.PENDING
    ).aggregate(at=Min("next_attempt_at"))["at"]
    if due is None:
        return
    delay = max(0.0, (due - timezone.now()).total_seconds())
    if delay > NEXT_DUE_HORIZON_S:
        return
    if not flag_set(f"ring:scheduled:{connection_id}", int(delay) + 1):
        return
    ring_dispatch([connection_id], force=True, countdown=delay, expires=delay + RING_EXPIRES_S)


def ring_poll(connection_ids: Iterable[int], *, expires: float) -> None:
    """One polling task per connection, each expiring before the next kick-off."""
    for connection_id in connection_ids:
        ring(POLL_CONNECTION, key=connection_id, args=(connection_id,), expires=expires)
