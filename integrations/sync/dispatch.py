"""The dispatcher: claim due outbox rows of one connection, call its connector in the vendor's
batch sizes, record what happened. It holds no transaction while a call is in flight. A vendor
that takes one item a call (Harvest) gets several calls at once, up to the connection's
max_concurrency, each record's rows still in order (``_send_in_lanes``)."""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, connections

from integrations.classification import ErrorClass
from integrations.connectors.base import Connector, ItemResult
from integrations.connectors.errors import (
    ConnectorError,
    TransientError,
)
from integrations.models import Connection, OutboxMessage
from integrations.sync.outbox import (
    batch_idempotency_key,
    outbox_claim,
    outbox_record_failure,
    outbox_record_outcomes,
    outbox_renew_lease,
)
from integrations.sync.outcome import Outcome
from integrations.sync.ring import ring_dispatch, ring_dispatch_when_due
from integrations.vendors import connector_for
from integrations.vendors.echo import AnswerMismatch

logger = logging.getLogger(__name__)

# Rows claimed per round: enough for several vendor batches (Xero takes 50 invoices per call),
# few enough that a worker killed mid-round strands little work until the lease runs out.
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
    while time.monotonic() < deadline:
        claimed = outbox_claim(connection_id=connection.pk, limit=CLAIM_LIMIT, worker=worker)
        if not claimed:
            return
        report.claimed += len(claimed)
        by_operation: dict[str, list[OutboxMessage]] = defaultdict(list)
        for message in claimed:
            by_operation[message.operation].append(message)
        for operation, messages in by_operation.items():
            size = connector.batch_size.get(operation, 1)
            batches = [messages[start : start + size] for start in range(0, len(messages), size)]
            lanes = _lanes(connection, size, batches)
            if lanes > 1:
                counts = _send_in_lanes(connector, operation, batches, lanes)
            else:
                counts = _send_in_turn(connector, operation, batches)
            report.done += counts["done"]
            report.retry += counts["retry"]
            report.parked += counts["parked"]
    report.more = True


# Threads one dispatch task sends a one-item-a-call vendor's rows on (Harvest has no batch
# endpoint): its answer takes tens of milliseconds, during which one lane waits idle. Capped
# by the connection's max_concurrency (the limiter holds every call to it anyway) and by 4: a
# worker process of a 2-CPU box gains little from more, and each lane holds a database
# connection while the task runs.
MAX_LANES = 4


def _lanes(connection: Connection, size: int, batches: Sequence[Sequence[OutboxMessage]]) -> int:
    """How many of the batches to send at once: one unless the vendor takes one item a call,
    and one inside a caller's transaction (a test's), whose rows another connection cannot
    see."""
    if size > 1 or len(batches) < 2 or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return 1
    return max(1, min(MAX_LANES, connection.max_concurrency, len(batches)))


def _send_in_turn(
    connector: Connector, operation: str, batches: Sequence[Sequence[OutboxMessage]]
) -> Counter[str]:
    counts: Counter[str] = Counter()
    for batch in batches:
        counts.update(_record(_send(connector, operation, batch)))
    return counts


def _send_in_lanes(
    connector: Connector,
    operation: str,
    batches: Sequence[Sequence[OutboxMessage]],
    lanes: int,
) -> Counter[str]:
    """Send the batches on `lanes` threads, each record's rows in turn on one lane (a record's
    rows keep their order: an update never overtakes the create before it), different records
    at once. Each lane records its rows' outcomes (and runs the workflow step each delivery
    starts) on its own database connection, closed when the lane ends."""
    by_record: dict[tuple[int, int], list[Sequence[OutboxMessage]]] = defaultdict(list)
    for batch in batches:
        first = batch[0]
        by_record[(first.content_type_id, first.object_id)].append(batch)
    work: queue.SimpleQueue[list[Sequence[OutboxMessage]]] = queue.SimpleQueue()
    for sequence in by_record.values():
        work.put(sequence)

    def lane() -> Counter[str]:
        counts: Counter[str] = Counter()
        try:
            while True:
                try:
                    sequence = work.get_nowait()
                except queue.Empty:
                    return counts
                counts.update(_send_in_turn(connector, operation, sequence))
        finally:
            connections.close_all()

    counts: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="dispatch-lane") as pool:
        for done in [pool.submit(lane) for _ in range(lanes)]:
            counts.update(done.result())
    return counts


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
    try:
        # A row tried before may have been applied even though we never heard back (a dropped
        # response, a killed worker): look it up first instead of creating it again.
        retried = [m for m in batch if m.needs_lookup]
        if retried:
            outbox_renew_lease(messages=retried)
            found = connector.find_existing(operation, [m.payload for m in retried])
            for message, existing in zip(retried, found, strict=True):
                if existing is not None and existing.ok:
                    outcomes[message.pk] = _outcome(message, existing)
        to_write = [m for m in batch if m.pk not in outcomes]
        if to_write:
            outbox_renew_lease(messages=to_write)
            writing = True
            results = connector.write(
                operation,
                [m.payload for m in to_write],
                idempotency_key=batch_idempotency_key(to_write),
                message_ids=message_ids,
            )
            for message, result in zip(to_write, results, strict=True):
                outcomes[message.pk] = _outcome(message, result)
    except ConnectorError as exc:
        maybe_applied = writing and _may_have_reached_vendor(exc)
        for message in batch:
            outcomes.setdefault(message.pk, _failed(message, exc, maybe_applied=maybe_applied))
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
