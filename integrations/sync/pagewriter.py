"""Commit pages of polled records on threads of their own, in order, while the next page is
read and prepared.

Committing a page is mostly PostgreSQL's work (parsing megabytes of JSON, index entries,
foreign-key checks at commit). ``PageWriter`` runs it on helper threads with database
connections of their own, so the poller's work (parsing, mapping, preparing rows) and the
database's overlap instead of taking turns.

A page is a few independent steps and a final one. Each independent step runs in its own
transaction on its own thread (a *lane*, with its own connection), side by side with the other
steps of the page; the final step runs once all of them committed. Polling uses two lanes,
the raw records (the bulk of the bytes) and the canonical rows with their cross-references,
and moves the cursor in the final step. The order is strict:

- within a lane, pages commit in submission order, and final steps run in page order;
- a page's final step runs only after every step of that page committed. So the cursor never
  moves past a record that was not kept and applied: a crash between the steps leaves a page
  the next poll reads again (the raw records and the canonical rows are both idempotent: a
  record read twice is a duplicate raw row refused by its key, and a stale version skipped).
  In that window a kept raw record can read "applied" while its canonical row is not written
  yet; the next poll (within the polling interval) writes it.
- Visibility: the poller prepares a page by reading what is committed. Before it reads records
  that a page still in flight writes, it calls ``wait_for``; everything else it reads (the
  related records a page points to) was committed by earlier polls.
- A step that fails (the database went away; a step handles its own bad rows in savepoints)
  stops every lane: nothing queued behind it commits, and the error is raised to the poller
  at its next call. The cursor stays where the last committed page left it.

Inside a transaction the caller already holds (a test, a caller's batch) the writes must join
it, and another connection could not even see its rows: the writer then runs each page's steps
inline, in that transaction, on the caller's thread. SQLite (one writer at a time) is inline.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connection as db
from django.db import connections, transaction

logger = logging.getLogger(__name__)


@dataclass
class PageJob:
    steps: Sequence[Callable[[], None]]  # independent; each in a transaction of its own
    final: Callable[[], None] | None = None  # after all of them committed, in page order
    external_ids: frozenset[str] = field(default_factory=frozenset)


@dataclass
class _Flight:
    job: PageJob
    waiting: int  # lanes that have not finished this page's step yet


class PageWriter:
    def __init__(self, *, lanes: int = 2, threaded: bool | None = None, depth: int = 2) -> None:
        if threaded is None:
            threaded = db.vendor == "postgresql" and not db.in_atomic_block
        self.threaded = threaded
        self.lanes = lanes
        self._queues: list[queue.Queue[_Flight | None]] = [
            queue.Queue(maxsize=depth) for _ in range(lanes)
        ]
        self._threads: list[threading.Thread] = []
        self._changed = threading.Condition()
        self._in_flight: dict[int, frozenset[str]] = {}
        self._failed: BaseException | None = None

    # -- the poller's side -------------------------------------------------------------------

    def submit(self, job: PageJob) -> None:
        """Commit this page after the ones before it (now, when inline)."""
        if len(job.steps) > self.lanes:
            raise ValueError(f"a page has at most {self.lanes} steps here")
        if not self.threaded:
            with transaction.atomic():
                for step in job.steps:
                    step()
                if job.final is not None:
                    job.final()
            return
        self._raise_failure()
        if not self._threads:
            self._threads = [
                threading.Thread(
                    target=self._work, args=(lane,), name=f"page-writer-{lane}", daemon=True
                )
                for lane in range(self.lanes)
            ]
            for thread in self._threads:
                thread.start()
        flight = _Flight(job, waiting=self.lanes)
        with self._changed:
            self._in_flight[id(flight)] = job.external_ids
        for lane_queue in self._queues:
            lane_queue.put(flight)

    def wait_for(self, external_ids: Iterable[str]) -> None:
        """Return once no page in flight writes any of these records."""
        if not self.threaded:
            return
        wanted = set(external_ids)
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._failed is not None
                    or all(wanted.isdisjoint(ids) for ids in self._in_flight.values())
                )
            )
        self._raise_failure()

    def drain(self) -> None:
        """Return once every submitted page is committed; raise what stopped the writer."""
        with self._changed:
            self._changed.wait_for(lambda: not self._in_flight)
        self._raise_failure()

    def close(self) -> None:
        """Stop the threads. Pages not yet committed are dropped (their records are read again
        by the next poll: the cursor never moved past them)."""
        if not self._threads:
            return
        with self._changed:
            if self._failed is None:
                self._failed = RuntimeError("page writer closed")
        for lane_queue in self._queues:  # each lane skips what is queued, then stops
            lane_queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _raise_failure(self) -> None:
        with self._changed:
            failed = self._failed
        if failed is not None:
            raise failed

    # -- the lanes ---------------------------------------------------------------------------

    def _work(self, lane: int) -> None:
        inbox = self._queues[lane]
        try:
            while True:
                flight = inbox.get()
                if flight is None:
                    return
                job = flight.job
                self._attempt(job.steps[lane] if lane < len(job.steps) else None)
                with self._changed:
                    flight.waiting -= 1
                    last = flight.waiting == 0
                if last:
                    # Every lane has finished this page, and each finished the pages before it
                    # first (and ran their final steps, when it was the last): page order holds.
                    self._attempt(job.final)
                    with self._changed:
                        self._in_flight.pop(id(flight), None)
                        self._changed.notify_all()
        finally:
            connections.close_all()  # this thread's connections only

    def _attempt(self, step: Callable[[], None] | None) -> None:
        """Run a step in a transaction of its own, unless the writer has stopped."""
        with self._changed:
            stopped = self._failed is not None
        if stopped or step is None:
            return
        try:
            with transaction.atomic():
                step()
        except BaseException as exc:  # handed to the poller at its next call
            logger.warning("page writer stopped: %s", exc)
            with self._changed:
                self._failed = exc
                self._changed.notify_all()
