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
- **Soon, for bursts.** The webhook receiver rings with ``soon=True``: after the commit the
  ring goes to a helper thread of the process, which sends, SOON_WINDOW_S later, one ring per
  (task, key) for everything committed meanwhile. A delivery then costs no Redis round trip of
  its own (75 us of CPU and a 130 us wait each, measured); every commit is still followed by a
  ring, at most a few tens of milliseconds later. A process killed inside the window loses
  its rings, not its rows: the sweepers ring for them.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
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
MILESTONE_SWEEP = "integrations.milestone_sweep"
BILLING_ARRIVED = "integrations.billing_arrived"

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
    transaction.on_commit(
        lambda: _send(task_name, key, args, force=force, debounce=debounce, options=options),
        robust=True,
    )


def _send(
    task_name: str,
    key: object,
    args: tuple[Any, ...],
    *,
    force: bool,
    debounce: bool,
    options: dict[str, Any],
) -> None:
    if debounce and not force and not flag_set(_flag(task_name, key), DEBOUNCE_S):
        return
    try:
        current_app.send_task(task_name, args=args, **options)
    except Exception:
        # The work is in the database; the sweepers ring for it again.
        logger.exception("could not ring %s for %s", task_name, key)


# How long the helper thread gathers rings before it sends them: at 400 webhooks a second per
# web process, 20 ms turns eight Redis round trips into one, and a worker hears of a row at
# most this much later than it would have.
SOON_WINDOW_S = 0.02


class _Bell:
    """The helper thread behind ``soon`` rings: the latest ring per (task, key), sent a window
    after the first one arrived. Started in the process that rings (a forked child starts its
    own), a daemon: what it holds at exit is sent by the atexit hook, and a kill loses rings
    only, which the sweepers make good."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._due: dict[tuple[str, object], tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._thread: threading.Thread | None = None

    def add(
        self, task_name: str, key: object, args: tuple[Any, ...], options: dict[str, Any]
    ) -> None:
        with self._lock:
            self._due[(task_name, key)] = (args, options)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="concord-ring", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(SOON_WINDOW_S)
            # Cleared before the rings are taken: one added from now on wakes the next round.
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            due, self._due = self._due, {}
        for (task_name, key), (args, options) in due.items():
            _send(task_name, key, args, force=False, debounce=True, options=options)


_bell = _Bell()
atexit.register(_bell.flush)
# A forked child (a gunicorn or Celery worker) has no helper thread and must not inherit a lock
# some parent thread held at the fork.
os.register_at_fork(after_in_child=_bell._reset)


def ring_answered(task_name: str, key: object) -> None:
    """Called by a task as it starts: rings from now on queue a new task (this one may have
    read its rows before theirs were committed)."""
    flag_clear(_flag(task_name, key))


# --- The rings the sync engine uses -----------------------------------------------------------


def ring_inbound(connection_ids: Iterable[int], *, force: bool = False, soon: bool = False) -> None:
    """Ask a worker to process these connections' received inbound messages. ``soon``: through
    the helper thread, for bursts (the webhook receiver); not with ``force``."""
    for connection_id in set(connection_ids):
        if soon and not force:
            options = {"expires": RING_EXPIRES_S}
            transaction.on_commit(
                functools.partial(
                    _bell.add, PROCESS_INBOUND_BATCH, connection_id, (connection_id,), options
                ),
                robust=True,
            )
        else:
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
