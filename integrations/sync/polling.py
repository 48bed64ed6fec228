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
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db import connection as db
from django.db.models import Case, Value, When
from django.utils import timezone

from integrations.connectors.base import Connector
from integrations.mapping.apply import CompiledMapping, map_inbound
from integrations.mapping.canonical import VIRTUAL_MODELS
from integrations.mapping.ownership import OwnershipRules, load_ownership_rules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import (
    Connection,
    InboundMessage,
    MappingSet,
    PollCursor,
)
from integrations.sync.bulk import copy_insert_values
from integrations.sync.inbound import mapping_case_open
from integrations.sync.pagewriter import PageJob, PageWriter
from integrations.sync.ring import ring_poll
from integrations.sync.upsert import plan_upsert, write_upsert
from integrations.timestamps import micros_to_iso
from integrations.vendors import connector_for

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
            # What the plan already knows (a mapping failure, a stale version, a relation not
            # known, values refused, fields owned elsewhere) is the row's state from the start,
            # with the reason; the rest is applied by the other step.
            "state": plan.notes.get(i, (State.APPLIED, ""))[0],
            "error": plan.notes.get(i, (State.APPLIED, ""))[1][:4000],
            "received_at": now,
            "processed_at": now,
        }
        for i, (external_id, version, record) in enumerate(fresh)
    ]

    unmappable = [raw[i]["dedupe_key"] for i in plan.unmapped]

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
        # What the write found out (the database refused a record) goes on this page's (now
        # committed) raw rows, in one statement; the cursor moves.
        if plan.later:
            found = {raw[i]["dedupe_key"]: outcome for i, outcome in plan.later.items()}
            InboundMessage.objects.filter(
                connection=connection,
                dedupe_key__in=list(found),
                state__in=[State.APPLIED, State.CONFLICT],
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


# Polling complements webhooks (which may be lost or not offered): every 2 minutes (beat's
# `poll_all`, config/celery.py), each connection's changes since its cursor. A polling task that
# waited longer than this is dropped: the next kick-off has queued a fresh one.
POLL_INTERVAL_S = 120


def polling_kick_off() -> int:
    """Ring one polling task per enabled connection; returns how many."""
    ids = list(Connection.objects.filter(enabled=True).values_list("pk", flat=True))
    ring_poll(ids, expires=POLL_INTERVAL_S)
    return len(ids)
