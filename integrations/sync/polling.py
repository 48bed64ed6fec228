"""Scheduled polling: read what changed since the cursor, keep it, map it, upsert it in bulk.

The cursor per (connection, object) holds the newest modification stamp read and the ids read
at exactly that stamp. Reads ask for `>= stamp` (inclusive), so a record sharing the stamp of
the last one read is never skipped; the ids at the stamp are what is not read twice. The cursor
moves only in the transaction that stored the records it covers: a crash re-reads, never skips.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction
from django.db import connection as db
from django.db.models import Case, Value, When
from django.utils import timezone

from integrations.connectors.base import Connector, connector_for, micros_to_iso
from integrations.mapping.apply import CompiledMapping, MappedRecord, map_inbound
from integrations.mapping.canonical import VIRTUAL_MODELS, canonical_models
from integrations.mapping.ownership import OwnershipRules, load_ownership_rules, split_by_owner
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, CrossReference, InboundMessage, PollCursor
from integrations.models.base import FieldSource, with_sources
from integrations.sync.bulk import copy_insert_values
from integrations.sync.inbound import mapping_case_open
from integrations.sync.pagewriter import PageJob, PageWriter
from integrations.sync.upsert import (
    STALE_REASON,
    ResolvePlans,
    UnresolvedReference,
    canonical_upsert,
    is_stale,
    message_state,
    relation_ids,
    resolve_fields,
)

logger = logging.getLogger(__name__)
State = InboundMessage.State


@dataclass
class PollReport:
    read: int = 0
    applied: int = 0
    stale: int = 0
    failed: int = 0
    conflicts: int = 0
    pages: int = 0


def poll_object(
    *, connection_id: int, object_type: str, page_size: int | None = None
) -> PollReport:
    """Read every change of one object since the cursor and apply it. ``page_size``: the
    vendor's page size for this read (tests), else the connector's (the vendor's maximum)."""
    report = PollReport()
    connection = Connection.objects.filter(pk=connection_id, enabled=True).first()
    if connection is None:
        return report
    mapping = mapping_load_published(connection_id=connection_id, object_type=object_type)
    if mapping is None:
        logger.warning("no published mapping for %s on %s: not polled", object_type, connection)
        return report
    cursor, _ = PollCursor.objects.get_or_create(connection=connection, object_type=object_type)
    PollCursor.objects.filter(pk=cursor.pk).update(last_polled_at=timezone.now())
    rules = load_ownership_rules()
    connector = connector_for(connection, **({"page_size": page_size} if page_size else {}))
    writer = PageWriter()
    try:
        with _cyclic_gc_paused():
            _poll(connector, connection, mapping, cursor, rules, report, writer)
    finally:
        writer.close()
        connector.close()
    return report


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pages of parsed JSON are hundreds of thousands of objects, none of them in a reference
    cycle; each allocation burst would start the cyclic collector, which then walks them all
    (a quarter of a poll's CPU time). Reference counting still frees everything; the collector
    runs again as soon as the poll is over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _poll(
    connector: Connector,
    connection: Connection,
    mapping: CompiledMapping,
    cursor: PollCursor,
    rules: OwnershipRules,
    report: PollReport,
    writer: PageWriter,
) -> None:
    since = micros_to_iso(int(cursor.position)) if cursor.position else None
    seen_at_position = set(cursor.ids_at_position)
    position = int(cursor.position or 0)
    stamp = int(cursor.position) if cursor.position else -1  # the stamp `seen_at_position` is at
    # Vendors that list newest first (Harvest) cannot move the cursor until the read is done.
    per_page = connector.ordered_reads
    pending: list[tuple[str, int]] = []
    outcomes: list[dict[str, Any]] = []
    for records in connector.read_changed(cursor.object_type, since):
        report.pages += 1
        fresh = []
        for record in records:
            external_id, version = connector.version_of(cursor.object_type, record)
            if version == stamp and external_id in seen_at_position:
                continue  # read at the cursor's stamp last time
            fresh.append((external_id, version, record))
        report.read += len(fresh)
        pending.extend((external_id, version) for external_id, version, _ in fresh)
        advance = None
        if per_page:
            position, seen_at_position = _next_position(pending, position, seen_at_position)
            stamp, advance, pending = position, (position, sorted(seen_at_position)), []
        outcomes.append(_submit_page(writer, connection, mapping, cursor, fresh, rules, advance))
    if pending:
        position, seen_at_position = _next_position(pending, position, seen_at_position)
        final = (position, sorted(seen_at_position))
        # A final step: it runs once every page before it has committed.
        writer.submit(PageJob(steps=[], final=lambda: _save_cursor(cursor, *final)))
    writer.drain()
    for outcome in outcomes:
        report.applied += outcome["applied"]
        report.stale += outcome["stale"]
        report.conflicts += outcome["conflicts"]
        report.failed += len(outcome["failed"])
    PollCursor.objects.filter(pk=cursor.pk).update(last_success_at=timezone.now())


def _next_position(
    read: list[tuple[str, int]], position: int, seen: set[str]
) -> tuple[int, set[str]]:
    """The cursor after these (id, version) reads: the newest stamp and the ids read at it."""
    newest = max((version for _, version in read), default=position)
    if newest > position:
        position, seen = newest, set()
    return position, seen | {external_id for external_id, version in read if version == position}


def _save_cursor(cursor: PollCursor, position: int, seen: list[str]) -> None:
    PollCursor.objects.filter(pk=cursor.pk).update(position=str(position), ids_at_position=seen)
    cursor.position, cursor.ids_at_position = str(position), seen


def _submit_page(
    writer: PageWriter,
    connection: Connection,
    mapping: CompiledMapping,
    cursor: PollCursor,
    fresh: Sequence[tuple[str, int, dict[str, Any]]],
    rules: OwnershipRules,
    advance: tuple[int, list[str]] | None,
) -> dict[str, Any]:
    """Map a page, prepare its writes from what is committed, and hand them to the writer.
    Returns the page's outcome counts, complete once the writer has committed the page."""
    object_type = cursor.object_type
    mapped = [map_inbound(mapping, record) for _, _, record in fresh]
    ids = frozenset(external_id for external_id, _, _ in fresh)
    writer.wait_for(ids)  # the plan reads these records' cross-references: see them committed
    plan = plan_upsert(connection=connection, mapped=mapped, rules=rules)
    now = timezone.now()
    raw = [
        {
            "connection_id": connection.pk,
            "source": InboundMessage.Source.POLL,
            "object_type": object_type,
            "external_id": external_id,
            "dedupe_key": f"poll:{object_type}:{external_id}:{version}"[:128],
            "source_version": version,
            "payload": record,
            # What the plan already knows (a mapping failure, a stale version) is the row's
            # state from the start, with the reason; the rest is applied by the other step.
            "state": plan.notes.get(i, (State.APPLIED, ""))[0],
            "error": plan.notes.get(i, (State.APPLIED, ""))[1][:4000],
            "received_at": now,
            "processed_at": now,
        }
        for i, (external_id, version, record) in enumerate(fresh)
    ]

    unmappable = [row["dedupe_key"] for row in raw if row["state"] == State.FAILED]

    def finish() -> None:
        # After both steps committed: payloads the mapping cannot read open (or join) the
        # integration admin's case, one per reason, naming their kept raw records, as a
        # webhook's would.
        if unmappable:
            by_reason: dict[str, list[InboundMessage]] = defaultdict(list)
            for message in InboundMessage.objects.filter(
                connection=connection, dedupe_key__in=unmappable, replay_of__isnull=True
            ).select_related("connection"):
                by_reason[plan.outcome["failed"][message.external_id]].append(message)
            for reason, messages in by_reason.items():
                mapping_case_open(messages, reason)
        # What the one-by-one path found out (a failure, a conflict, a version gone stale) goes
        # on this page's (now committed) raw rows, in one statement; the cursor moves.
        if plan.later:
            found = {raw[i]["dedupe_key"]: outcome for i, outcome in plan.later.items()}
            InboundMessage.objects.filter(
                connection=connection,
                dedupe_key__in=list(found),
                state=State.APPLIED,
                replay_of__isnull=True,
            ).update(
                state=Case(*(When(dedupe_key=k, then=Value(s)) for k, (s, _) in found.items())),
                error=Case(
                    *(When(dedupe_key=k, then=Value(r[:4000])) for k, (_, r) in found.items())
                ),
            )
        if advance is not None:
            _save_cursor(cursor, *advance)

    writer.submit(
        PageJob(
            steps=[lambda: _keep_raw(raw), lambda: write_upsert(plan)],
            final=finish,
            external_ids=ids,
        )
    )
    return plan.outcome


def _keep_raw(rows: list[dict[str, Any]]) -> None:
    """Store the raw polled records. With COPY on PostgreSQL: the payloads are most of the
    bytes, and COPY streams them without per-value quoting in Python. A record read twice (a
    poll repeated after a crash) makes COPY fail on the unique key; the page then goes through
    INSERT ... ON CONFLICT DO NOTHING."""
    if db.vendor == "postgresql":
        try:
            with transaction.atomic():
                copy_insert_values(InboundMessage, rows)
            return
        except IntegrityError:
            pass
    InboundMessage.objects.bulk_create(
        [InboundMessage(**row) for row in rows], batch_size=1000, ignore_conflicts=True
    )


@dataclass
class UpsertPlan:
    """One page's upserts, decided from what was committed when it was planned."""

    connection: Connection
    rules: OwnershipRules
    model: type[models.Model] | None = None
    content_type: ContentType | None = None
    creates: list[tuple[MappedRecord, dict[str, Any]]] = field(default_factory=list)
    updates: list[tuple[MappedRecord, Any]] = field(default_factory=list)
    xrefs: dict[str, CrossReference] = field(default_factory=dict)
    one_by_one: list[MappedRecord] = field(default_factory=list)
    outcome: dict[str, Any] = field(
        default_factory=lambda: {"applied": 0, "stale": 0, "conflicts": 0, "failed": {}}
    )
    # By position in the page: the records not to be applied, known when planning (state, why).
    notes: dict[int, tuple[str, str]] = field(default_factory=dict)
    # By position in the page: what the one-by-one path found, once written (state, why).
    later: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Where each mapped record stands in the page (by object id).
    positions: dict[int, int] = field(default_factory=dict)


def plan_upsert(
    *, connection: Connection, mapped: Sequence[MappedRecord], rules: OwnershipRules
) -> UpsertPlan:
    """Decide, with a handful of reads for the whole page, what each record needs. The common
    case (new records, or newer versions of records whose fields this system owns) is written
    in bulk; a record with a conflict or an unknown reference takes the one-by-one path, which
    explains itself."""
    plan = UpsertPlan(connection=connection, rules=rules)
    counts = plan.outcome
    position = plan.positions = {id(m): i for i, m in enumerate(mapped)}
    good = [m for m in mapped if m.ok]
    for i, m in enumerate(mapped):
        if not m.ok:
            reason = "; ".join(str(e) for e in m.errors)
            counts["failed"][m.external_id] = reason
            plan.notes[i] = (State.FAILED, f"Mapping failed: {reason}")
    if not good:
        return plan
    model_name = good[0].canonical_model
    if model_name in VIRTUAL_MODELS:
        return plan
    model = plan.model = canonical_models()[model_name]
    content_type = plan.content_type = ContentType.objects.get_for_model(model)

    # Newest version per record within the page.
    latest: dict[str, MappedRecord] = {}
    stale = (State.STALE, STALE_REASON)
    for m in good:
        before = latest.get(m.external_id)
        if before is None or m.source_version > before.source_version:
            latest[m.external_id] = m
            if before is not None:
                plan.notes[position[id(before)]] = stale
        else:
            plan.notes[position[id(m)]] = stale
    xrefs = plan.xrefs = {
        x.external_id: x
        for x in CrossReference.objects.filter(
            connection=connection, content_type=content_type, external_id__any=list(latest)
        )
    }
    fresh = []
    for external_id, m in latest.items():
        xref = xrefs.get(external_id)
        if is_stale(m.source_version, xref):
            counts["stale"] += 1
            plan.notes[position[id(m)]] = stale
        else:
            fresh.append(m)
    counts["stale"] += len(good) - len(latest)

    relations = relation_ids(connection, model, [m.fields for m in fresh])
    known = [xrefs[m.external_id].object_id for m in fresh if m.external_id in xrefs]
    existing = {r.pk: r for r in model._default_manager.filter(pk__any=known)} if known else {}
    stamp_role = connection.role
    plans: ResolvePlans = {}
    for m in fresh:
        try:
            fields = resolve_fields(connection, model, m.fields, relations, plans)
        except UnresolvedReference:
            plan.one_by_one.append(m)  # the one-by-one path fails it with that reason
            continue
        xref = xrefs.get(m.external_id)
        record: Any = existing.get(xref.object_id) if xref is not None else None
        source = FieldSource(stamp_role, connection.pk, m.source_version)
        if record is None:
            # A new record: split_by_owner applies every field when nothing exists yet (the
            # owner's next update replaces what a non-owner filled in), so no split is needed.
            plan.creates.append(
                (
                    m,
                    {
                        **fields,
                        "source_system": stamp_role,
                        "source_version": m.source_version,
                        "field_sources": with_sources(None, fields, source),
                    },
                )
            )
            continue
        current = {name: getattr(record, name) for name in fields}
        decision = split_by_owner(
            rules, object_type=model_name, source_role=stamp_role, fields=fields, current=current
        )
        if decision.conflicts:
            plan.one_by_one.append(m)
            continue
        for name, value in decision.applied.items():
            setattr(record, name, value)
        record.field_sources = with_sources(record.field_sources, decision.applied, source)
        record.source_system = stamp_role
        record.source_version = m.source_version
        plan.updates.append((m, record))
    return plan


def write_upsert(plan: UpsertPlan) -> None:
    """Carry a plan out (inside the caller's transaction): the bulk writes in a savepoint, and
    when one bad row spoils them, those records one at a time, so the good ones land and each
    bad one fails with its own reason; then the one-by-one records."""
    counts = plan.outcome
    one_by_one = list(plan.one_by_one)
    if plan.model is not None and (plan.creates or plan.updates):
        try:
            with transaction.atomic():
                _write(plan)
            counts["applied"] += len(plan.creates) + len(plan.updates)
        except IntegrityError:
            one_by_one.extend(m for m, _ in plan.creates)
            one_by_one.extend(m for m, _ in plan.updates)
    for m in one_by_one:
        result = canonical_upsert(connection=plan.connection, mapped=m, rules=plan.rules)
        state, reason = message_state(result)
        if result.state == "applied":
            counts["applied"] += 1
            counts["conflicts"] += bool(result.conflicts)
        elif result.state == "stale":
            counts["stale"] += 1
        elif result.state == "failed":
            counts["failed"][m.external_id] = result.error
        if state != State.APPLIED:
            plan.later[plan.positions[id(m)]] = (state, reason)


def _write(plan: UpsertPlan) -> None:
    model, content_type, connection = plan.model, plan.content_type, plan.connection
    assert model is not None  # noqa: S101 - a plan with writes has both
    assert content_type is not None  # noqa: S101
    now = timezone.now()
    new_ids = copy_insert_values(model, [row for _, row in plan.creates])
    if plan.updates:
        names = sorted({f for m, _ in plan.updates for f in _field_names(m)})
        model._default_manager.bulk_update(
            [r for _, r in plan.updates],
            [*names, "source_system", "source_version", "field_sources", "updated_at"],
            batch_size=1000,
        )
    copy_insert_values(
        CrossReference,
        [
            {
                "content_type_id": content_type.pk,
                "object_id": pk,
                "connection_id": connection.pk,
                "external_id": m.external_id,
                "external_version": str(m.source_version),
                "last_synced_at": now,
            }
            for (m, _), pk in zip(plan.creates, new_ids, strict=True)
        ],
    )
    changed = []
    for m, _ in plan.updates:
        xref = plan.xrefs[m.external_id]
        xref.external_version = str(m.source_version)
        xref.last_synced_at = now
        changed.append(xref)
    CrossReference.objects.bulk_update(
        changed, ["external_version", "last_synced_at"], batch_size=1000
    )


def _field_names(mapped: MappedRecord) -> list[str]:
    names = []
    for name in mapped.fields:
        relation, _, attr = name.partition("__")
        names.append(relation if attr else name)
    return names


# Records refer to others (a time entry to its project and worker), so a connection's objects are
# polled in this order of their canonical models, one after the other.
DEPENDENCY_ORDER = (
    "legalentity",
    "taxrate",
    "exchangerate",
    "customer",
    "resource",
    "contract",
    "ratecard",
    "project",
    "assignment",
    "milestone",
    "timeentry",
    "expense",
    "invoice",
    "payment",
)


def poll_connection(*, connection_id: int) -> dict[str, PollReport]:
    """Poll every object of a connection that has a published mapping, in dependency order."""
    from integrations.models import MappingSet

    published = list(
        MappingSet.objects.filter(
            connection_id=connection_id, status=MappingSet.Status.PUBLISHED
        ).values_list("object_type", "canonical_model")
    )
    rank = {name: index for index, name in enumerate(DEPENDENCY_ORDER)}
    published.sort(key=lambda pair: rank.get(pair[1], len(rank)))
    return {
        object_type: poll_object(connection_id=connection_id, object_type=object_type)
        for object_type, canonical_model in published
        if canonical_model not in VIRTUAL_MODELS
    }
