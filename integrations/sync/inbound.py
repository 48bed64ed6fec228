"""Processing inbound messages: read the record if the message only names it, map it through
the published mapping, apply ownership and the version check, upsert the canonical record."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import groupby
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import BigIntegerField, Case, Q, Value, When
from django.utils import timezone

from exceptions.models import ExceptionCase
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.connectors.base import Connector
from integrations.connectors.errors import ConnectorError, TransientError
from integrations.mapping.apply import CompiledMapping, MappedRecord, map_inbound
from integrations.mapping.canonical import VIRTUAL_MODELS
from integrations.mapping.ownership import load_ownership_rules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, InboundMessage, SystemRole
from integrations.selectors import inbound_held, routes_remembered
from integrations.sync.bulk import cyclic_gc_paused
from integrations.sync.errors import InboundRetry
from integrations.sync.project_links import projects_link_applied
from integrations.sync.ring import ring_inbound
from integrations.sync.steps import Arrival, on_arrival, on_arrivals
from integrations.sync.tenancy import TenantFacts, tenant_facts, tenant_fill
from integrations.sync.upsert import (
    FailureCause,
    UpsertPlan,
    UpsertResult,
    UpsertState,
    canonical_upsert,
    message_state,
    plan_upsert,
    write_upsert,
)
from integrations.vendors import connector_for

logger = logging.getLogger(__name__)

State = InboundMessage.State


def inbound_process(*, message_id: int) -> str:
    """Apply one inbound message. Returns its final state; raises InboundRetry on a transient
    failure to read the record (the message stays RECEIVED, so nothing is lost)."""
    message = InboundMessage.objects.select_related("connection").filter(pk=message_id).first()
    if message is None:
        return "gone"
    with _Context(message.connection) as context:
        return _process(message, context)


class _Context:
    """What every message of one connection needs, built once per batch: the ownership rules,
    the vendor client (one HTTP client and its kept-alive connection for all the reads) and the
    records the batch read ahead for its webhooks (``prefetch``)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.rules = load_ownership_rules()
        self._connector: Connector | None = None
        # (object type, external id) -> the record read ahead, or None: it does not exist.
        self.fetched: dict[tuple[str, str], Any] = {}
        # Object types whose read-ahead failed transiently: their messages wait for a retry
        # instead of each trying the struggling vendor again on its own.
        self.unavailable: dict[str, TransientError] = {}
        # Whether a case about this connection's inbound records may be open: asked once per
        # batch (the usual answer, no, spares each applied record the question), and set
        # again when the batch opens one itself.
        self.record_cases_open: bool | None = None
        # In a batch: the messages whose records a workflow waits for, with their arrival and
        # outcome, handed over together (`on_arrivals`) and then finished (``settle``).
        self.deferred: list[tuple[InboundMessage, Arrival, str, str]] | None = None
        self._facts: dict[tuple[str, str], TenantFacts] = {}

    def settle(self) -> None:
        """Hand the deferred records to their workflows at once, then finish their messages:
        a worker that dies in between leaves them received, and their runs are found again."""
        deferred, self.deferred = self.deferred or [], []
        if not deferred:
            return
        on_arrivals(arrivals=[arrival for _, arrival, _, _ in deferred])
        _finish_many([(message, state, error) for message, _, state, error in deferred])

    def applied(self, object_type: str, external_id: str) -> None:
        """A record applied: its earlier failed messages come off the cases holding them."""
        if self.record_cases_open is None:
            self.record_cases_open = inbound_record_cases_open(connection=self.connection)
        if self.record_cases_open:
            inbound_cases_clear_applied(
                connection=self.connection, object_type=object_type, external_ids=[external_id]
            )

    def failed(self, failures: Sequence[InboundFailure]) -> None:
        inbound_failure_cases_open(failures=failures)
        self.record_cases_open = True

    def facts(self, mapping: CompiledMapping) -> TenantFacts:
        """The tenant's facts for the records of this mapping, looked up once a batch (a
        poll's page does the same; they were two queries a customer record)."""
        key = (mapping.canonical_model, mapping.object_type)
        if key not in self._facts:
            self._facts[key] = tenant_facts(
                connection=self.connection, connector=self.connector, mapping=mapping
            )
        return self._facts[key]

    def prefetch(self, messages: Sequence[InboundMessage]) -> None:
        """Read the records the batch's webhooks name, per object type in the vendor's
        multi-record reads (Salesforce: 200 a call), where it has one. A read that fails as a
        whole for another reason leaves its messages to read their records one by one, so each
        failure lands on its own message as before."""
        wanted: dict[str, list[str]] = defaultdict(list)
        for message in messages:
            if message.source != InboundMessage.Source.POLL and message.external_id:
                wanted[message.object_type].append(message.external_id)
        if not wanted or self.connector.fetch_batch <= 1:
            return
        for object_type, external_ids in wanted.items():
            try:
                found = self.connector.fetch_many(object_type, external_ids)
            except TransientError as exc:
                self.unavailable[object_type] = exc
                continue
            except ConnectorError as exc:
                logger.warning("reading %s records ahead failed: %s", object_type, exc)
                continue
            for external_id, record in found.items():
                self.fetched[(object_type, external_id)] = record

    def fetch(self, message: InboundMessage) -> dict[str, Any] | None:
        """The record the message names, as the vendor holds it now (read ahead, or now)."""
        key = (message.object_type, message.external_id)
        if key in self.fetched:
            record: dict[str, Any] | None = self.fetched[key]
            return record
        unavailable = self.unavailable.get(message.object_type)
        if unavailable is not None:
            raise unavailable
        return self.connector.fetch(message.object_type, message.external_id)

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            self._connector = connector_for(self.connection)
        return self._connector

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connector is not None:
            self._connector.close()


def _process(message: InboundMessage, context: _Context) -> str:
    ready = _prepare(message, context)
    if isinstance(ready, str):
        return ready
    result = canonical_upsert(
        connection=context.connection,
        mapped=ready.mapped,
        rules=context.rules,
        payload=ready.record,
    )
    return _after_upsert(ready, result, context)


@dataclass
class _Ready:
    """A message read and mapped, its record ready to be applied."""

    message: InboundMessage
    mapped: MappedRecord
    record: dict[str, Any]


def _prepare(message: InboundMessage, context: _Context) -> _Ready | str:
    """Read the message's record (a webhook names it) and map it: ready to apply, or the state
    it finished in (no mapping, unreadable, gone, unmappable). InboundRetry on a read to try
    again later."""
    if message.state != State.RECEIVED:
        return str(message.state)
    connection = context.connection
    mapping = mapping_load_published(connection_id=connection.pk, object_type=message.object_type)
    if mapping is None:
        reason = f"no published mapping for {message.object_type}"
        mapping_case_open([message], reason)
        return _finish(
            message,
            State.FAILED,
            f"No published mapping for {message.object_type} on this "
            "connection: publish one, then replay the message.",
        )

    record = message.payload
    if message.source != InboundMessage.Source.POLL:
        # Webhooks name what changed; the record itself is read now, so the newest state wins.
        try:
            fetched = context.fetch(message)
        except TransientError as exc:
            raise InboundRetry(str(exc), exc.retry_after) from exc
        except ConnectorError as exc:
            unreadable = FailureCause("unreadable", (), str(exc))
            context.failed([InboundFailure(message, unreadable)])
            return _finish(message, State.FAILED, f"Reading the record failed: {exc}")
        if fetched is None:
            gone = FailureCause("unreadable", (), "the record no longer exists there")
            context.failed([InboundFailure(message, gone)])
            return _finish(message, State.FAILED, "The record no longer exists at the vendor.")
        record = fetched

    mapped = map_inbound(mapping, record)
    # What the record leaves out and its tenant implies (a Xero invoice's legal entity, a
    # contact's currency), as on the poll path.
    tenant_fill([mapped], context.facts(mapping), [record])
    if not mapped.ok:
        errors = "; ".join(str(e) for e in mapped.errors)
        mapping_case_open([message], errors)
        return _finish(message, State.FAILED, f"Mapping failed: {errors}")
    if mapped.source_version and message.source_version < mapped.source_version:
        message.source_version = mapped.source_version
    return _Ready(message, mapped, record)


def _after_upsert(ready: _Ready, result: UpsertResult, context: _Context) -> str:
    """What follows a record applied (or not): its cases, its project link, the workflows
    waiting for it, and its message's outcome."""
    message, mapped, record, connection = (
        ready.message,
        ready.mapped,
        ready.record,
        context.connection,
    )
    if result.state == UpsertState.FAILED:
        cause = result.cause or FailureCause("invalid", (), result.error)
        context.failed([InboundFailure(message, cause, record)])
    elif result.state == UpsertState.APPLIED:
        context.applied(message.object_type, mapped.external_id)
        if result.record_id is not None:
            # A project, or the contract it waits for (integrations/sync/project_links.py).
            projects_link_applied(
                canonical_model=mapped.canonical_model, record_id=result.record_id, payload=record
            )
    if result.state in (UpsertState.APPLIED, UpsertState.SKIPPED):
        # The workflows that start from (or wait for) this record (integrations/sync/steps.py).
        arrival = Arrival(
            connection, mapped.canonical_model, mapped.external_id, mapped.fields, result.record_id
        )
        if context.deferred is not None:
            state, error = message_state(result)
            context.deferred.append((message, arrival, state, error))
            return str(state)
        on_arrival(arrival=arrival)
    return _finish(message, *message_state(result))


def _process_together(messages: Sequence[InboundMessage], context: _Context) -> dict[str, int]:
    """Process a batch's messages in order: each read and mapped, then the records of each run
    of messages of one object applied together (`_upsert_together`), then each one's cases
    and workflows, the workflows of the whole batch handed over at once (``settle``)."""
    outcomes: dict[str, int] = {}

    def count(state: str) -> None:
        outcomes[state] = outcomes.get(state, 0) + 1

    ready: list[_Ready] = []
    for message in messages:
        try:
            prepared = _prepare(message, context)
        except InboundRetry:
            count("retry")  # stays RECEIVED; the sweeper rings for it again
            continue
        if isinstance(prepared, str):
            count(prepared)
        else:
            ready.append(prepared)
    for _, run in groupby(ready, key=lambda item: item.message.object_type):
        group = list(run)
        for item, result in zip(group, _upsert_together(group, context), strict=True):
            count(_after_upsert(item, result, context))
    context.settle()
    return outcomes


def _upsert_together(group: Sequence[_Ready], context: _Context) -> list[UpsertResult]:
    """Apply the records of one object as a poll applies a page (a handful of reads and one
    write for all, the rows locked as the one-record path locks its own), to the same outcome
    as one by one: a record the database refuses fails alone, a copy of a newer one in the
    batch is stale. A batch the database refuses as a whole (a deadlock with another batch
    locking the same records) goes one by one."""
    one_by_one = [
        lambda item=item: canonical_upsert(
            connection=context.connection,
            mapped=item.mapped,
            rules=context.rules,
            payload=item.record,
        )
        for item in group
    ]
    if len(group) == 1 or group[0].mapped.canonical_model in VIRTUAL_MODELS:
        return [upsert() for upsert in one_by_one]
    try:
        with transaction.atomic():
            plan = plan_upsert(
                connection=context.connection,
                mapped=[item.mapped for item in group],
                rules=context.rules,
                lock=True,
                payloads=[item.record for item in group],
            )
            write_upsert(plan)
    except DatabaseError as exc:
        logger.warning("%s records applied together failed (%s): one by one", len(group), exc)
        return [upsert() for upsert in one_by_one]
    return [plan.result_of(n) for n in range(len(group))]


def _finish(message: InboundMessage, state: str, error: str) -> str:
    # Only from RECEIVED: when two workers process one message, the first outcome stands.
    with transaction.atomic():
        InboundMessage.objects.filter(pk=message.pk, state=State.RECEIVED).update(
            state=state,
            error=error[:4000],
            source_version=message.source_version,
            processed_at=timezone.now(),
        )
    return _finished(message, state, error)


def _finish_many(outcomes: Sequence[tuple[InboundMessage, str, str]]) -> None:
    """`_finish` for many messages: one update per outcome, in one transaction."""
    by_outcome: dict[tuple[str, str], list[InboundMessage]] = defaultdict(list)
    for message, state, error in outcomes:
        by_outcome[(state, error)].append(message)
    now = timezone.now()
    with transaction.atomic():
        for (state, error), messages in by_outcome.items():
            InboundMessage.objects.filter(
                pk__in=[m.pk for m in messages], state=State.RECEIVED
            ).update(
                state=state,
                error=error[:4000],
                source_version=Case(
                    *(When(pk=m.pk, then=Value(m.source_version)) for m in messages),
                    output_field=BigIntegerField(),
                ),
                processed_at=now,
            )
    for message, state, error in outcomes:
        _finished(message, state, error)


def _finished(message: InboundMessage, state: str, error: str) -> str:
    """What follows a message's outcome: a failure logged, a replay's original cleared."""
    if state == State.FAILED:
        logger.warning("inbound message %s failed: %s", message.pk, error)
    elif state == State.APPLIED and message.replay_of_id is not None:
        # A replay that went through: the original it stands for is off the case that held it
        # (cases hold the raw message they could not read, which a replay never becomes).
        case_records_clear(
            records=[("inboundmessage", message.replay_of_id)],
            note="Closed automatically: every message it held went through on replay.",
        )
    return str(state)


def mapping_case_open(messages: Sequence[InboundMessage], errors: str) -> None:
    """Open (or join) the integration admin's case for payloads the mapping cannot read, all
    for the same reason: one case write however many messages it holds up."""
    first = messages[0]
    case_open_or_join(
        case_type="mapping_error",
        subject={
            "connection_id": first.connection_id,
            "connection": first.connection.name,
            "object_type": first.object_type,
            "reason": errors,
        },
        records=[
            Blocked(
                record_type="inboundmessage",
                record_id=message.pk,
                label=f"{message.object_type} {message.external_id}",
            )
            for message in messages
        ],
        process="inbound",
        step="mapping",
        connection_id=first.connection_id,
    )


# --- Cases for records that cannot be stored ----------------------------------------------------

# Whose data it is: a record a system sent that Concord cannot store goes to the people who keep
# that system's data (a Xero contact without a currency to finance, a Salesforce contract
# missing a field to sales ops, a Harvest project to PMO). A reference Concord does not know
# yet, or a record it cannot read, is the integration admins'.
INVALID_CASE_BY_ROLE: dict[str, str] = {
    SystemRole.ERP: "erp_record_invalid",
    SystemRole.CRM: "crm_record_invalid",
    SystemRole.PSA: "psa_record_invalid",
}
UNKNOWN_REFERENCE_CASE = "inbound_unknown_reference"
UNREADABLE_CASE = "inbound_record_unreadable"
INBOUND_RECORD_CASES = (*INVALID_CASE_BY_ROLE.values(), UNKNOWN_REFERENCE_CASE)
# Payload keys that name a record for people, in order of preference.
_NAMES = ("Name", "name", "ContractNumber", "InvoiceNumber", "code", "spent_date")


@dataclass(frozen=True)
class InboundFailure:
    """A message that could not be stored, why, and the vendor's record when the message only
    named it (a webhook's), so the case can name it."""

    message: InboundMessage
    cause: FailureCause
    record: Mapping[str, Any] | None = None


def inbound_label(message: InboundMessage, record: Mapping[str, Any] | None = None) -> str:
    """ "Contacts 8f3e... (Acme Ltd)": the object, the vendor's id and, where it has one, the
    record's name (from `record`, else the message's payload)."""
    payload = record if record is not None else message.payload
    payload = payload if isinstance(payload, Mapping) else {}
    name = next((str(payload[k]) for k in _NAMES if payload.get(k)), "")
    label = f"{message.object_type} {message.external_id}".strip()
    return f"{label} ({name[:80]})" if name else label


def _case_type_of(connection: Connection, cause: FailureCause) -> str:
    if cause.kind == "unknown_reference":
        return UNKNOWN_REFERENCE_CASE
    if cause.kind == "unreadable":
        return UNREADABLE_CASE
    return INVALID_CASE_BY_ROLE.get(connection.role, UNKNOWN_REFERENCE_CASE)


def _fields_text(fields: Sequence[str]) -> str:
    named = [f for f in fields if f and f != "__all__"]
    return ", ".join(sorted(named)) or "the record"


def inbound_failure_cases_open(*, failures: Sequence[InboundFailure]) -> None:
    """Every inbound message that cannot be stored opens or joins the case of its root cause
    (connection, object type, fields, problem), which names the record and the fields and holds
    the raw message (replay by case). One case write per root cause, however many messages."""
    groups: dict[tuple[str, int, str, str, str], list[InboundFailure]] = defaultdict(list)
    for failure in failures:
        message, cause = failure.message, failure.cause
        case_type = _case_type_of(message.connection, cause)
        fields = _fields_text(cause.fields)
        # An unknown reference is one root cause per relation, whatever value it names.
        problem = "" if case_type == UNKNOWN_REFERENCE_CASE else cause.problem
        key = (case_type, message.connection_id, message.object_type, fields, problem)
        groups[key].append(failure)
    # Sorted: two processes lock the cases they share in the same order.
    for key in sorted(groups):
        case_type, connection_id, object_type, fields, problem = key
        group = groups[key]
        latest = group[-1]
        connection = latest.message.connection
        subject = {
            "connection_id": connection_id,
            "connection": connection.name,
            "system": connection.get_vendor_display(),
            "object_type": object_type,
            "fields": fields,
            "problem": problem or latest.cause.problem,
            "record": inbound_label(latest.message, latest.record),
        }
        case_open_or_join(
            case_type=case_type,
            subject=subject,
            # A replay that fails again is held as its original (already on the case), so
            # replaying the case sends each record once.
            records=[
                Blocked(
                    record_type="inboundmessage",
                    record_id=f.message.replay_of_id or f.message.pk,
                    label=inbound_label(f.message, f.record),
                )
                for f in group
            ],
            process="inbound",
            step="read" if case_type == UNREADABLE_CASE else "validate",
            connection_id=connection_id,
        )


def inbound_page_cases(
    *, connection: Connection, plan: UpsertPlan, rows: Sequence[Mapping[str, Any]]
) -> None:
    """After a polled page committed (its raw `rows`, in the plan's order): the records the plan
    or the write failed (values refused, a reference not known) open or join the case of their
    root cause, holding their raw rows, as a webhook's would; records applied now take their
    earlier failures off such cases. Payloads the mapping could not read have their own case."""
    unmapped = set(plan.unmapped)
    outcomes = {**plan.notes, **plan.later}
    causes: dict[str, FailureCause] = {}
    applied: list[str] = []
    for i, row in enumerate(rows):
        state, reason = outcomes.get(i, (State.APPLIED, ""))
        if state == State.FAILED and i not in unmapped:
            causes[row["dedupe_key"]] = plan.causes.get(i) or FailureCause("invalid", (), reason)
        elif state in (State.APPLIED, State.CONFLICT):
            applied.append(row["external_id"])
    if causes:
        messages = InboundMessage.objects.filter(
            connection=connection, dedupe_key__in=list(causes), replay_of__isnull=True
        ).select_related("connection")
        inbound_failure_cases_open(
            failures=[InboundFailure(m, causes[m.dedupe_key]) for m in messages]
        )
    if rows:
        inbound_cases_clear_applied(
            connection=connection, object_type=rows[0]["object_type"], external_ids=applied
        )


def inbound_record_cases_open(*, connection: Connection) -> bool:
    """Whether a case about records this connection sent is open (one indexed query)."""
    return ExceptionCase.objects.filter(
        status=ExceptionCase.Status.OPEN,
        case_type__in=INBOUND_RECORD_CASES,
        connection_id=connection.pk,
    ).exists()


def inbound_cases_clear_applied(
    *, connection: Connection, object_type: str, external_ids: Sequence[str]
) -> None:
    """Records now applied (their system sent them again, fixed) take their earlier failed
    messages off the cases that held them; a case with none left closes itself. Costs one
    indexed query when no such case is open for the connection, the usual state."""
    if not external_ids or not inbound_record_cases_open(connection=connection):
        return
    failed = InboundMessage.objects.filter(
        connection=connection,
        object_type=object_type,
        external_id__in=list(external_ids),
        state=State.FAILED,
    ).values_list("pk", flat=True)
    records = [("inboundmessage", pk) for pk in failed]
    if records:
        case_records_clear(
            records=records,
            case_types=INBOUND_RECORD_CASES,
            note="Closed automatically: every record it held has since been applied.",
        )


# Messages processed per batch task. A batch works through its messages one by one (about
# 180 ms each with the workflow step they start, measured under the freshness benchmark's
# load), so the last of a batch waits for all before it: 200 took 38-88 s there, 50 take
# 5-12 s. A batch that claims a full one rings for the next at once (``inbound_process_batch``),
# so a backlog is shared out among the idle worker processes instead of waiting for one. 50 is
# still one Salesforce collection read per object type per batch.
BATCH = 50
# How long a batch holds the messages it claimed: a batch of 50 takes seconds; two
# minutes covers a slow vendor read or two, and a worker killed mid-batch strands its messages
# no longer than that (the sweeper rings for them again).
CLAIM_S = 120


def inbound_claim(*, connection_id: int, limit: int) -> list[InboundMessage]:
    """Claim up to `limit` of this connection's received messages, oldest first, that no other
    batch holds. Every webhook rings for a batch, and the ring's flag is answered as a task
    starts (integrations/sync/ring.py), so a second batch of one connection runs while the
    first works: without a claim both read the same records and apply them twice (104
    Opportunity reads for 80 events)."""
    now = timezone.now()
    with transaction.atomic():
        messages = list(
            InboundMessage.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("connection")
            .filter(connection_id=connection_id, state=State.RECEIVED)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("id")[:limit]
        )
        if messages:
            claimed_until = now + timedelta(seconds=CLAIM_S)
            InboundMessage.objects.filter(pk__in=[m.pk for m in messages]).update(
                claimed_until=claimed_until
            )
            for message in messages:
                message.claimed_until = claimed_until
    return messages


def inbound_process_batch(*, connection_id: int) -> dict[str, int]:
    """Process this connection's received messages, oldest first, that no other batch holds."""
    messages = inbound_claim(connection_id=connection_id, limit=BATCH)
    outcomes: dict[str, int] = {}
    if not messages:
        return outcomes
    if len(messages) == BATCH:
        # More may wait: another worker process takes them now, in parallel with this batch
        # (its claim skips these), rather than after it.
        ring_inbound([connection_id], force=True)
    try:
        # A batch is bounded work that makes thousands of short-lived objects: the cyclic
        # collector, run again once it is over, walked them over and over as it went (a
        # quarter of a milestone batch's CPU, measured).
        with (
            _Context(messages[0].connection) as context,
            routes_remembered(),
            cyclic_gc_paused(),
        ):
            context.prefetch(messages)
            context.deferred = []
            outcomes = _process_together(messages, context)
    finally:
        # What is still received (a read to retry, or the batch failed) is anyone's again.
        InboundMessage.objects.filter(pk__in=[m.pk for m in messages], state=State.RECEIVED).update(
            claimed_until=None
        )
    return outcomes


def inbound_replay(*, messages: list[InboundMessage]) -> list[InboundMessage]:
    """Process stored messages again as new rows linked to the originals."""
    replays = [
        InboundMessage(
            connection_id=m.connection_id,
            source=InboundMessage.Source.REPLAY,
            object_type=m.object_type,
            external_id=m.external_id,
            dedupe_key=m.dedupe_key,
            source_version=m.source_version,
            payload=m.payload,
            replay_of=m,
        )
        for m in messages
    ]
    with transaction.atomic():
        InboundMessage.objects.bulk_create(replays)
        connection_ids = {r.connection_id for r in replays}
        ring_inbound(connection_ids)
    return replays


# Messages one retry of a case replays: 10,000 is a few seconds of processing; a case holding
# more is retried again for the rest.
RETRY_LIMIT = 10_000


def inbound_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry an inbound case (exceptions/retry.py): replay the raw messages it holds, except
    those whose earlier replay is still waiting to be processed."""
    held = inbound_held(exception_case_id=case.pk, limit=RETRY_LIMIT)
    waiting = set(
        InboundMessage.objects.filter(replay_of__in=held, state=State.RECEIVED).values_list(
            "replay_of_id", flat=True
        )
    )
    replays = inbound_replay(messages=[m for m in held if m.pk not in waiting]) if held else []
    return RetryResult(count=len(replays), summary=f"replayed {len(replays)} inbound message(s)")


retry_handler_register(
    case_types=("mapping_error", *INBOUND_RECORD_CASES, UNREADABLE_CASE),
    handler=inbound_case_retry,
)


def inbound_sweep() -> int:
    """Ring again for connections with messages received but not processed for 30 s (a lost
    broker message, or retries that ran out)."""
    stuck = set(
        InboundMessage.objects.filter(
            state=State.RECEIVED, received_at__lt=timezone.now() - timedelta(seconds=30)
        )
        .order_by()
        .values_list("connection_id", flat=True)
        .distinct()
    )
    ring_inbound(stuck, force=True)
    return len(stuck)
