"""The outbox: every effect on an external system, durable, claimed in batches, exactly once.

Life of a row: PENDING -> (claimed) IN_FLIGHT -> DONE | PENDING again (transient failure, with
backoff) | PARKED (business or permanent failure, or retries exhausted: an exception case).
A row whose worker vanished stays IN_FLIGHT until its lease runs out; the sweeper then puts it
back to PENDING. Re-sending is safe because every call carries an idempotency key derived from
(process, step, record, version) and a retried row is first looked up at the vendor.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import IntegrityError, models, transaction
from django.db import connection as db
from django.db.models import Exists, OuterRef, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from exceptions.models import ExceptionCase
from exceptions.retry import RetryResult, retry_handler_register
from integrations.classification import ErrorClass
from integrations.models import Connection, CrossReference, OutboxMessage
from integrations.selectors import outbox_parked
from integrations.sync.bulk import copy_insert, update_rows
from integrations.sync.errors import MergeRefused
from integrations.sync.failures import PARKING_CASE_TYPES, close_cases_for, park_with_cases
from integrations.sync.identity import Match, possible_duplicates_open, record_merge
from integrations.sync.outcome import Outcome
from integrations.sync.ring import ring_dispatch
from integrations.sync.steps import on_delivered

logger = logging.getLogger(__name__)

# Retries: 0.25 s, 0.5 s, 1 s, 2 s ... capped at 60 s (CONCORD_OUTBOX_BACKOFF_CAP_S), with jitter
# (half to all of it) so that workers retrying after the same outage do not hit the vendor in
# lockstep. The first waits are short: most faults are single (a 500, a lost answer), and a row
# that failed three times in a run had waited 1 + 2 + 4 s while the vendor was taking calls (a
# faulted 100k run's last invoices went 11 s after the one before). A longer outage opens the
# circuit breaker, and the budget below is a time window, so quicker retries park nothing
# sooner. No delay approaches the broker's visibility timeout (1 hour).
#
# The retry budget is a time window AND a count: a row parks (an integration admin's case) only
# once it has been tried at least CONCORD_OUTBOX_MIN_ATTEMPTS times (15) AND its first attempt is
# CONCORD_OUTBOX_RETRY_WINDOW_S (1 hour) ago. A count alone was used up in minutes: 15 attempts
# at 1-60 s apart span about 10 minutes, and a batch of 50 invoices failing together, a worker
# killed mid-call or a crash while recording cost an attempt each; under 20% 5xx and 10% 429 a
# row was delivered on its 15th and last attempt. With the window, at the 60 s cap a row is
# tried about 60 times over the hour, an outage shorter than that never reaches a person, and a
# row that keeps failing still parks an hour after its first attempt: no retry is endless. A
# longer outage opens the connection's circuit breaker, whose waits do not count as attempts.
BACKOFF_BASE_S = 0.25
# A row our own limits held back (never sent) without saying for how long waits this long.
NOT_SENT_WAIT_S = 1.0


def backoff_cap_s() -> float:
    return float(getattr(settings, "CONCORD_OUTBOX_BACKOFF_CAP_S", 60))


def min_attempts() -> int:
    return int(getattr(settings, "CONCORD_OUTBOX_MIN_ATTEMPTS", 15))


def retry_window() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "CONCORD_OUTBOX_RETRY_WINDOW_S", 3600)))


def budget_left(message: OutboxMessage, now: datetime) -> bool:
    """Whether a row that failed (its attempts counted) may be tried again."""
    if message.attempts < min_attempts():
        return True
    first = message.first_attempt_at
    return first is None or now < first + retry_window()


def budget_spent(now: datetime) -> Q:
    """The rows whose budget is spent, as a filter (the same rule as `budget_left`)."""
    return Q(attempts__gte=min_attempts(), first_attempt_at__lte=now - retry_window())


State = OutboxMessage.State


RELEASED = "Released by the sweeper: the worker holding it stopped answering."


def lease_seconds() -> int:
    """How long a claim holds before the sweeper may hand the row to another worker."""
    return int(getattr(settings, "CONCORD_OUTBOX_LEASE_S", 20))


def idempotency_key(*, process: str, step: str, record: models.Model, version: int) -> str:
    """The same effect always gets the same key: (process, step, record, version)."""
    return f"{process}:{step}:{record._meta.model_name}:{record.pk}:v{version}"


def batch_idempotency_key(messages: Sequence[OutboxMessage]) -> str:
    """One key for a batch call: the same set of rows re-sent gets the vendor's first answer."""
    joined = "\n".join(sorted(m.idempotency_key for m in messages))
    return "concord-" + hashlib.sha256(joined.encode()).hexdigest()[:40]


def backoff_delay(attempts: int, retry_after: float | None = None) -> float:
    delay = min(backoff_cap_s(), BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
    return max(delay, retry_after or 0.0)


# --- Writing rows (always inside the transaction that caused them) --------------------------


def outbox_message(
    *,
    connection: Connection,
    process: str,
    step: str,
    operation: str,
    record: models.Model,
    version: int,
    payload: dict[str, Any],
    context: dict[str, Any] | None = None,
    group_key: str = "",
) -> OutboxMessage:
    """An unsaved row; pass a list of them to outbox_enqueue."""
    return OutboxMessage(
        connection=connection,
        process=process,
        step=step,
        operation=operation,
        content_type=ContentType.objects.get_for_model(record),
        object_id=record.pk,
        record_version=version,
        payload=payload,
        context=context or {},
        group_key=group_key,
        idempotency_key=idempotency_key(process=process, step=step, record=record, version=version),
        next_attempt_at=timezone.now(),
    )


# When a writer last said it has written all it has for now (``outbox_flush``).
FLUSHED_AT = "outbox:flushed_at"


def outbox_flush() -> None:
    """The rows this writer has written need not wait for more to share a vendor call with:
    it has nothing more for now (a billing run at its end). A batch vendor's rows otherwise
    linger a moment for more (dispatch ``_Work.linger``), which after a writer's last rows
    only delays them. Said once the transaction that wrote them commits. One word for every
    connection and writer: any row due from before it goes, with what came since (a few
    calls fewer shared, at most, when another writer was still writing)."""
    transaction.on_commit(lambda: cache.set(FLUSHED_AT, time.time(), timeout=600))


def outbox_flushed_at() -> float:
    """When a writer last flushed (epoch seconds; 0.0 when none has lately)."""
    return float(cache.get(FLUSHED_AT) or 0.0)


# Rows enqueued inside `outbox_enqueue_together`, stored when it ends.
_together: ContextVar[list[OutboxMessage] | None] = ContextVar("outbox_together", default=None)


@contextmanager
def outbox_enqueue_together() -> Iterator[None]:
    """Within it, `outbox_enqueue` keeps the rows, and they are stored together as it ends (in
    the caller's transaction, which must span it): a batch of runs that each send a row pays
    one look-up and one insert, not two queries a run. Nothing inside may expect to read the
    rows back before the end."""
    if _together.get() is not None:
        yield
        return
    token = _together.set([])
    try:
        yield
        kept = _together.get() or []
    finally:
        _together.reset(token)
    first: dict[str, OutboxMessage] = {}
    for message in kept:  # two runs sending one effect (one customer's): the first one's row
        first.setdefault(message.idempotency_key, message)
    outbox_enqueue(messages=list(first.values()))


def outbox_enqueue(*, messages: Sequence[OutboxMessage]) -> int:
    """Store the rows with the caller's transaction and ring the dispatcher once it commits.

    A row whose idempotency key exists already is the same effect asked twice: it is not added.
    Returns how many rows were new (inside `outbox_enqueue_together`: none yet, they are kept).
    """
    if not messages:
        return 0
    together = _together.get()
    if together is not None:
        together.extend(messages)
        return 0
    keys = [m.idempotency_key for m in messages]
    before = set(
        OutboxMessage.objects.filter(idempotency_key__in=keys).values_list(
            "idempotency_key", flat=True
        )
    )
    _insert_new([m for m in messages if m.idempotency_key not in before])
    connection_ids = {m.connection_id for m in messages}
    # robust: a broker outage must not fail the caller's committed work; the sweeper rings later.
    ring_dispatch(connection_ids)
    return len(set(keys) - before)


# Rows from which a COPY beats an INSERT: below this the savepoint and the id query it needs
# cost more than they save.
COPY_FROM_ROWS = 10


def _insert_new(messages: Sequence[OutboxMessage]) -> None:
    """Insert rows whose keys were not there a moment ago. Many rows go by COPY: Django's bulk
    INSERT on PostgreSQL sends each column as an array, and psycopg escapes every JSON payload
    in Python to quote it (a billing chunk's 50 invoices of 100 lines: 100 ms of CPU per
    INSERT, 5 ms by COPY). A key another transaction inserted since the look-up (or one key
    twice in `messages`) fails the COPY; its savepoint is rolled back and the INSERT that skips
    conflicting keys stores the rest, as it always did."""
    if not messages:
        return
    if db.vendor == "postgresql" and len(messages) >= COPY_FROM_ROWS:
        try:
            with transaction.atomic():
                copy_insert(OutboxMessage, list(messages))
            return
        except IntegrityError:
            for message in messages:
                message.pk = None
                message._state.adding = True
    OutboxMessage.objects.bulk_create(messages, batch_size=1000, ignore_conflicts=True)


# --- Claiming ---------------------------------------------------------------------------------


def outbox_claim(*, connection_id: int, limit: int, worker: str) -> list[OutboxMessage]:
    """Claim up to `limit` due rows of one connection, oldest first, skipping rows another
    worker holds. Rows whose record still has an older version waiting are left for later, and
    rows older than a version already delivered are skipped as stale. A row whose retry budget
    is spent (it came back from the sweeper, or a crash kept it from parking) is parked with
    its case here instead of being sent again."""
    now = timezone.now()
    # A row whose record has an older version still to go (waiting out its backoff, or in
    # flight) cannot go now: filtered out here, so such rows never fill the claim and leave
    # due rows of other records unclaimed (a claim of 200 held-back rows came back empty, and
    # the dispatcher stopped with due rows waiting). One probe of the record index per row.
    # It is the rule of `waiting` in _order_by_version, in SQL: change the two together.
    older_waiting = OutboxMessage.objects.filter(
        content_type_id=OuterRef("content_type_id"),
        object_id=OuterRef("object_id"),
        operation=OuterRef("operation"),
        state__in=[State.PENDING, State.IN_FLIGHT],
        record_version__lt=OuterRef("record_version"),
    )
    with transaction.atomic():
        candidates = list(
            OutboxMessage.objects.select_for_update(skip_locked=True, of=("self",))
            # The connection and record type are read when a row parks: loaded here, not per row.
            .select_related("connection", "content_type")
            .filter(connection_id=connection_id, state=State.PENDING, next_attempt_at__lte=now)
            .exclude(Exists(older_waiting))
            .order_by("next_attempt_at", "id")[:limit]
        )
        if not candidates:
            return []
        spent = [m for m in candidates if not budget_left(m, now)]
        ready, stale = _order_by_version([m for m in candidates if budget_left(m, now)])
        if stale:
            OutboxMessage.objects.filter(pk__in=[m.pk for m in stale]).update(
                state=State.SKIPPED, last_error="A newer version was already delivered."
            )
        # Held (in flight, not sent) until they are parked below: no other worker takes them.
        _hold(spent, now=now, worker=worker)
        if ready:
            OutboxMessage.objects.filter(pk__in=[m.pk for m in ready]).update(
                state=State.IN_FLIGHT,
                claimed_at=now,
                claimed_by=worker,
                attempts=models.F("attempts") + 1,
                first_attempt_at=Coalesce("first_attempt_at", Value(now)),
            )
            for message in ready:
                message.state = State.IN_FLIGHT
                message.claimed_at = now
                message.claimed_by = worker
                message.attempts += 1
                message.first_attempt_at = message.first_attempt_at or now
    _park_spent(spent)
    return ready


def _hold(messages: Sequence[OutboxMessage], *, now: datetime, worker: str) -> None:
    if messages:
        OutboxMessage.objects.filter(pk__in=[m.pk for m in messages]).update(
            state=State.IN_FLIGHT, claimed_at=now, claimed_by=worker
        )


def _park_spent(messages: Sequence[OutboxMessage]) -> None:
    """Park rows whose budget is spent with the integration admins' case, saying why the last
    attempt failed. Should this fail, the rows stay in flight: the sweeper finds them again."""
    if not messages:
        return
    try:
        park_with_cases(
            [
                Outcome(
                    message=m,
                    ok=False,
                    error_class=ErrorClass.TRANSIENT,
                    error=m.last_error or "retry budget spent",
                )
                for m in messages
            ]
        )
    except Exception:
        # The rows claimed alongside are in flight already and must be sent, not stranded.
        logger.exception("parking %d outbox rows whose retry budget is spent failed", len(messages))


def _order_by_version(
    candidates: list[OutboxMessage],
) -> tuple[list[OutboxMessage], list[OutboxMessage]]:
    """Split candidates into (ready, stale), holding back rows with an older version pending:
    one row per record and operation at a time, the lowest version first. Stale is counted
    within one effect (the row's process and step: a fix's third update of a contract): a row
    older than a version of its own effect already delivered. Rows of another effect on the
    same record (provisioning's ids and back-sync's billing status on one CRM contract) carry
    other fields and are never stale for it, whatever their numbers."""
    by_record: dict[tuple[int, int, str], list[OutboxMessage]] = defaultdict(list)
    for message in candidates:
        by_record[(message.content_type_id, message.object_id, message.operation)].append(message)
    candidate_ids = {m.pk for m in candidates}
    others: dict[tuple[int, int, str], list[tuple[int, str, tuple[str, str]]]] = defaultdict(list)
    # The other rows of the same records, by the record index (content type, object id); rows
    # of another operation on them are dropped here. An OR of one condition per record cost
    # Django 40 ms of CPU per 200-row claim to build.
    for row in (
        OutboxMessage.objects.filter(
            content_type_id__in={key[0] for key in by_record},
            object_id__in={key[1] for key in by_record},
            state__in=[State.PENDING, State.IN_FLIGHT, State.DONE],
        )
        .exclude(pk__in=candidate_ids)
        .values_list(
            "content_type_id",
            "object_id",
            "operation",
            "record_version",
            "state",
            "process",
            "step",
        )
    ):
        if (row[0], row[1], row[2]) in by_record:
            others[(row[0], row[1], row[2])].append((row[3], row[4], (row[5], row[6])))

    ready: list[OutboxMessage] = []
    stale: list[OutboxMessage] = []
    for key, messages in by_record.items():
        messages.sort(key=lambda m: (m.record_version, m.pk))
        delivered: dict[tuple[str, str], int] = {}
        for version, state, effect in others[key]:
            if state == State.DONE:
                delivered[effect] = max(delivered.get(effect, version), version)
        waiting = min((v for v, s, _ in others[key] if s != State.DONE), default=None)
        for index, message in enumerate(messages):
            done = delivered.get((message.process, message.step))
            if done is not None and message.record_version < done:
                stale.append(message)
            elif (waiting is not None and waiting < message.record_version) or index > 0:
                continue  # an older version goes first; this one stays pending
            else:
                ready.append(message)
    return ready, stale


def outbox_renew_lease(*, messages: Sequence[OutboxMessage]) -> None:
    """Tell the sweeper these rows are still being worked on (called before each slow call)."""
    OutboxMessage.objects.filter(pk__in=[m.pk for m in messages], state=State.IN_FLIGHT).update(
        claimed_at=timezone.now()
    )


# --- Recording outcomes -----------------------------------------------------------------------


def outbox_record_outcomes(*, outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Write the results of one batch call: done rows with their cross-references, retries with
    backoff, parked rows with their exception cases, and cases closed by a later success."""
    now = timezone.now()
    counts = {"done": 0, "retry": 0, "parked": 0}
    succeeded = [o for o in outcomes if o.ok]
    retry = [o for o in outcomes if not o.ok and o.error_class == ErrorClass.TRANSIENT]
    # Held back by our own limits (not sent): not an attempt, so always retried.
    retry_now = [o for o in retry if o.not_sent or budget_left(o.message, now)]
    # By identity: `in` on the list compared every field of every outcome (payload data
    # included), a cost that grew with the square of the batch.
    retrying = {id(o) for o in retry_now}
    park = [o for o in outcomes if not o.ok and id(o) not in retrying]

    with transaction.atomic():
        for outcome in succeeded:
            message = outcome.message
            message.state = State.DONE
            message.done_at = now
            # The vendor record's scalar fields (its number, status, dates), not its line items.
            message.result = {
                **{
                    k: v
                    for k, v in outcome.data.items()
                    if isinstance(v, str | int | float | bool) and len(str(v)) <= 200
                },
                "external_id": outcome.external_id,
                "external_version": outcome.external_version,
            }
            message.last_error = ""
            message.error_class = ""
        update_rows(
            OutboxMessage,
            [o.message for o in succeeded],
            ["state", "done_at", "result", "last_error", "error_class", "updated_at"],
        )
        _write_cross_references(succeeded, now)
        # A success supersedes older versions of the same record that were parked.
        _supersede_parked(succeeded)
        counts["done"] = len(succeeded)

        # The rows of one call that may have reached the vendor wait alike, so they fall due
        # together and go again as the same call, under its key (sent_key).
        same_call: dict[str, float] = {}
        for outcome in retry_now:
            message = outcome.message
            message.state = State.PENDING
            if outcome.not_sent:
                # Held back by our own limits: wait as long as they say, and give the attempt back.
                message.attempts -= 1
                if message.attempts == 0:
                    message.first_attempt_at = None  # the window starts with a real attempt
                delay = outcome.retry_after or NOT_SENT_WAIT_S
            elif outcome.retry_after is not None and not outcome.maybe_applied:
                # The vendor wrote nothing and said when to come back (a 429, a 503 with
                # Retry-After): its word, not a backoff grown by the attempts before, which
                # left throttled rows idle long after the vendor would take them.
                delay = outcome.retry_after * random.uniform(1.0, 1.2)  # noqa: S311 - jitter
            elif outcome.sent_key:
                delay = same_call.setdefault(
                    outcome.sent_key, backoff_delay(message.attempts, outcome.retry_after)
                )
            else:
                delay = backoff_delay(message.attempts, outcome.retry_after)
            message.next_attempt_at = now + timedelta(seconds=delay)
            message.last_error = outcome.error[:2000]
            message.error_class = outcome.error_class
            message.needs_lookup = message.needs_lookup or outcome.maybe_applied
            if outcome.maybe_applied:
                # The key of the call that may have landed (blank: none kept, look it up).
                message.sent_key = outcome.sent_key
        update_rows(
            OutboxMessage,
            [o.message for o in retry_now],
            [
                "state",
                "attempts",
                "first_attempt_at",
                "next_attempt_at",
                "last_error",
                "error_class",
                "needs_lookup",
                "sent_key",
                "updated_at",
            ],
        )
        counts["retry"] = len(retry_now)

        # The next workflow step, in the same transaction as the rows it follows from.
        on_delivered(messages=[o.message for o in succeeded])

    # Cases are written one root cause at a time, each in its own transaction, so a failure to
    # open one never loses the state of the rows above.
    park_with_cases(park)
    counts["parked"] = len(park)
    if succeeded:
        close_cases_for([o.message for o in succeeded])
    return counts


def outbox_record_failure(
    *, outcomes: Sequence[Outcome], claimed_attempts: Mapping[int, int], error: BaseException
) -> dict[str, int]:
    """Recording a batch's outcomes failed (a constraint the answer broke, a defect in a step
    handler, the database gone for a moment): nothing of it was written. The failure counts as
    an attempt like any other: the rows still in flight under this claim go back with backoff,
    or park once their budget is spent. A row the vendor may hold now (the call succeeded, or
    may have) is looked up before it is sent again."""
    # The first line: a database error's DETAIL lines (the key values) stay in the worker log.
    first_line = (str(error).strip().splitlines() or [""])[0]
    reason = f"recording the outcome failed: {type(error).__name__}: {first_line}"
    # Read again: the failed recording may have changed the rows in memory before it stopped.
    # Only rows still under this claim (in flight, with the attempt count `claimed_attempts`
    # gave them when they were claimed) are touched: a row recorded before the failure, or
    # handed to another worker since, is not.
    claims = {o.message.pk: o for o in outcomes}
    current = (
        OutboxMessage.objects.select_related("connection", "content_type")
        .filter(pk__in=list(claims), state=State.IN_FLIGHT)
        .order_by("pk")
    )
    failed = [
        Outcome(
            message=message,
            ok=False,
            error_class=ErrorClass.TRANSIENT,
            error=reason,
            maybe_applied=claims[message.pk].ok or claims[message.pk].maybe_applied,
        )
        for message in current
        if message.attempts == claimed_attempts.get(message.pk)
    ]
    return outbox_record_outcomes(outcomes=failed)


def _write_cross_references(succeeded: Sequence[Outcome], now: datetime) -> None:
    """The vendor ids of what was delivered. A vendor record a poll or a webhook brought in
    before its create's answer was recorded here (the answer lost, or the echo fast) may already
    be a second Concord record that nothing linked to ours: `_merge_copies` first, then the
    ids. The happy path costs one savepoint."""
    rows = [
        CrossReference(
            content_type_id=o.message.content_type_id,
            object_id=o.message.object_id,
            connection_id=o.message.connection_id,
            external_id=o.external_id,
            external_version=o.external_version[:64],
            last_synced_at=now,
        )
        for o in succeeded
        if o.external_id
    ]
    if not rows:
        return
    try:
        with transaction.atomic():
            _upsert_cross_references(rows)
    except IntegrityError:
        _upsert_cross_references(_merge_copies(rows))


def _upsert_cross_references(rows: Sequence[CrossReference]) -> None:
    CrossReference.objects.bulk_create(
        rows,
        batch_size=500,
        update_conflicts=True,
        unique_fields=["connection", "content_type", "object_id"],
        update_fields=["external_id", "external_version", "last_synced_at"],
    )


def _merge_copies(rows: Sequence[CrossReference]) -> list[CrossReference]:
    """The rows to write once the copies are gone: each vendor id another record holds (its
    copy, made from the vendor's record before the answer naming it was recorded) is merged
    into the record it was created for, audited, so the id moves with everything else the copy
    gathered. A merge the identity rules refuse (the two are known apart elsewhere) leaves the
    id with the copy and opens a possible-duplicate case for a person to decide."""
    held = {
        (x.connection_id, x.content_type_id, x.external_id): x.object_id
        for x in CrossReference.objects.filter(
            external_id__in={row.external_id for row in rows},
            connection_id__in={row.connection_id for row in rows},
        )
    }
    kept = []
    for row in rows:
        copy = held.get((row.connection_id, row.content_type_id, row.external_id))
        if copy is None or copy == row.object_id:
            kept.append(row)
            continue
        content_type = ContentType.objects.get_for_id(row.content_type_id)
        try:
            with transaction.atomic():
                record_merge(
                    object_type=str(content_type.model),
                    winner_id=row.object_id,
                    loser_id=copy,
                    actor=None,
                    note=f"The copy of {row.external_id} read before Concord recorded that it "
                    "had created it.",
                )
        except MergeRefused as exc:
            logger.warning("%s %s left apart from its copy: %s", content_type, row.object_id, exc)
            model = content_type.model_class()
            if model is not None:
                possible_duplicates_open(
                    connection=row.connection,
                    model=model,
                    pairs=[(copy, Match(row.object_id, "created by Concord", certain=False))],
                )
            continue
        kept.append(row)
    return kept


def _supersede_parked(succeeded: Sequence[Outcome]) -> None:
    """Parked rows of an older version of what was just delivered (same record, operation and
    effect) are skipped. Found by the record index and matched here: usually there are none, and one
    small read says so (an OR of one condition per row cost Django more CPU than the read)."""
    if not succeeded:
        return
    # Per effect (process and step): another effect's parked row on the record carries other
    # fields, and stays for its own retry.
    delivered: dict[tuple[int, int, str, str, str], int] = {}
    for outcome in succeeded:
        m = outcome.message
        key = (m.content_type_id, m.object_id, m.operation, m.process, m.step)
        delivered[key] = max(delivered.get(key, m.record_version), m.record_version)
    older = [
        pk
        for pk, content_type_id, object_id, operation, process, step, version in (
            OutboxMessage.objects.filter(
                content_type_id__in={key[0] for key in delivered},
                object_id__in={key[1] for key in delivered},
                state=State.PARKED,
            ).values_list(
                "pk",
                "content_type_id",
                "object_id",
                "operation",
                "process",
                "step",
                "record_version",
            )
        )
        if version < delivered.get((content_type_id, object_id, operation, process, step), version)
    ]
    if older:
        OutboxMessage.objects.filter(pk__in=older, state=State.PARKED).update(
            state=State.SKIPPED, last_error="Superseded by a newer version that was delivered."
        )


# --- Sweeping ---------------------------------------------------------------------------------


def outbox_sweep() -> dict[str, Any]:
    """Hand back rows whose worker vanished, and ring the dispatcher for every connection with
    due rows, so a lost broker message or a killed worker costs seconds, never a record. A
    vanished worker's claim counted as an attempt; a row whose budget that spent is parked
    with its case instead of being handed back."""
    now = timezone.now()
    expired = now - timedelta(seconds=lease_seconds())
    orphaned = OutboxMessage.objects.filter(state=State.IN_FLIGHT, claimed_at__lt=expired)
    released = orphaned.exclude(budget_spent(now)).update(
        state=State.PENDING,
        next_attempt_at=now,
        needs_lookup=True,  # the vanished worker may have sent it
        sent_key="",  # under a key not kept: look it up
        last_error=RELEASED,
    )
    with transaction.atomic():
        spent = list(
            orphaned.filter(budget_spent(now))
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("connection", "content_type")
            .order_by("pk")
        )
        # Held under a fresh lease while they are parked, so a second sweep leaves them alone.
        _hold(spent, now=now, worker="sweeper")
    for message in spent:
        message.last_error = RELEASED  # how its last attempt ended
    _park_spent(spent)
    due = list(
        OutboxMessage.objects.filter(state=State.PENDING, next_attempt_at__lte=now)
        # order_by(): Meta.ordering would join the DISTINCT and give one value per row.
        .order_by()
        .values_list("connection_id", flat=True)
        .distinct()
    )
    ring_dispatch(due, force=True)
    if released or spent:
        logger.warning(
            "sweeper released %d in-flight outbox rows and parked %d whose budget was spent",
            released,
            len(spent),
        )
    return {"released": released, "parked": len(spent), "connections_rung": len(due)}


# --- Replay -----------------------------------------------------------------------------------


def outbox_replay(*, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
    """Send parked rows again as new rows linked to the originals (their attempts stay on record).
    A person replaying gives the record a new retry budget: the replay row counts its own
    attempts from its first claim and parks again, with its case, once that is spent.

    The payload is the original's; fixing data and retrying is the workflow's job, which writes
    a new version. The replay keeps the look-up-before-create guard, so a row whose first attempt
    landed after all is not posted twice.
    """
    replays: list[OutboxMessage] = []
    with transaction.atomic():
        counts = dict(
            OutboxMessage.objects.filter(replay_of__in=[m.pk for m in messages])
            .values("replay_of")
            .annotate(n=models.Count("pk"))
            .values_list("replay_of", "n")
        )
        for original in messages:
            if original.state != State.PARKED:
                continue
            count = counts.get(original.pk, 0)
            replays.append(
                OutboxMessage(
                    connection_id=original.connection_id,
                    process=original.process,
                    step=original.step,
                    operation=original.operation,
                    content_type_id=original.content_type_id,
                    object_id=original.object_id,
                    record_version=original.record_version,
                    payload=original.payload,
                    context=original.context,
                    group_key=original.group_key,
                    idempotency_key=f"{original.idempotency_key}:replay{count + 1}",
                    next_attempt_at=timezone.now(),
                    # The original may have landed after all: look it up before creating it.
                    needs_lookup=True,
                    replay_of=original,
                    exception_case_id=original.exception_case_id,
                )
            )
        OutboxMessage.objects.bulk_create(replays)
        OutboxMessage.objects.filter(pk__in=[m.pk for m in messages]).filter(
            state=State.PARKED
        ).update(state=State.SKIPPED, last_error="Replayed; see the replay row.")
        ring_dispatch({m.connection_id for m in replays})
    return replays


# Parked rows replayed per round of a case's retry: one round per 1,000 rows keeps each INSERT
# and UPDATE bounded (the API's replay takes the same number).
RETRY_BATCH = 1000


def outbox_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry an outbox case (exceptions/retry.py): replay every row parked on it, each as a
    new row with a fresh retry budget, which looks the record up before creating it."""
    replayed = 0
    while rows := outbox_parked(exception_case_id=case.pk, limit=RETRY_BATCH):
        done = outbox_replay(messages=rows)
        replayed += len(done)
        if not done:
            break
    return RetryResult(count=replayed, summary=f"replayed {replayed} parked outbox row(s)")


# Here rather than in failures.py, which outbox.py imports: outbox_replay lives here.
retry_handler_register(case_types=PARKING_CASE_TYPES, handler=outbox_case_retry)
