"""Scheduled polling: read what changed since the cursor, keep it, map it, upsert it in bulk.

The cursor per (connection, object) holds the newest modification stamp read and the ids read
at exactly that stamp. Reads ask for `>= stamp` (inclusive), so a record sharing the stamp of
the last one read is never skipped; the ids at the stamp are what is not read twice. The cursor
moves only in the transaction that stored the records it covers: a crash re-reads, never skips.

Reads that finish (a long read under a steady failure rate):

- A page whose read fails (a timeout, a 5xx, a 429) is read again where it failed, after a
  backoff that honours Retry-After, up to ``PAGE_ATTEMPTS`` times in a row; then the poll goes
  on from that page. Starting over instead would almost never finish: at 15% failed reads, a
  50-page read succeeds whole 0.85^50 = 0.03% of the time.
- Vendors that list in stamp order (Xero, Salesforce) move the cursor page by page, so a poll
  that dies resumes at the last page stored. Harvest lists newest first: its cursor can only
  move to the newest stamp once every page is stored. Reading oldest first by windows of
  ``updated_since`` is not possible (Harvest has no upper bound and no sort), so the page
  position is stored instead, alongside the stamp (``PollCursor.resume``: the next page's
  ``links.next`` query, the newest stamp read so far and the ids at it), in the transaction of
  each page. A poll killed mid-read starts at the page after the last one stored, with the same
  ``updated_since``. Cursor paging (a keyset, ``after id``) is exact; page numbers (time
  entries have no cursor) stay right when records are created or changed meanwhile (they only
  push records to later pages: read twice, deduplicated), and a record deleted meanwhile moves
  one record to the page before, which a resumed read may then miss until its next change.
- One object type's failure never skips the others: ``poll_connection`` polls each on its own.
- A failure is recorded on its cursor (``last_error``, ``failing_since``), shown with the
  connection's health on the integration admin page and in the API; a cursor that has not
  succeeded within ``poll_stale_after_s()`` opens a ``poll_stale`` case (``poll_stale_check``, from
  beat), which closes when the poll succeeds again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db import connection as db
from django.db.models import Case, Value, When
from django.utils import timezone

from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.connectors.base import Connector, Page
from integrations.connectors.errors import ConnectorError, TransientError
from integrations.mapping.apply import CompiledMapping, MappedRecord, map_inbound
from integrations.mapping.canonical import VIRTUAL_MODELS
from integrations.mapping.ownership import OwnershipRules, load_ownership_rules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import (
    Connection,
    InboundMessage,
    MappingSet,
    PollCursor,
)
from integrations.selectors import POLL_INTERVAL_S, poll_stale_after_s, poll_stale_q
from integrations.sync.bulk import copy_insert_values, cyclic_gc_paused
from integrations.sync.identity import Rule, match_rules_load
from integrations.sync.inbound import inbound_page_cases, mapping_case_open
from integrations.sync.pagewriter import PageJob, PageWriter
from integrations.sync.project_links import projects_link
from integrations.sync.ring import ring_poll
from integrations.sync.steps import Arrival, arrival_awaited, on_arrival, run_after_page
from integrations.sync.tenancy import TenantFacts, tenant_facts, tenant_fill
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
    retries: int = 0  # page reads repeated after a transient failure
    error: str = ""  # why the poll of this object stopped (poll_connection carries on)


# A failed page read is tried again up to this many times in a row (then the poll stops and
# the next one resumes there). At a 15% failure rate a page fails 8 times running with
# p = 0.15^8 = 2.6e-7. The waits double from RETRY_BASE_S (0.25, 0.5, 1, 2, 4, 8, 16 s: at most
# ~32 s for one page, as patient as before) up to RETRY_CAP_S: most failures are single, and
# the first wait was 1 s (a faulted 100k run's first polls took twice a clean run's); a vendor's
# Retry-After is waited out if it is longer, unless it exceeds RETRY_AFTER_MAX_S (Xero's day
# limit says hours): then the poll stops, and beat's next poll tries again. Settings
# CONCORD_POLL_PAGE_ATTEMPTS, CONCORD_POLL_RETRY_BASE_S override them (tests).
PAGE_ATTEMPTS = 8
RETRY_BASE_S = 0.25
RETRY_CAP_S = 30.0
RETRY_AFTER_MAX_S = 60.0
_sleep = time.sleep  # the backoff's wait (tests record it instead)


def poll_object(
    *, connection_id: int, object_type: str, page_size: int | None = None
) -> PollReport:
    """Read every change of one object since the cursor and apply it. ``page_size``: the
    vendor's page size for this read (tests), else the connector's (the vendor's maximum).
    A failure is recorded on the cursor, then raised."""
    report = PollReport()
    _poll_object(report, connection_id, object_type, page_size)
    return report


def _poll_object(
    report: PollReport, connection_id: int, object_type: str, page_size: int | None
) -> None:
    connection = Connection.objects.filter(pk=connection_id, enabled=True).first()
    if connection is None:
        return
    mapping = mapping_load_published(connection_id=connection_id, object_type=object_type)
    if mapping is None:
        logger.warning("no published mapping for %s on %s: not polled", object_type, connection)
        return
    if mapping.canonical_model in VIRTUAL_MODELS and not arrival_awaited(mapping.canonical_model):
        return  # written only (a project's dimension), or read by no workflow
    cursor, _ = PollCursor.objects.get_or_create(connection=connection, object_type=object_type)
    PollCursor.objects.filter(pk=cursor.pk).update(last_polled_at=timezone.now())
    try:
        rules = load_ownership_rules()
        # Setting CONCORD_POLL_PAGE_SIZE (tests: many pages from a small firm) else the vendor's.
        page_size = page_size or int(getattr(settings, "CONCORD_POLL_PAGE_SIZE", 0)) or None
        connector = connector_for(connection, **({"page_size": page_size} if page_size else {}))
        writer = PageWriter()
        try:
            facts = tenant_facts(connection=connection, connector=connector, mapping=mapping)
            if mapping.canonical_model in VIRTUAL_MODELS:
                # No table: the records go to the workflow that waits for them.
                _poll_arrivals(connector, connection, mapping, cursor, report, facts)
            else:
                # The object's match rules, once for every page (identity resolution).
                matching = match_rules_load(mapping.canonical_model)
                with cyclic_gc_paused():
                    _poll(
                        connector,
                        connection,
                        mapping,
                        cursor,
                        rules,
                        report,
                        writer,
                        facts,
                        matching,
                    )
        finally:
            writer.close()
            connector.close()
    except Exception as exc:
        poll_failure_record(cursor_id=cursor.pk, error=_describe(exc))
        raise
    poll_success_record(cursor_id=cursor.pk)


def _describe(exc: BaseException) -> str:
    """What the admin page shows: the stable phrase and the vendor's own words."""
    text = str(exc) or type(exc).__name__
    vendor = getattr(exc, "vendor_message", "")
    return f"{text} | vendor: {vendor}" if vendor else text


def _poll(
    connector: Connector,
    connection: Connection,
    mapping: CompiledMapping,
    cursor: PollCursor,
    rules: OwnershipRules,
    report: PollReport,
    writer: PageWriter,
    facts: TenantFacts,
    matching: tuple[Rule, ...],
) -> None:
    since = micros_to_iso(int(cursor.position)) if cursor.position else None
    # The records the last poll read at the cursor's stamp (read again by `>=`: skipped) ...
    stamp, at_stamp = int(cursor.position or 0), frozenset(cursor.ids_at_position)
    # ... and the newest stamp read and the ids read at it, moved on by every page.
    newest, at_newest = stamp, set(at_stamp)
    # Vendors that list newest first (Harvest) cannot move the cursor until the read is done;
    # they keep the page position instead, and a read that stopped goes on from it.
    ordered = connector.ordered_reads
    start: str | None = None
    resume = cursor.resume or {}
    if not ordered and resume.get("next") and resume.get("since") == cursor.position:
        start = str(resume["next"])
        newest, at_newest = int(resume["newest"]), set(resume["ids"])
    outcomes: list[dict[str, Any]] = []
    # Reference data a vendor lists without modification stamps (Xero's tax rates): every read
    # returns all of it; what changed is told by content (see _changed_by_content).
    unversioned = cursor.object_type in getattr(connector, "unversioned_reads", ())
    try:
        for page in _read_pages(connector, cursor.object_type, since, start, report):
            report.pages += 1
            if unversioned:
                fresh = _changed_by_content(connector, connection, cursor.object_type, page)
            else:
                fresh = []
                for record in page.records:
                    external_id, version = connector.version_of(cursor.object_type, record)
                    if (version == stamp and external_id in at_stamp) or (
                        version == newest and external_id in at_newest
                    ):
                        continue  # read at this version already (by the last poll, or a page)
                    fresh.append((external_id, version, record))
                newest, at_newest = _next_position(
                    [(external_id, version) for external_id, version, _ in fresh],
                    newest,
                    at_newest,
                )
            report.read += len(fresh)
            progress = _progress(cursor, ordered, page, newest, at_newest)
            if fresh:
                outcomes.append(
                    _submit_page(
                        writer, connection, mapping, cursor, fresh, rules, facts, progress, matching
                    )
                )
            else:
                save = partial(_save_cursor, cursor, progress)
                writer.submit(PageJob(steps=[], final=_page_step(writer, save)))
    except ConnectorError:
        # Keep what was read: the pages in flight commit (with their positions), and the
        # next poll goes on from the page that failed.
        writer.drain()
        raise
    writer.drain()
    for outcome in outcomes:
        report.applied += outcome["applied"]
        report.stale += outcome["stale"]
        report.conflicts += outcome["conflicts"]
        report.failed += len(outcome["failed"])


# --- Records without a table that a workflow waits for -------------------------------------------


def _poll_arrivals(
    connector: Connector,
    connection: Connection,
    mapping: CompiledMapping,
    cursor: PollCursor,
    report: PollReport,
    facts: TenantFacts,
) -> None:
    """Poll a model without a table (a CRM opportunity: integrations/mapping/canonical.py)
    that a workflow waits for: each record changed since the cursor is kept raw, mapped and
    handed to the workflow (integrations/sync/steps.py `on_arrival`), as a webhook's would be,
    so a closed-won opportunity starts its provisioning run whichever way it arrives (the run
    is keyed by the opportunity: both ways find the same one).

    The connection's first read of the object (until one succeeds) is a baseline: it moves the
    cursor and hands nothing over. What was won before Concord watched was provisioned then
    (the sandbox's and a real org's history), and polls, like webhooks, carry what changes from
    now on. The cursor moves after each page's records are handed over: a poll that dies reads
    the page again, and the workflow finds its run for a record it has seen (nothing is sent
    twice)."""
    baseline = cursor.last_success_at is None
    since = micros_to_iso(int(cursor.position)) if cursor.position else None
    stamp, at_stamp = int(cursor.position or 0), frozenset(cursor.ids_at_position)
    newest, at_newest = stamp, set(at_stamp)
    for page in _read_pages(connector, cursor.object_type, since, None, report):
        report.pages += 1
        fresh = []
        for record in page.records:
            external_id, version = connector.version_of(cursor.object_type, record)
            if (version == stamp and external_id in at_stamp) or (
                version == newest and external_id in at_newest
            ):
                continue
            fresh.append((external_id, version, record))
        newest, at_newest = _next_position(
            [(external_id, version) for external_id, version, _ in fresh], newest, at_newest
        )
        report.read += len(fresh)
        if fresh and not baseline:
            _hand_over(connection, mapping, cursor.object_type, fresh, report, facts)
        if connector.ordered_reads or not page.next_cursor:
            # Unordered reads (newest first) move the cursor only once the read is whole.
            _save_cursor(
                cursor,
                {
                    "position": str(newest) if newest else "",
                    "ids_at_position": sorted(at_newest),
                    "resume": {},
                },
            )


def _hand_over(
    connection: Connection,
    mapping: CompiledMapping,
    object_type: str,
    fresh: Sequence[tuple[str, int, dict[str, Any]]],
    report: PollReport,
    facts: TenantFacts,
) -> None:
    mapped = [map_inbound(mapping, record) for _, _, record in fresh]
    tenant_fill(mapped, facts, [record for _, _, record in fresh])
    now = timezone.now()
    rows = [
        InboundMessage(
            connection=connection,
            source=InboundMessage.Source.POLL,
            object_type=object_type,
            external_id=external_id,
            dedupe_key=_dedupe_key(object_type, external_id, version),
            source_version=version,
            payload=record,
            state=State.APPLIED if result.ok else State.FAILED,
            error="" if result.ok else "; ".join(str(e) for e in result.errors)[:4000],
            received_at=now,
            processed_at=now,
        )
        for (external_id, version, record), result in zip(fresh, mapped, strict=True)
    ]
    InboundMessage.objects.bulk_create(rows, ignore_conflicts=True)
    unmapped: dict[str, list[str]] = defaultdict(list)
    for row, result in zip(rows, mapped, strict=True):
        if not result.ok:
            unmapped[row.error].append(row.dedupe_key)
            report.failed += 1
            continue
        report.applied += 1
        on_arrival(
            arrival=Arrival(connection, mapping.canonical_model, result.external_id, result.fields)
        )
    for reason, keys in unmapped.items():
        kept = InboundMessage.objects.filter(
            connection=connection, dedupe_key__in=keys, replay_of__isnull=True
        ).select_related("connection")
        mapping_case_open(list(kept), reason)


def content_version(record: dict[str, Any]) -> int:
    """A record's version when its vendor gives none: 56 bits of the SHA-256 of its content
    (fits the BigInteger source_version; two contents of one record colliding is 2^-56)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


def _dedupe_key(object_type: str, external_id: str, version: int) -> str:
    return f"poll:{object_type}:{external_id}:{version}"[:128]


def _changed_by_content(
    connector: Connector, connection: Connection, object_type: str, page: Page
) -> list[tuple[str, int, dict[str, Any]]]:
    """The records of an unversioned page whose content differs from the one last kept for
    them (their raw rows: one indexed query per page), each versioned by its content. The
    cursor does not move for these objects (there is no stamp to move it by): the list is read
    whole every poll, a few records and one call, and only a change is stored and applied. A
    record changed back to an earlier content is applied again on every poll (its raw row exists
    already, so the newest kept stays the other one): correct, if repeated, work."""
    read = []
    for record in page.records:
        external_id, _ = connector.version_of(object_type, record)
        read.append((external_id, content_version(record), record))
    last: dict[str, str] = {}
    for external_id, key in (
        InboundMessage.objects.filter(
            connection=connection,
            object_type=object_type,
            external_id__in=[external_id for external_id, _, _ in read],
            source=InboundMessage.Source.POLL,
        )
        .order_by("pk")
        .values_list("external_id", "dedupe_key")
    ):
        last[external_id] = key
    return [
        (external_id, version, record)
        for external_id, version, record in read
        if last.get(external_id) != _dedupe_key(object_type, external_id, version)
    ]


def _read_pages(
    connector: Connector,
    object_type: str,
    since: str | None,
    start: str | None,
    report: PollReport,
) -> Iterator[Page]:
    """The connector's pages from ``start``; a page whose read fails transiently is read
    again (from its own cursor, not from the first page) after a backoff, up to
    PAGE_ATTEMPTS times in a row."""
    attempts = int(getattr(settings, "CONCORD_POLL_PAGE_ATTEMPTS", PAGE_ATTEMPTS))
    base = float(getattr(settings, "CONCORD_POLL_RETRY_BASE_S", RETRY_BASE_S))
    at, failures = start, 0
    while True:
        try:
            for page in connector.read_pages(object_type, since, at):
                at, failures = page.next_cursor, 0
                yield page
            return
        except TransientError as exc:
            failures += 1
            wait = min(RETRY_CAP_S, base * 2 ** (failures - 1))
            if exc.retry_after:
                wait = max(wait, exc.retry_after)
            if failures >= attempts or wait > RETRY_AFTER_MAX_S:
                raise
            report.retries += 1
            logger.info(
                "%s read of %s failed (%s): page read again in %.1f s (try %d of %d)",
                connector.vendor,
                object_type,
                exc,
                wait,
                failures + 1,
                attempts,
            )
            _sleep(wait)


def _next_position(
    read: list[tuple[str, int]], position: int, seen: set[str]
) -> tuple[int, set[str]]:
    """The cursor after these (id, version) reads: the newest stamp and the ids read at it."""
    newest = max((version for _, version in read), default=position)
    if newest > position:
        position, seen = newest, set()
    return position, seen | {external_id for external_id, version in read if version == position}


def _progress(
    cursor: PollCursor, ordered: bool, page: Page, newest: int, at_newest: set[str]
) -> dict[str, Any]:
    """What the cursor says once this page is stored. Ordered reads (and the last page of any
    read) move the stamp; a page of an unordered read keeps the stamp and records where the
    read stands (see the module's docstring)."""
    if ordered or not page.next_cursor:
        position = str(newest) if newest else ""
        return {"position": position, "ids_at_position": sorted(at_newest), "resume": {}}
    return {
        "resume": {
            "since": cursor.position,
            "next": page.next_cursor,
            "newest": newest,
            "ids": sorted(at_newest),
        }
    }


def _save_cursor(cursor: PollCursor, progress: dict[str, Any]) -> None:
    PollCursor.objects.filter(pk=cursor.pk).update(**progress)
    for name, value in progress.items():
        setattr(cursor, name, value)


def _submit_page(
    writer: PageWriter,
    connection: Connection,
    mapping: CompiledMapping,
    cursor: PollCursor,
    fresh: Sequence[tuple[str, int, dict[str, Any]]],
    rules: OwnershipRules,
    facts: TenantFacts,
    progress: dict[str, Any],
    matching: tuple[Rule, ...] | None = None,
) -> dict[str, Any]:
    """Map a page, prepare its writes from what is committed, and hand them to the writer.
    Returns the page's outcome counts, complete once the writer has committed the page."""
    object_type = cursor.object_type
    mapped: list[MappedRecord] = [map_inbound(mapping, record) for _, _, record in fresh]
    tenant_fill(mapped, facts, [record for _, _, record in fresh])
    ids = frozenset(external_id for external_id, _, _ in fresh)
    writer.wait_for(ids)  # the plan reads these records' cross-references: see them committed
    plan = plan_upsert(
        connection=connection,
        mapped=mapped,
        rules=rules,
        payloads=[record for _, _, record in fresh],
        match_rules=matching,
    )
    now = timezone.now()
    raw = [
        {
            "connection_id": connection.pk,
            "source": InboundMessage.Source.POLL,
            "object_type": object_type,
            "external_id": external_id,
            "dedupe_key": _dedupe_key(object_type, external_id, version),
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
        # Records refused (values, a reference not known) open or join the case of their root
        # cause, holding their raw rows; records applied now take earlier failures off theirs.
        # Before the cursor moves: should this fail, the page is read again, never left silent.
        inbound_page_cases(connection=connection, plan=plan, rows=raw)
        _save_cursor(cursor, progress)
        # The workflows that start on what has arrived (billing the time read so far) are
        # rung once this commits, while the next pages are read.
        run_after_page(connection_id=connection.pk, canonical_model=mapping.canonical_model)

    writer.submit(
        PageJob(
            steps=[
                _page_step(writer, partial(_keep_raw, raw)),
                _page_step(writer, partial(write_upsert, plan)),
            ],
            final=_page_step(writer, finish),
            external_ids=ids,
        )
    )
    return plan.outcome


def _page_step(writer: PageWriter, step: Callable[[], None]) -> Callable[[], None]:
    """A step of a page as the writer runs it: in a transaction of its own (threaded, on
    PostgreSQL), committed without waiting for the log flush; inline, as it is, in the
    caller's transaction (whose commit is the caller's to make)."""
    return partial(_unflushed, step) if writer.threaded else step


def _unflushed(step: Callable[[], None]) -> None:
    """Run a page writer's step with ``synchronous_commit = off`` for its transaction only:
    the commit returns once the commit record is in the log, not once the log is on disk
    (PostgreSQL flushes it within 3 x wal_writer_delay, 0.6 s by default).

    Why: each page commits three transactions (raw records, canonical rows, the cursor) while
    the other lane streams megabytes of log, and the canonical lane is the poll's slowest: on
    a loaded machine waiting for those flushes cost a quarter of the poll (20,000 time
    entries: 4,600 -> 5,800 and 5,300 -> 7,000 records/s, measured back to back); on a quiet
    one, a few per cent.

    Why it is safe: a crash can lose only the newest of these commits, never an older one
    while keeping a newer one (the log is replayed in order, and every commit that waits for
    the flush, anyone's, makes every commit before it durable). The cursor moves in the page's
    last transaction, after the others committed; so a lost commit is one the cursor did not
    move past either, and the next poll reads that page again (raw records deduplicated by
    their key, canonical rows skipped by their version). What acts outside the database on
    what a page wrote commits work of its own normally first (a billing run its invoices and
    outbox rows, before the outbox posts anything), which makes the page durable before any
    vendor sees an effect of it. The 0.6 s window can at worst lose a case a page opened and
    that a digest already mentioned: the page's next read opens it again."""
    with db.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
    step()


def _keep_raw(rows: list[dict[str, Any]]) -> None:
    """Store the raw polled records. With COPY on PostgreSQL, in its binary format: the
    payloads are most of the bytes, and each goes as the bytes it was encoded to, without
    per-value quoting; the table numbers the rows (nobody needs their ids here, so none are
    drawn first). A record read twice (a poll repeated after a crash) makes COPY fail on the
    unique key; the page then goes through INSERT ... ON CONFLICT DO NOTHING."""
    if db.vendor == "postgresql":
        try:
            with transaction.atomic():
                copy_insert_values(InboundMessage, rows, ids=False, binary=True)
            return
        except IntegrityError:
            pass
    InboundMessage.objects.bulk_create(
        [InboundMessage(**row) for row in rows], batch_size=1000, ignore_conflicts=True
    )


# Records refer to others (a time entry to its project and worker), so a connection's objects are
# polled in this order of their canonical models, one after the other. Expenses before time:
# time is billed while its later pages are still read, and a chunk of it takes the waiting
# expenses of its contracts onto the same invoices, as a run after the poll would.
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
    "expense",
    "timeentry",
    "invoice",
    "payment",
)


def poll_connection(*, connection_id: int) -> dict[str, PollReport]:
    """Poll every object of a connection that has a published mapping, in dependency order.
    One object's failure (recorded on its cursor, and in its report's ``error``) never skips
    the objects after it: the next one may well succeed (a record whose relation failed to
    arrive fails alone, as it would after any partial poll)."""
    published = list(
        MappingSet.objects.filter(
            connection_id=connection_id, status=MappingSet.Status.PUBLISHED
        ).values_list("object_type", "canonical_model")
    )
    rank = {name: index for index, name in enumerate(DEPENDENCY_ORDER)}
    published.sort(key=lambda pair: rank.get(pair[1], len(rank)))
    reports: dict[str, PollReport] = {}
    linked = False
    for object_type, canonical_model in published:
        if canonical_model in VIRTUAL_MODELS and not arrival_awaited(canonical_model):
            continue
        report = reports[object_type] = PollReport()
        try:
            _poll_object(report, connection_id, object_type, None)
        except Exception as exc:  # recorded on the cursor already; the others go on
            logger.warning(
                "poll of %s on connection %s failed: %s", object_type, connection_id, exc
            )
            report.error = _describe(exc)
        if canonical_model == "project":
            # Linked before the objects after them are read: the time read next is billed
            # while later pages are still read (integrations/sync/steps.py run_after_page),
            # and billing needs each project's contract and legal entity.
            _projects_link(connection_id)
            linked = True
    if reports and not linked:
        # Projects that predate Concord: whichever arrived last (a PSA project, the CRM
        # contract it waits for) completes its link, or it waits on a PMO case.
        _projects_link(connection_id)
    return reports


def _projects_link(connection_id: int) -> None:
    try:
        projects_link()
    except Exception:
        logger.exception("linking projects after the poll of connection %s failed", connection_id)


def poll_failure_record(*, cursor_id: int, error: str) -> None:
    """A poll of this cursor raised: the error, and since when it has been failing (the first
    failure after a success)."""
    now = timezone.now()
    with transaction.atomic():
        PollCursor.objects.filter(pk=cursor_id).update(last_error=error[:4000], last_failure_at=now)
        PollCursor.objects.filter(pk=cursor_id, failing_since__isnull=True).update(
            failing_since=now
        )


def poll_success_record(*, cursor_id: int) -> None:
    """A poll of this cursor read everything: it is healthy again, and a stale-poll case
    holding it lets it go (and closes when it holds nothing else)."""
    with transaction.atomic():
        PollCursor.objects.filter(pk=cursor_id).update(
            last_success_at=timezone.now(), failing_since=None, last_error=""
        )
    case_records_clear(
        records=[("pollcursor", cursor_id)],
        note="Closed automatically: the poll succeeded again.",
        case_types=["poll_stale"],
    )


def poll_stale_check() -> dict[str, int]:
    """Open (or join) a ``poll_stale`` case per connection for its cursors that have not
    succeeded within ``poll_stale_after_s()``; let go of the cursors that have (a disabled
    connection is not polled, so its cursors are not stale either)."""
    cursors = list(
        PollCursor.objects.filter(poll_stale_q(), connection__enabled=True)
        .select_related("connection")
        .order_by("connection_id", "object_type")
    )
    by_connection: dict[int, list[PollCursor]] = defaultdict(list)
    for cursor in cursors:
        by_connection[cursor.connection_id].append(cursor)
    sla = _duration(poll_stale_after_s())
    for stale in by_connection.values():
        connection = stale[0].connection
        case_open_or_join(
            case_type="poll_stale",
            subject={"connection_id": connection.pk, "connection": connection.name, "sla": sla},
            records=[
                Blocked(
                    record_type="pollcursor",
                    record_id=c.pk,
                    label=f"{c.object_type}: {c.last_error or 'not read yet'}"[:200],
                )
                for c in stale
            ],
            process="polling",
            step="poll",
            connection_id=connection.pk,
        )
    fresh = PollCursor.objects.exclude(pk__in=[c.pk for c in cursors]).values_list("pk", flat=True)
    case_records_clear(
        records=[("pollcursor", pk) for pk in fresh],
        note="Closed automatically: every object of the connection was read again in time.",
        case_types=["poll_stale"],
    )
    return {"stale": len(cursors), "connections": len(by_connection)}


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} minutes" if minutes >= 2 else f"{round(seconds)} seconds"


# Polling complements webhooks (which may be lost or not offered): every POLL_INTERVAL_S, 2
# minutes (beat's `poll_all`, config/celery.py), each connection's changes since its cursor. A
# polling task that waited longer than this is dropped: the next kick-off has queued a fresh one.


def polling_kick_off() -> int:
    """Ring one polling task per enabled connection; returns how many."""
    ids = list(Connection.objects.filter(enabled=True).values_list("pk", flat=True))
    ring_poll(ids, expires=POLL_INTERVAL_S)
    return len(ids)
