"""The dispatcher: claim due outbox rows of one connection, call its connector in the vendor's
batch sizes, record what happened. It holds no transaction while a call is in flight.

Calls go out on several lanes at once, up to the connection's max_concurrency (Xero allows 5
calls in flight per tenant): a batch vendor's batches of 50 invoices as well as a
one-item-a-call vendor's single calls (Harvest). The limiter's concurrency slots, shared by
every worker through Redis, hold the sum of all dispatchers to that number, and its rate limit
holds the calls a minute. Each record's rows keep their order (``_sequences``), and a lane
that waits on a slow call or a limit holds up only its own batch: the others go on claiming
and sending the rows that are due (``_Work``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from integrations.classification import ErrorClass
from integrations.connectors.base import Connector, ItemResult
from integrations.connectors.errors import (
    ConnectorError,
    TransientError,
)
from integrations.flags import flag_alone
from integrations.models import Connection, OutboxMessage
from integrations.sync.outbox import (
    batch_idempotency_key,
    outbox_claim,
    outbox_flushed_at,
    outbox_record_failure,
    outbox_record_outcomes,
    outbox_renew_lease,
)
from integrations.sync.outcome import Outcome
from integrations.sync.ring import ring_dispatch, ring_dispatch_when_due
from integrations.vendors import connector_for
from integrations.vendors.echo import AnswerMismatch

logger = logging.getLogger(__name__)

# Rows claimed at a time: enough for several vendor batches (four Xero calls of 50 invoices,
# spread over the lanes), few enough that a worker killed mid-claim strands little work until
# the lease runs out.
CLAIM_LIMIT = 200
# A dispatch task stops after this long and rings again if work is left, so one connection's
# backlog never holds a worker (and its queue) for minutes.
TIME_BUDGET_S = 20.0


@dataclass
class DispatchReport:
    claimed: int = 0
    done: int = 0
    retry: int = 0
    parked: int = 0
    more: bool = False


# One dispatch task per connection at a time (`outbox_dispatch_alone`). A task sends on up to
# the connection's lanes until nothing is due; a second task of the same connection would only
# hold another worker process to compete for the same rows and limiter slots. Under faults two
# Harvest tasks held both processes of a worker for half a minute, and Xero's last invoices
# waited in the queue behind them (a faulted 100k run: 30 s of its 63). The hold is renewed
# while the task works and lapses HOLD_S after its worker dies.
HOLD_S = 10
HOLD_RENEW_S = 3.0


def outbox_dispatch_alone(*, connection_id: int, worker: str) -> DispatchReport | None:
    """`outbox_dispatch`, unless another task dispatches the connection now: then that one is
    asked to ring again when it ends (None here; integrations/flags.py `flag_alone`)."""
    return flag_alone(
        f"dispatch:{connection_id}",
        partial(outbox_dispatch, connection_id=connection_id, worker=worker),
        again=partial(ring_dispatch, [connection_id], force=True),
        hold_s=HOLD_S,
        renew_s=HOLD_RENEW_S,
    )


def outbox_dispatch(
    *, connection_id: int, worker: str, time_budget_s: float = TIME_BUDGET_S
) -> DispatchReport:
    report = DispatchReport()
    connection = Connection.objects.filter(pk=connection_id, enabled=True).first()
    if connection is None:
        return report
    connector = connector_for(connection)
    try:
        _dispatch_until(connector, connection, worker, time.monotonic() + time_budget_s, report)
    finally:
        connector.close()
    if report.more:
        # Out of time with work left: another task continues, so one connection's backlog
        # never holds a worker (and its queue) for minutes.
        ring_dispatch([connection_id], force=True)
    else:
        ring_dispatch_when_due(connection_id)
    return report


def _dispatch_until(
    connector: Connector,
    connection: Connection,
    worker: str,
    deadline: float,
    report: DispatchReport,
) -> None:
    work = _Work(connector, connection, worker, deadline)
    lanes = _lanes(connection)
    if lanes == 1:
        counts = work.lane()
    else:
        counts = Counter()
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="dispatch-lane") as pool:
            for done in [pool.submit(_in_own_connection, work.lane) for _ in range(lanes)]:
                counts.update(done.result())
    report.claimed += counts["claimed"]
    report.done += counts["done"]
    report.retry += counts["retry"]
    report.parked += counts["parked"]
    report.more = work.out_of_time


# Lanes one dispatch task sends on: up to the connection's max_concurrency (Xero allows 5 calls
# in flight per tenant; the limiter's shared slots hold every worker's calls to that number
# anyway), and at most 5. A Xero batch of 50 invoices takes ~0.3-1 s at the vendor, Harvest's
# single call tens of ms: one lane would wait idle through each. More than 5 gains little on a
# 2-CPU worker (recording a batch's outcomes is CPU in this process), and each lane holds a
# database connection while the task runs.
MAX_LANES = 5


def _lanes(connection: Connection) -> int:
    """How many lanes to send on: one inside a caller's transaction (a test's), whose rows
    another database connection cannot see."""
    if connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return 1
    return max(1, min(MAX_LANES, connection.max_concurrency))


def _in_own_connection(lane: Callable[[], Counter[str]]) -> Counter[str]:
    """Run a lane on a pool thread: it claims and records on its own database connection,
    closed when the lane ends."""
    try:
        return lane()
    finally:
        connections.close_all()


# One unit of a lane's work: (operation, batch) calls made in turn.
Calls = list[tuple[str, list[OutboxMessage]]]


class _Work:
    """The rows one dispatch task sends. Lanes take sequences of batches from a shared queue;
    a lane that finds it empty claims the next due rows (one claim at a time per task, and only
    once the queue is empty, so a task holds at most CLAIM_LIMIT rows beyond those in flight).
    A lane held by a slow call (a lost response waits out the read timeout) or by a limit holds
    up its own batch only: the others go on claiming and sending what is due. With nothing due
    while another lane is still sending, a lane waits for it (its rows' successors and quick
    retries fall due then) and looks again every POLL_S; with nothing due and no lane sending,
    all stop. Once the time budget is spent no more rows are claimed; claimed rows are sent."""

    # Between looks for due rows while another lane sends: a first retry is due 0.125-0.25 s
    # after its failure, and a look that finds nothing is one indexed query.
    POLL_S = 0.25
    # A batch vendor's rows that come one at a time (each workflow run writes its own invoice)
    # would each go in a call of their own, spending the vendor's rate per row instead of per
    # batch: in a 100k run, 296 milestone invoices took ~60 of the legacy tenant's Xero calls,
    # and the time invoices then waited for the next minute's allowance. Fewer due rows than a
    # batch, all new, wait until none has come for LINGER_S, for at most LINGER_MAX_S from the
    # oldest, before they are claimed (a retry, an older row, a full batch: no wait).
    LINGER_S = 0.3
    LINGER_MAX_S = 1.0
    # Once TIGHT_FROM of the connection's rate window is spent, calls are what runs out: rows
    # wait longer to share one (a faulted 100k run billed while it polled: the second Xero
    # tenant spent its 60 calls in 22 s on puts of 1-40 invoices, a chunk's invoices arriving
    # every second or so, and its last invoices waited 35 s for the next minute; with these,
    # 54 calls in its first minute and no wait).
    TIGHT_FROM = 0.4
    LINGER_TIGHT_S = 1.2
    LINGER_TIGHT_MAX_S = 3.0
    # While rows linger, how often the writers' word that nothing more is coming for now is
    # looked for (outbox.outbox_flush: a billing run's last invoices went 0.5-0.9 s after it
    # ended, waiting for more that never came). One cache read, not the linger's query.
    FLUSH_LOOK_S = 0.1

    def __init__(
        self, connector: Connector, connection: Connection, worker: str, deadline: float
    ) -> None:
        self.connector = connector
        self.connection = connection
        self.worker = worker
        self.deadline = deadline
        self.queue: deque[Calls] = deque()
        self.changed = threading.Condition()
        self.claiming = False
        self.sending = 0  # lanes sending a sequence now
        self.finished = 0  # sequences sent and recorded so far
        self.drained = False  # nothing due and no lane sending
        self.out_of_time = False  # the budget ran out (rows may be left)
        # (when, sequences finished then) of the last look that found no row due, if the
        # last look found none
        self.nothing_due: tuple[float, int] | None = None

    def lane(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        while (sequence := self.next(counts)) is not None:
            try:
                for operation, batch in sequence:
                    counts.update(_record(_send(self.connector, operation, batch)))
            finally:
                with self.changed:
                    self.sending -= 1
                    self.finished += 1
                    self.changed.notify_all()
        return counts

    def linger(self) -> bool:
        """Wait while fresh due rows, fewer than a batch, may still be joined by more. False
        when its look found no row due at all: the claim would find none either (its rows are
        among these), and is not made. A lane waiting for another's call looks every POLL_S,
        so most looks find nothing: the look is one small indexed read, the claim a locking
        read that loads its rows (a 100k run made 900 claims for 1,700 rows)."""
        batch = max(self.connector.batch_size.values(), default=1)
        if batch <= 1 or connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return True
        quiet_s, most_s = self.LINGER_S, self.LINGER_MAX_S
        if _rate_share_used(self.connector) >= self.TIGHT_FROM:
            quiet_s, most_s = self.LINGER_TIGHT_S, self.LINGER_TIGHT_MAX_S
        while time.monotonic() < self.deadline:
            flushed = outbox_flushed_at()
            wait = _linger_wait(self.connection, batch, quiet_s, most_s, flushed_at=flushed)
            if wait is None:
                return False
            if wait <= 0:
                return True
            until = time.monotonic() + min(wait, max(0.0, self.deadline - time.monotonic()))
            while (left := until - time.monotonic()) > 0 and outbox_flushed_at() == flushed:
                time.sleep(min(left, self.FLUSH_LOOK_S))
        return True

    def next(self, counts: Counter[str]) -> Calls | None:
        with self.changed:
            while True:
                if self.queue:
                    self.sending += 1
                    return self.queue.popleft()
                if self.drained or self.out_of_time:
                    return None
                if time.monotonic() >= self.deadline:
                    self.out_of_time = True
                    self.changed.notify_all()
                    return None
                if self.claiming:
                    self.changed.wait()
                    continue
                if self.nothing_due is not None:
                    # A look found nothing due just now, and no sequence has finished since
                    # (which may make rows due): any lane waits out POLL_S from that look. A
                    # lane woken by another's fruitless look went straight to a look of its
                    # own, and the lanes of a task took turns looking without pause while one
                    # of them sent (6,000 looks in a 100k run).
                    looked, seen = self.nothing_due
                    left = looked + self.POLL_S - time.monotonic()
                    if seen == self.finished and left > 0:
                        self.changed.wait(left)
                        continue
                self.claiming = True
                finished = self.finished
                self.changed.release()
                try:
                    claimed = (
                        outbox_claim(
                            connection_id=self.connection.pk,
                            limit=CLAIM_LIMIT,
                            worker=self.worker,
                        )
                        if self.linger()
                        else []
                    )
                    sequences = _sequences(self.connector, claimed)
                finally:
                    self.changed.acquire()
                    self.claiming = False
                    self.changed.notify_all()
                counts["claimed"] += len(claimed)
                self.queue.extend(sequences)
                self.nothing_due = None if claimed else (time.monotonic(), finished)
                if claimed or self.finished != finished:
                    # A sequence recorded while this claim ran may have made rows claimable
                    # (a record's next version) that the claim did not see yet: look again.
                    continue
                if not self.sending:
                    self.drained = True
                    self.changed.notify_all()
                    return None
                self.changed.wait(self.POLL_S)


def _batches(messages: Sequence[OutboxMessage], size: int) -> list[list[OutboxMessage]]:
    """The rows of one operation in batches of `size`, in claim order; the rows of an earlier
    call that may have reached the vendor (one sent_key), all claimed, are a batch of their own
    first, so they go again as that call (`_same_call_again`)."""
    calls: dict[str, list[OutboxMessage]] = defaultdict(list)
    for message in messages:
        if message.sent_key and message.needs_lookup:
            calls[message.sent_key].append(message)
    whole = [
        sorted(rows, key=lambda m: m.pk)
        for key, rows in calls.items()
        if batch_idempotency_key(rows) == key
    ]
    again = {m.pk for rows in whole for m in rows}
    rest = [m for m in messages if m.pk not in again]
    return [*whole, *(rest[start : start + size] for start in range(0, len(rest), size))]


def _rate_share_used(connector: Connector) -> float:
    """The share of the connection's rate window spent (0 when its limits cannot say)."""
    limits = getattr(getattr(connector, "http", None), "limits", None)
    if limits is None:
        return 0.0
    try:
        return float(limits.rate_share_used())
    except TransientError:
        return 0.0  # the limit store is away: no reason to hold rows back


def _linger_wait(
    connection: Connection, batch: int, linger_s: float, most_s: float, flushed_at: float = 0.0
) -> float | None:
    """How long fresh due rows, fewer than a batch, should wait for more (0: none; None: no
    row is due). Reads at most a batch of the due rows' creation times (the claim's index).
    Once one of them was written before `flushed_at` (``outbox_flush``: its writer has nothing
    more for now), none waits: it goes with what has come since (another writer's rows, one
    at a time, kept the quiet from coming, and a billing run's last invoices waited out
    LINGER_TIGHT_MAX_S behind a milestone sweep's)."""
    now = timezone.now()
    created = list(
        OutboxMessage.objects.filter(
            connection_id=connection.pk,
            state=OutboxMessage.State.PENDING,
            next_attempt_at__lte=now,
        )
        .order_by()
        .values_list("created_at", flat=True)[:batch]
    )
    if not created:
        return None
    if len(created) >= batch or min(created).timestamp() <= flushed_at:
        return 0.0
    since_oldest = (now - min(created)).total_seconds()
    since_newest = (now - max(created)).total_seconds()
    return max(0.0, min(linger_s - since_newest, most_s - since_oldest))


def _sequences(connector: Connector, claimed: Sequence[OutboxMessage]) -> list[Calls]:
    """The claimed rows as vendor batches, in sequences that may go out at once: batches that
    share a record are in one sequence, in claim order (a record's update never overtakes its
    create). A claim holds one row per record and operation, so a batch vendor's batches are
    independent; two operations on one record are not."""
    by_operation: dict[str, list[OutboxMessage]] = defaultdict(list)
    for message in claimed:
        by_operation[message.operation].append(message)
    sequences: list[Calls] = []
    owner: dict[tuple[int, int], int] = {}  # record -> its sequence
    for operation, messages in by_operation.items():
        size = connector.batch_size.get(operation, 1)
        for batch in _batches(messages, size):
            records = {(m.content_type_id, m.object_id) for m in batch}
            joined = sorted({owner[r] for r in records if r in owner})
            if not joined:
                joined = [len(sequences)]
                sequences.append([])
            into = joined[0]
            for other in joined[1:]:
                # Sequences that share no record with each other: their order is free.
                sequences[into] += sequences[other]
                sequences[other] = []
                for record, index in owner.items():
                    if index == other:
                        owner[record] = into
            sequences[into].append((operation, batch))
            for record in records:
                owner[record] = into
    return [s for s in sequences if s]


def _record(outcomes: list[Outcome]) -> dict[str, int]:
    """Record a batch's outcomes. Should that fail, the failure is the rows' attempt: they go
    back with backoff (or park once their budget is spent) instead of staying in flight, being
    released by the sweeper, sent and crashing again, attempt after attempt, never parking."""
    claimed_attempts = {o.message.pk: o.message.attempts for o in outcomes}
    try:
        return outbox_record_outcomes(outcomes=outcomes)
    except Exception as exc:
        logger.exception("recording the outcomes of %d outbox rows failed", len(outcomes))
        return outbox_record_failure(
            outcomes=outcomes, claimed_attempts=claimed_attempts, error=exc
        )


def _send(connector: Connector, operation: str, batch: Sequence[OutboxMessage]) -> list[Outcome]:
    """One vendor call for the batch (after looking up rows that may have landed before)."""
    outcomes: dict[int, Outcome] = {}
    message_ids = [m.pk for m in batch]
    writing = False
    key = ""
    try:
        # A row tried before may have been applied even though we never heard back (a dropped
        # response, a killed worker): look it up first instead of creating it again; unless
        # the very same rows go again under the key of that call, which the vendor answers
        # with its first answer (Xero's Idempotency-Key).
        retried = [m for m in batch if m.needs_lookup]
        if retried and not _same_call_again(connector, batch):
            outbox_renew_lease(messages=retried)
            found = connector.find_existing(operation, [m.payload for m in retried])
            for message, existing in zip(retried, found, strict=True):
                if existing is not None and existing.ok:
                    outcomes[message.pk] = _outcome(message, existing)
        # In the rows' order, so the same rows make the same body: a vendor that honours the key
        # compares the request too (Xero: the same key with another body is refused).
        to_write = sorted((m for m in batch if m.pk not in outcomes), key=lambda m: m.pk)
        if to_write:
            outbox_renew_lease(messages=to_write)
            writing = True
            key = batch_idempotency_key(to_write)
            results = connector.write(
                operation,
                [m.payload for m in to_write],
                idempotency_key=key,
                message_ids=message_ids,
            )
            for message, result in zip(to_write, results, strict=True):
                outcomes[message.pk] = _outcome(message, result)
    except ConnectorError as exc:
        maybe_applied = writing and _may_have_reached_vendor(exc)
        for message in batch:
            failed = _failed(message, exc, maybe_applied=maybe_applied)
            if maybe_applied and connector.idempotency_window_s:
                failed.sent_key = key
            outcomes.setdefault(message.pk, failed)
    except Exception as exc:
        # A defect here must not lose the rows: they go back with backoff like a transient
        # fault, and park with a case once the attempts run out.
        logger.exception("dispatch of %s failed unexpectedly", operation)
        for message in batch:
            outcomes.setdefault(
                message.pk,
                Outcome(
                    message=message,
                    ok=False,
                    error_class=ErrorClass.TRANSIENT,
                    error=repr(exc),
                    maybe_applied=writing,
                ),
            )
    return [outcomes[m.pk] for m in batch]


def _same_call_again(connector: Connector, batch: Sequence[OutboxMessage]) -> bool:
    """Whether this batch is exactly the rows of one earlier call that may have reached the
    vendor, within the vendor's idempotency window: sent again under the same key, it is
    answered with that call's first answer (the invoices it created, not new ones), so the
    look-up before it, a call or more per batch, is not needed. Rows grouped otherwise (part of
    that call done or parked since, new rows with them), a worker that vanished mid-call (no
    key kept), or a vendor without such keys: the look-up, as before."""
    window = connector.idempotency_window_s
    if not window:
        return False
    key = batch_idempotency_key(batch)
    since = timezone.now() - timedelta(seconds=window)
    return all(m.sent_key == key and m.updated_at >= since for m in batch)


def _outcome(message: OutboxMessage, result: ItemResult) -> Outcome:
    if result.ok:
        return Outcome(
            message=message,
            ok=True,
            external_id=result.external_id,
            external_version=result.external_version,
            data=result.data,
        )
    assert result.error is not None  # noqa: S101 - a failed ItemResult always carries its error
    return _failed(message, result.error)


def _failed(
    message: OutboxMessage, error: ConnectorError, *, maybe_applied: bool = False
) -> Outcome:
    return Outcome(
        message=message,
        ok=False,
        error_class=error.kind,
        error=str(error),
        vendor_message=error.vendor_message,
        retry_after=error.retry_after,
        maybe_applied=maybe_applied,
        not_sent=error.never_sent,
        mismatch=isinstance(error, AnswerMismatch),
    )


# Refusals a vendor makes before it writes anything: throttled or unavailable.
_REFUSED_BEFORE_WRITING = {429, 503}


def _may_have_reached_vendor(error: ConnectorError) -> bool:
    """Whether a failed write could have been applied although we never got the answer."""
    if error.never_sent:
        return False
    if not isinstance(error, TransientError):
        return False  # the vendor answered: a refusal writes nothing
    return error.status_code not in _REFUSED_BEFORE_WRITING
