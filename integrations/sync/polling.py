"""Scheduled polling: read what changed since the cursor, keep it, map it, upsert it in bulk.

The cursor per (connection, object) holds the newest modification stamp read and the ids read
at exactly that stamp. Reads ask for `>= stamp` (inclusive), so a record sharing the stamp of
the last one read is never skipped; the ids at the stamp are what is not read twice. The cursor
moves only in the transaction that stored the records it covers: a crash re-reads, never skips.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction
from django.db import connection as db
from django.utils import timezone

from integrations.connectors.base import Connector, connector_for, micros_to_iso
from integrations.mapping.apply import CompiledMapping, MappedRecord, map_inbound
from integrations.mapping.canonical import EXTERNAL_ID, VIRTUAL_MODELS, canonical_models
from integrations.mapping.ownership import OwnershipRules, load_ownership_rules, split_by_owner
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, CrossReference, InboundMessage, PollCursor
from integrations.sync.bulk import copy_insert
from integrations.sync.upsert import canonical_upsert

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


def poll_object(*, connection_id: int, object_type: str) -> PollReport:
    """Read every change of one object since the cursor and apply it."""
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
    connector = connector_for(connection)
    try:
        _poll(connector, connection, mapping, cursor, rules, report)
    finally:
        connector.close()
    return report


def _poll(
    connector: Connector,
    connection: Connection,
    mapping: CompiledMapping,
    cursor: PollCursor,
    rules: OwnershipRules,
    report: PollReport,
) -> None:
    since = micros_to_iso(int(cursor.position)) if cursor.position else None
    seen_at_position = set(cursor.ids_at_position)
    position = int(cursor.position or 0)
    # Vendors that list newest first (Harvest) cannot move the cursor until the read is done.
    per_page = connector.ordered_reads
    pending: list[tuple[str, int]] = []
    for records in connector.read_changed(cursor.object_type, since):
        report.pages += 1
        fresh = []
        for record in records:
            external_id, version = connector.version_of(cursor.object_type, record)
            if version == int(cursor.position or -1) and external_id in seen_at_position:
                continue  # read at the cursor's stamp last time
            fresh.append((external_id, version, record))
        report.read += len(fresh)
        with transaction.atomic():
            _apply_page(connection, mapping, cursor.object_type, fresh, rules, report)
            pending.extend((external_id, version) for external_id, version, _ in fresh)
            if per_page:
                position, seen_at_position = _advance(cursor, pending, position, seen_at_position)
                pending = []
    if pending:
        with transaction.atomic():
            _advance(cursor, pending, position, seen_at_position)
    PollCursor.objects.filter(pk=cursor.pk).update(last_success_at=timezone.now())


def _advance(
    cursor: PollCursor, read: list[tuple[str, int]], position: int, seen: set[str]
) -> tuple[int, set[str]]:
    newest = max((version for _, version in read), default=position)
    if newest > position:
        position, seen = newest, set()
    seen |= {external_id for external_id, version in read if version == position}
    PollCursor.objects.filter(pk=cursor.pk).update(
        position=str(position), ids_at_position=sorted(seen)
    )
    cursor.position, cursor.ids_at_position = str(position), sorted(seen)
    return position, seen


def _apply_page(
    connection: Connection,
    mapping: CompiledMapping,
    object_type: str,
    fresh: Sequence[tuple[str, int, dict[str, Any]]],
    rules: OwnershipRules,
    report: PollReport,
) -> None:
    """Keep the raw records, then map and upsert them, in bulk where nothing is unusual."""
    messages = [
        InboundMessage(
            connection=connection,
            source=InboundMessage.Source.POLL,
            object_type=object_type,
            external_id=external_id,
            dedupe_key=f"poll:{object_type}:{external_id}:{version}"[:128],
            source_version=version,
            payload=record,
            state=State.APPLIED,
            processed_at=timezone.now(),
        )
        for external_id, version, record in fresh
    ]
    _keep_raw(messages)
    mapped = [map_inbound(mapping, record) for _, _, record in fresh]
    outcome = bulk_upsert(connection=connection, mapped=mapped, rules=rules)
    report.applied += outcome["applied"]
    report.stale += outcome["stale"]
    report.conflicts += outcome["conflicts"]
    report.failed += len(outcome["failed"])
    for external_id, error in outcome["failed"].items():
        InboundMessage.objects.filter(
            connection=connection,
            object_type=object_type,
            external_id=external_id,
            state=State.APPLIED,
            replay_of__isnull=True,
        ).filter(dedupe_key__startswith=f"poll:{object_type}:{external_id}:").update(
            state=State.FAILED, error=error[:4000]
        )


def _keep_raw(messages: list[InboundMessage]) -> None:
    """Store the raw polled records. On PostgreSQL with COPY (the payloads are most of the bytes:
    COPY streams them without per-value quoting in Python, several times faster than INSERT);
    a record read twice (a poll repeated after a crash) makes COPY fail on the unique key, and
    the page then goes through INSERT ... ON CONFLICT DO NOTHING."""
    if db.vendor == "postgresql" and messages:
        columns = [
            "connection_id",
            "source",
            "object_type",
            "external_id",
            "dedupe_key",
            "source_version",
            "payload",
            "state",
            "error",
            "received_at",
            "processed_at",
        ]
        now = timezone.now()
        try:
            with transaction.atomic(), db.cursor() as cursor:
                copy_sql = f"COPY integrations_inboundmessage ({', '.join(columns)}) FROM STDIN"
                with cursor.cursor.copy(copy_sql) as copy:
                    for m in messages:
                        copy.write_row(
                            (
                                m.connection_id,
                                m.source,
                                m.object_type,
                                m.external_id,
                                m.dedupe_key,
                                m.source_version,
                                json.dumps(m.payload),
                                m.state,
                                "",
                                now,
                                now,
                            )
                        )
            return
        except IntegrityError:
            pass
    InboundMessage.objects.bulk_create(messages, batch_size=1000, ignore_conflicts=True)


def bulk_upsert(
    *, connection: Connection, mapped: Sequence[MappedRecord], rules: OwnershipRules
) -> dict[str, Any]:
    """Upsert many mapped records of one type. The common case (new records, or newer versions
    of records whose fields this system owns) is a handful of queries for the whole page; a
    record with a conflict, a mapping error or a database refusal takes the one-by-one path,
    which explains itself."""
    counts: dict[str, Any] = {"applied": 0, "stale": 0, "conflicts": 0, "failed": {}}
    good = [m for m in mapped if m.ok]
    for m in mapped:
        if not m.ok:
            counts["failed"][m.external_id] = "; ".join(str(e) for e in m.errors)
    if not good:
        return counts
    model_name = good[0].canonical_model
    if model_name in VIRTUAL_MODELS:
        return counts
    model = canonical_models()[model_name]
    content_type = ContentType.objects.get_for_model(model)

    # Newest version per record within the page.
    latest: dict[str, MappedRecord] = {}
    for m in good:
        if m.external_id not in latest or m.source_version > latest[m.external_id].source_version:
            latest[m.external_id] = m
    xrefs = {
        x.external_id: x
        for x in CrossReference.objects.filter(
            connection=connection, content_type=content_type, external_id__in=list(latest)
        )
    }
    fresh = []
    for external_id, m in latest.items():
        xref = xrefs.get(external_id)
        if xref is not None and m.source_version <= int(xref.external_version or 0):
            counts["stale"] += 1
        else:
            fresh.append(m)
    counts["stale"] += len(good) - len(latest)

    relations = _relations(connection, model, fresh)
    existing = model._default_manager.in_bulk(
        [xrefs[m.external_id].object_id for m in fresh if m.external_id in xrefs]
    )
    creates: list[tuple[MappedRecord, Any]] = []
    updates: list[tuple[MappedRecord, Any]] = []
    one_by_one: list[MappedRecord] = []
    stamp_role = connection.role
    for m in fresh:
        fields = _resolved(m, relations)
        if fields is None:
            one_by_one.append(m)  # an unknown reference: the slow path says which
            continue
        xref = xrefs.get(m.external_id)
        record: Any = existing.get(xref.object_id) if xref is not None else None
        current = {name: getattr(record, name) for name in fields} if record is not None else None
        decision = split_by_owner(
            rules, object_type=model_name, source_role=stamp_role, fields=fields, current=current
        )
        if decision.conflicts:
            one_by_one.append(m)
            continue
        stamp = {"system": stamp_role, "connection": connection.pk, "version": m.source_version}
        if record is None:
            record = model(**decision.applied)
            record.field_sources = dict.fromkeys(decision.applied, stamp)
            creates.append((m, record))
        else:
            for name, value in decision.applied.items():
                setattr(record, name, value)
            record.field_sources = {
                **(record.field_sources or {}),
                **dict.fromkeys(decision.applied, stamp),
            }
            updates.append((m, record))
        record.source_system = stamp_role
        record.source_version = m.source_version

    try:
        with transaction.atomic():
            _write(connection, content_type, model, creates, updates, xrefs)
        counts["applied"] += len(creates) + len(updates)
    except IntegrityError:
        # One bad row spoils a bulk statement: redo this page one record at a time, so the good
        # ones land and each bad one fails with its own reason.
        one_by_one.extend(m for m, _ in creates + updates)

    for m in one_by_one:
        result = canonical_upsert(connection=connection, mapped=m, rules=rules)
        if result.state == "applied":
            counts["applied"] += 1
            counts["conflicts"] += bool(result.conflicts)
        elif result.state == "stale":
            counts["stale"] += 1
        elif result.state == "failed":
            counts["failed"][m.external_id] = result.error
    return counts


def _write(
    connection: Connection,
    content_type: ContentType,
    model: type[models.Model],
    creates: list[tuple[MappedRecord, Any]],
    updates: list[tuple[MappedRecord, Any]],
    xrefs: dict[str, CrossReference],
) -> None:
    now = timezone.now()
    copy_insert(model, [r for _, r in creates])
    if updates:
        names = sorted({f for m, _ in updates for f in _field_names(model, m)})
        model._default_manager.bulk_update(
            [r for _, r in updates],
            [*names, "source_system", "source_version", "field_sources", "updated_at"],
            batch_size=1000,
        )
    copy_insert(
        CrossReference,
        [
            CrossReference(
                content_type=content_type,
                object_id=record.pk,
                connection=connection,
                external_id=m.external_id,
                external_version=str(m.source_version),
                last_synced_at=now,
                created_at=now,
            )
            for m, record in creates
        ],
    )
    changed = []
    for m, _ in updates:
        xref = xrefs[m.external_id]
        xref.external_version = str(m.source_version)
        xref.last_synced_at = now
        changed.append(xref)
    CrossReference.objects.bulk_update(
        changed, ["external_version", "last_synced_at"], batch_size=1000
    )


def _field_names(model: type[models.Model], mapped: MappedRecord) -> list[str]:
    names = []
    for name in mapped.fields:
        relation, _, attr = name.partition("__")
        names.append(relation if attr else name)
    return names


def _relations(
    connection: Connection, model: type[models.Model], mapped: Sequence[MappedRecord]
) -> dict[tuple[str, str], dict[str, int]]:
    """For each `relation__attr` field of the page, vendor value -> canonical id, in one query
    per relation."""
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for m in mapped:
        for name, value in m.fields.items():
            relation, _, attr = name.partition("__")
            if attr and value not in (None, ""):
                wanted[(relation, attr)].add(str(value))
    found: dict[tuple[str, str], dict[str, int]] = {}
    rows: Any
    for (relation, attr), values in wanted.items():
        related = model._meta.get_field(relation).related_model
        assert isinstance(related, type)  # noqa: S101 - a mapped relation is a ForeignKey
        if attr == EXTERNAL_ID:
            rows = CrossReference.objects.filter(
                connection=connection,
                content_type=ContentType.objects.get_for_model(related),
                external_id__in=values,
            ).values_list("external_id", "object_id")
        else:
            rows = related._default_manager.filter(**{f"{attr}__in": values}).values_list(
                attr, "pk"
            )
        found[(relation, attr)] = {str(v): pk for v, pk in rows}
    return found


def _resolved(
    mapped: MappedRecord, relations: dict[tuple[str, str], dict[str, int]]
) -> dict[str, Any] | None:
    fields: dict[str, Any] = {}
    for name, value in mapped.fields.items():
        relation, _, attr = name.partition("__")
        if not attr:
            fields[name] = value
        elif value in (None, ""):
            fields[f"{relation}_id"] = None
        else:
            target = relations[(relation, attr)].get(str(value))
            if target is None:
                return None
            fields[f"{relation}_id"] = target
    return fields


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
