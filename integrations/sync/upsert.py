"""Applying mapped vendor records to their canonical records: version check, relations,
ownership, validation, upsert; for a polled page of thousands and for a webhook's one record
(a batch of one) by the same code, on the one write path (integrations.sync.records).

``plan_upsert`` decides, with a handful of reads for the whole batch, what each record needs:
stale (a version no newer than the one applied from that system: recorded and skipped), failed
(a relation Concord does not know yet, or values ``full_clean`` would refuse: the record fails
alone, with the field and Django's words), a new record, or an update (the fields the system
owns applied; a change of a field another system owns withheld, an ownership-conflict case).
A record no cross-reference names yet that the object's match rules find to be one Concord
holds from another system is that record's update, with a new cross-reference (identity
resolution, integrations.sync.identity); a probable match is a new record and a
possible-duplicate case.
``write_upsert`` writes the plan in bulk with the cross-references, inside the caller's
transaction; a record the database refuses fails alone and the rest lands.

The webhook path (``canonical_upsert``) plans and writes in one transaction that locks the
cross-reference and the record, so two deliveries of changes to the same record apply one
after the other, never interleaved. A polled page is planned from what is committed and
written by the page writer (integrations.sync.pagewriter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils import timezone

from exceptions.services import Blocked, case_open_or_join
from integrations.mapping.apply import MappedRecord
from integrations.mapping.canonical import EXTERNAL_ID, VIRTUAL_MODELS, canonical_models
from integrations.mapping.ownership import OwnershipRules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, CrossReference, InboundMessage
from integrations.models.base import FieldSource, with_sources
from integrations.sync.bulk import copy_insert_values
from integrations.sync.errors import UnresolvedReference
from integrations.sync.identity import (
    Match,
    Resolution,
    Rule,
    identity_resolve,
    match_keys_write,
    possible_duplicates_open,
)
from integrations.sync.records import Stored, owner_split, records_store, row_errors
from integrations.sync.validation import describe
from integrations.timestamps import version_micros
from integrations.vendors import vendor_operation

State = InboundMessage.State


@dataclass(frozen=True)
class FailureCause:
    """Why a record failed, as the case for its root cause names it: ``kind`` is "invalid"
    (values refused) or "unknown_reference"; the fields; the problem in words, without the
    record's id (the same for every record with this root cause)."""

    kind: str
    fields: tuple[str, ...]
    problem: str


def invalid_cause(errors: Mapping[str, list[str]]) -> FailureCause:
    return FailureCause("invalid", tuple(errors), describe(errors))


@dataclass
class UpsertResult:
    state: UpsertState
    record_id: int | None = None
    created: bool = False
    conflicts: dict[str, str] = field(default_factory=dict)
    error: str = ""
    cause: FailureCause | None = None


class UpsertState(StrEnum):
    """What became of one mapped record."""

    APPLIED = "applied"
    STALE = "stale"  # an equal or newer version was applied already
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing to store (a model without a table)


STALE_REASON = "An equal or newer version was already applied."


def is_stale(version: int, xref: CrossReference | None) -> bool:
    """A version no newer than the one applied from that system (0: the source has no
    versions, so nothing it sends is stale). Versions are microseconds since the epoch; one
    still stored as the vendor's own stamp (a cross-reference written by a push before
    migration 0011_poll_health_versions) is read as its instant, and one nobody can read as none."""
    if xref is None or not version:
        return False
    try:
        applied = version_micros(xref.external_version)
    except ValueError:
        return False
    return version <= applied


def conflict_reason(conflicts: Iterable[str]) -> str:
    return f"Not applied (owned elsewhere): {', '.join(sorted(conflicts))}"


def message_state(result: UpsertResult) -> tuple[str, str]:
    """What an upsert's outcome means for the inbound message that carried it: its state and
    the reason shown with it."""
    if result.state == UpsertState.STALE:
        return State.STALE, STALE_REASON
    if result.state == UpsertState.FAILED:
        return State.FAILED, result.error
    if result.conflicts:
        return State.CONFLICT, conflict_reason(result.conflicts)
    return State.APPLIED, ""


def canonical_upsert(
    *,
    connection: Connection,
    mapped: MappedRecord,
    rules: OwnershipRules,
    payload: Mapping[str, Any] | None = None,
) -> UpsertResult:
    """Apply one mapped record (a webhook's): a batch of one on the page path. `payload`: the
    vendor record it was mapped from (match rules may read fields the mapping does not)."""
    if mapped.canonical_model in VIRTUAL_MODELS:
        # No table (e.g. the CRM opportunity): the workflow that needs it reads the mapped fields.
        return UpsertResult(
            state=UpsertState.SKIPPED, error=f"{mapped.canonical_model} has no table"
        )
    with transaction.atomic():
        plan = plan_upsert(
            connection=connection, mapped=[mapped], rules=rules, lock=True, payloads=[payload]
        )
        write_upsert(plan)
    return plan.result_of(0)


@dataclass
class UpsertPlan:
    """One batch's upserts, decided from what was committed (or locked) when it was planned."""

    connection: Connection
    rules: OwnershipRules
    model: type[models.Model] | None = None
    content_type: ContentType | None = None
    # New records as complete rows ({attname: value} with their stamps).
    creates: list[tuple[MappedRecord, dict[str, Any]]] = field(default_factory=list)
    # Existing records holding their new values, and the attnames any of them changes.
    updates: list[tuple[MappedRecord, Any]] = field(default_factory=list)
    update_fields: set[str] = field(default_factory=set)
    xrefs: dict[str, CrossReference] = field(default_factory=dict)
    # Cross-references whose record is gone (deleted in Concord): re-pointed to the new one.
    repoint: dict[str, CrossReference] = field(default_factory=dict)
    # By position: the fields withheld from an update ({field: owner}) and the values sent.
    conflicts: dict[int, tuple[dict[str, str], dict[str, Any]]] = field(default_factory=dict)
    outcome: dict[str, Any] = field(
        default_factory=lambda: {"applied": 0, "stale": 0, "conflicts": 0, "failed": {}}
    )
    # By position in the batch: what is known when planning (state, why): an older copy, a
    # stale version, a payload the mapping could not read, a relation not known, values
    # refused, fields owned elsewhere.
    notes: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Positions of the payloads the mapping could not read (they open a mapping case).
    unmapped: list[int] = field(default_factory=list)
    # By position: why a record failed, for its case (fields, problem).
    causes: dict[int, FailureCause] = field(default_factory=dict)
    # By position: what the write found (the database refused the record), once written.
    later: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Where each mapped record stands in the batch (by object id).
    positions: dict[int, int] = field(default_factory=dict)
    stored: Stored | None = None
    # Identity resolution (integrations.sync.identity): the batch's match keys, and the new
    # records that are an existing one (linked: by external id, the canonical id) or may be.
    identity: Resolution | None = None
    links: dict[str, int] = field(default_factory=dict)
    # By position: the results of records another writer created first, applied again as
    # updates of that record (`_apply_again`).
    again: dict[int, UpsertResult] = field(default_factory=dict)

    def fail(
        self,
        mapped: MappedRecord,
        reason: str,
        *,
        later: bool = False,
        cause: FailureCause | None = None,
    ) -> None:
        self.outcome["failed"][mapped.external_id] = reason
        (self.later if later else self.notes)[self.positions[id(mapped)]] = (State.FAILED, reason)
        if cause is not None:
            self.causes[self.positions[id(mapped)]] = cause

    def result_of(self, position: int) -> UpsertResult:
        """The outcome of the record at `position` (after the write)."""
        if position in self.again:
            return self.again[position]
        state, reason = self.later.get(position) or self.notes.get(position) or (State.APPLIED, "")
        if state == State.FAILED:
            return UpsertResult(
                state=UpsertState.FAILED, error=reason, cause=self.causes.get(position)
            )
        if state == State.STALE:
            return UpsertResult(state=UpsertState.STALE)
        stored = self.stored or Stored()
        for index, pk in stored.created:
            if self.positions[id(self.creates[index][0])] == position:
                return UpsertResult(state=UpsertState.APPLIED, record_id=pk, created=True)
        for index in stored.updated:
            mapped, record = self.updates[index]
            if self.positions[id(mapped)] == position:
                conflicts = self.conflicts.get(position, ({}, {}))[0]
                return UpsertResult(
                    state=UpsertState.APPLIED, record_id=record.pk, conflicts=conflicts
                )
        return UpsertResult(state=UpsertState.SKIPPED)


def plan_upsert(
    *,
    connection: Connection,
    mapped: Sequence[MappedRecord],
    rules: OwnershipRules,
    lock: bool = False,
    payloads: Sequence[Mapping[str, Any] | None] | None = None,
    match_rules: tuple[Rule, ...] | None = None,
) -> UpsertPlan:
    """Decide, with a handful of reads for the whole batch, what each record needs (see the
    module's docstring). ``lock``: read the cross-references and records FOR UPDATE (inside
    the caller's transaction), as the one-record path does. ``payloads``: the vendor records,
    by position, for the match rules that read what the mapping does not. ``match_rules``:
    the object's match rules, when the caller loaded them already (a poll, once for its pages).

    A record no cross-reference names that the object's match rules find, with certainty, to
    be a record Concord holds from another system links to it: an update of that record (the
    owner's fields applied, as for any update) and a new cross-reference, not a new row. A
    probable match is created as its own row and opens a possible-duplicate case."""
    plan = UpsertPlan(connection=connection, rules=rules)
    counts = plan.outcome
    position = plan.positions = {id(m): i for i, m in enumerate(mapped)}
    good = [m for m in mapped if m.ok]
    for i, m in enumerate(mapped):
        if not m.ok:
            reason = "; ".join(str(e) for e in m.errors)
            counts["failed"][m.external_id] = reason
            plan.notes[i] = (State.FAILED, f"Mapping failed: {reason}")
            plan.unmapped.append(i)
    if not good:
        return plan
    model_name = good[0].canonical_model
    if model_name in VIRTUAL_MODELS:
        return plan
    model = plan.model = canonical_models()[model_name]
    content_type = plan.content_type = ContentType.objects.get_for_model(model)

    # Newest version per record within the batch.
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
    xref_rows = CrossReference.objects.filter(
        connection=connection, content_type=content_type, external_id__any=list(latest)
    )
    plan.xrefs = xrefs = {
        x.external_id: x for x in (xref_rows.select_for_update() if lock else xref_rows)
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

    # Objects without match rules (time entries) skip this; loading the rules is one small
    # query, per poll (``match_rules``) or per batch.
    identity = plan.identity = identity_resolve(
        connection=connection,
        object_type=model_name,
        rules=match_rules,
        records=(
            (
                m.external_id,
                m.fields,
                payloads[position[id(m)]] if payloads is not None else None,
                m.external_id not in xrefs,
            )
            for m in fresh
        ),
    )
    if payloads is not None:
        _link_own_records(plan, fresh, payloads)
    relations = relation_ids(connection, model, [m.fields for m in fresh])
    known = [xrefs[m.external_id].object_id for m in fresh if m.external_id in xrefs]
    known += [match.record_id for match in identity.links.values()]
    existing: dict[int, Any] = {}
    if known:
        rows = model._default_manager.filter(pk__any=known)
        existing = {r.pk: r for r in (rows.select_for_update() if lock else rows)}
    stamp_role = connection.role
    plans: ResolvePlans = {}
    for m in fresh:
        try:
            fields = resolve_fields(connection, model, m.fields, relations, plans)
        except UnresolvedReference as exc:
            plan.fail(m, str(exc), cause=FailureCause("unknown_reference", (exc.field,), str(exc)))
            continue
        xref = xrefs.get(m.external_id)
        record: Any = existing.get(xref.object_id) if xref is not None else None
        link = identity.links.get(m.external_id) if xref is None else None
        if link is not None:
            record = existing.get(link.record_id)
            if record is not None:
                plan.links[m.external_id] = record.pk
        source = FieldSource(stamp_role, connection.pk, m.source_version)
        if record is None:
            # A new record: split_by_owner applies every field when nothing exists yet (the
            # owner's next update replaces what a non-owner filled in), so no split is needed.
            errors = row_errors(model, fields, creating=True)
            if errors:
                reason = f"{model_name} {m.external_id}: {describe(errors)}"
                plan.fail(m, reason, cause=invalid_cause(errors))
                continue
            # with_sources(None, fields, source): a new record's fields have one stamp.
            sources = {source.stamp: sorted(fields)}
            fields["source_system"] = stamp_role
            fields["source_version"] = m.source_version
            fields["field_sources"] = sources
            plan.creates.append((m, fields))
            if xref is not None:
                plan.repoint[m.external_id] = xref
            continue
        current = {name: getattr(record, name) for name in fields}
        applied, conflicts = owner_split(
            rules, model, source_role=stamp_role, values=fields, current=current
        )
        errors = row_errors(model, applied, creating=False, instance=record)
        if errors:
            reason = f"{model_name} {m.external_id}: {describe(errors)}"
            plan.fail(m, reason, cause=invalid_cause(errors))
            continue
        for name, value in applied.items():
            setattr(record, name, value)
        record.field_sources = with_sources(record.field_sources, applied, source)
        record.source_system = stamp_role
        record.source_version = m.source_version
        plan.update_fields.update(applied)
        plan.updates.append((m, record))
        if conflicts:
            i = position[id(m)]
            plan.conflicts[i] = (conflicts, _by_field_name(model, fields))
            plan.notes[i] = (State.CONFLICT, conflict_reason(conflicts))
    if plan.updates:
        plan.update_fields.update(("source_system", "source_version", "field_sources"))
    return plan


def _link_own_records(
    plan: UpsertPlan,
    fresh: Sequence[MappedRecord],
    payloads: Sequence[Mapping[str, Any] | None],
) -> None:
    """Records Concord itself created in this system that no cross-reference names yet, as a
    poll can read one before the create's answer is recorded (the answer was lost and the row
    waits for its retry): the model's own reference in the record (an invoice's
    CONCORD-INV-<id>, where the connection's published mapping writes it) links it to that
    record, never a second one. One read of the mapping and one query, only for such models."""
    model, connection, identity = plan.model, plan.connection, plan.identity
    own_id = getattr(model, "own_reference_id", None)
    if model is None or own_id is None or identity is None:
        return
    path = _own_reference_path(connection, str(model._meta.model_name))
    if path is None:
        return
    position = plan.positions
    wanted: dict[str, int] = {}
    for m in fresh:
        if m.external_id in plan.xrefs or m.external_id in identity.links:
            continue
        payload = payloads[position[id(m)]]
        pk = own_id(path.get(payload)) if payload is not None else None
        if pk is not None:
            wanted[m.external_id] = pk
    if not wanted:
        return
    held = CrossReference.objects.filter(connection=connection, content_type=plan.content_type)
    free = set(  # not linked to another copy in this system already
        model._default_manager.filter(pk__in=set(wanted.values()))
        .exclude(pk__in=held.values("object_id"))
        .values_list("pk", flat=True)
    )
    for external_id, pk in wanted.items():
        if pk in free:
            identity.links[external_id] = Match(
                record_id=pk, rule="Concord's reference", certain=True
            )


def _own_reference_path(connection: Connection, model_name: str) -> Any:
    """Where the connection's published mapping for creating `model_name` writes its
    `reference` (None: it writes none, or the vendor creates no such record)."""
    operation = vendor_operation(connection.vendor, model_name, "create")
    if operation is None:
        return None
    mapping = mapping_load_published(connection_id=connection.pk, object_type=operation.object_type)
    if mapping is None or mapping.canonical_model != model_name:
        return None
    found = next((f for f in mapping.outbound if f.name == "reference"), None)
    return found.path if found is not None else None


def write_upsert(plan: UpsertPlan) -> None:
    """Carry a plan out inside the caller's transaction, in bulk with the cross-references;
    a record the database refuses fails alone (``later``) and the others land. Then the
    ownership-conflict cases of the updates that withheld fields, and the possible-duplicate
    cases of the new records that may be existing ones."""
    model, counts = plan.model, plan.outcome
    if model is None or not (plan.creates or plan.updates):
        return
    stored = plan.stored = records_store(
        model,
        creates=[row for _, row in plan.creates],
        updates=[record for _, record in plan.updates],
        update_fields=plan.update_fields,
        along=lambda done: _write_xrefs(plan, done),
    )
    raced = _created_meanwhile(plan, stored)
    for (kind, index), errors in stored.refused.items():
        m = plan.creates[index][0] if kind == "create" else plan.updates[index][0]
        if raced.get(m.external_id) is m:
            continue
        reason = f"{model._meta.model_name} {m.external_id}: {describe(errors)}"
        plan.fail(m, reason, later=True, cause=invalid_cause(errors))
    if raced:
        _apply_again(plan, list(raced.values()))
    counts["applied"] += len(stored.created) + len(stored.updated)
    if plan.conflicts:
        for index in stored.updated:
            m, record = plan.updates[index]
            conflict = plan.conflicts.get(plan.positions[id(m)])
            if conflict is not None:
                counts["conflicts"] += 1
                _ownership_case(plan.connection, record, *conflict)
    probable = plan.identity.probable if plan.identity is not None else {}
    if probable:
        pairs = []
        for index, pk in stored.created:
            match = probable.get(plan.creates[index][0].external_id)
            if match is not None:
                pairs.append((pk, match))
        possible_duplicates_open(connection=plan.connection, model=model, pairs=pairs)


def _created_meanwhile(plan: UpsertPlan, stored: Stored) -> dict[str, MappedRecord]:
    """The records the database refused because another writer (a webhook and a poll, two
    deliveries, or Concord's own create recording its answer, at the same moment) gave the same
    vendor record its cross-reference first: a new record, or an existing one this batch linked
    by its match rules. The cross-reference is there now (a unique violation waits for the other
    transaction and is raised once it has committed). One query, only when such a write was
    refused."""
    refused: dict[str, MappedRecord] = {}
    for kind, index in stored.refused:
        if kind == "create":
            m = plan.creates[index][0]
        else:
            m = plan.updates[index][0]
            if m.external_id not in plan.links:
                continue  # its cross-reference was there when planned: not a race for it
        refused[m.external_id] = m
    if not refused:
        return {}
    there = CrossReference.objects.filter(
        connection=plan.connection,
        content_type=plan.content_type,
        external_id__any=list(refused),
    ).values_list("external_id", flat=True)
    return {external_id: refused[external_id] for external_id in there}


def _apply_again(plan: UpsertPlan, raced: list[MappedRecord]) -> None:
    """Plan and write the raced records again, now as updates of the record the other writer
    created (its version check, ownership and relations as for any update), inside the same
    transaction; their results stand in the batch's (``again``)."""
    in_transaction = transaction.get_connection().in_atomic_block
    again = plan_upsert(
        connection=plan.connection, mapped=raced, rules=plan.rules, lock=in_transaction
    )
    write_upsert(again)
    for name in ("applied", "stale", "conflicts"):
        plan.outcome[name] += again.outcome[name]
    plan.outcome["failed"].update(again.outcome["failed"])
    for i, m in enumerate(raced):
        position = plan.positions[id(m)]
        result = plan.again[position] = again.result_of(i)
        # What a poll's raw row says of it (written after the page: polling's `finish`).
        if result.state == UpsertState.FAILED:
            plan.later[position] = (State.FAILED, result.error)
            if result.cause is not None:
                plan.causes[position] = result.cause
        elif result.state == UpsertState.STALE:
            plan.later[position] = (State.STALE, STALE_REASON)


def _write_xrefs(plan: UpsertPlan, stored: Stored) -> None:
    """The cross-references of what was just stored: new ones by COPY (a record linked to an
    existing one gets its first from this system), the others' versions (and, for a record
    re-created, its id) by one bulk update; then the match keys of what was stored."""
    content_type, connection = plan.content_type, plan.connection
    assert content_type is not None  # noqa: S101 - a plan with writes has one
    now = timezone.now()
    rows = []
    changed: list[tuple[CrossReference, MappedRecord]] = []
    new: list[tuple[int, MappedRecord]] = []
    for index, pk in stored.created:
        m = plan.creates[index][0]
        gone = plan.repoint.get(m.external_id)
        if gone is not None:
            gone.object_id = pk
            changed.append((gone, m))
            continue
        new.append((pk, m))
    for index in stored.updated:
        m, record = plan.updates[index]
        if m.external_id in plan.links:
            new.append((record.pk, m))
        else:
            changed.append((plan.xrefs[m.external_id], m))
    for pk, m in new:
        rows.append(
            {
                "content_type_id": content_type.pk,
                "object_id": pk,
                "connection_id": connection.pk,
                "external_id": m.external_id,
                "external_version": str(m.source_version),
                "last_synced_at": now,
            }
        )
    copy_insert_values(CrossReference, rows, ids=False, binary=True)
    for xref, m in changed:
        xref.external_version = str(m.source_version)
        xref.last_synced_at = now
    if changed:
        names = ["external_version", "last_synced_at"] + (["object_id"] if plan.repoint else [])
        CrossReference.objects.bulk_update([x for x, _ in changed], names, batch_size=1000)
    identity = plan.identity
    if identity is not None and identity.rules:
        keys = {pk: identity.keys.get(m.external_id, []) for pk, m in new}
        for index in stored.updated:
            m, record = plan.updates[index]
            keys[record.pk] = identity.keys.get(m.external_id, [])
        for index, pk in stored.created:
            keys[pk] = identity.keys.get(plan.creates[index][0].external_id, [])
        match_keys_write(
            connection=connection,
            object_type=str(content_type.model),
            keys=keys,
        )


def _by_field_name(model: type[models.Model], values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.attname: f.name for f in model._meta.concrete_fields}
    return {names.get(attname, attname): value for attname, value in values.items()}


# Per relation field of a batch ("project", "external_id"): vendor value -> canonical id.
RelationIds = dict[tuple[str, str], dict[str, int]]
# Per field-name set: (field, attname to write, ids of its relation or None for a plain field).
ResolvePlans = dict[tuple[str, ...], list[tuple[str, str, dict[str, int] | None]]]


def relation_ids(
    connection: Connection, model: type[models.Model], records: Iterable[Mapping[str, Any]]
) -> RelationIds:
    """Look up every `relation__attr` value of these mapped records, one query per relation:
    `project__external_id` through this connection's cross-references, `legal_entity__code`
    by the related model's own unique field."""
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    # The relation fields of each distinct field set, worked out once (a page has one or two).
    relation_fields: dict[tuple[str, ...], list[tuple[str, tuple[str, str]]]] = {}
    for fields in records:
        names = tuple(fields)
        found_fields = relation_fields.get(names)
        if found_fields is None:
            found_fields = relation_fields[names] = [
                (name, (name.partition("__")[0], name.partition("__")[2]))
                for name in names
                if "__" in name
            ]
        for name, key in found_fields:
            value = fields[name]
            if value is not None and value != "":
                wanted[key].add(value if isinstance(value, str) else str(value))
    found: RelationIds = {}
    rows: Any
    for (relation, attr), values in wanted.items():
        related = _related_model(model, relation)
        if attr == EXTERNAL_ID:
            rows = CrossReference.objects.filter(
                connection=connection,
                content_type=ContentType.objects.get_for_model(related),
                external_id__any=list(values),
            ).values_list("external_id", "object_id")
        else:
            rows = related._default_manager.filter(**{f"{attr}__any": list(values)}).values_list(
                attr, "pk"
            )
        found[(relation, attr)] = {str(v): pk for v, pk in rows}
    return found


def resolve_fields(
    connection: Connection,
    model: type[models.Model],
    fields: Mapping[str, Any],
    relations: RelationIds,
    plans: ResolvePlans | None = None,
) -> dict[str, Any]:
    """Mapped fields as model attnames, each `relation__attr` replaced by the canonical id
    found in `relations`; `UnresolvedReference` names the first one Concord does not know.
    `plans` caches, across a batch, how each set of field names resolves."""
    names = tuple(fields)
    plan = plans.get(names) if plans is not None else None
    if plan is None:
        plan = []
        for name in names:
            relation, _, attr = name.partition("__")
            if attr:
                plan.append((name, f"{relation}_id", relations.get((relation, attr), {})))
            else:
                plan.append((name, name, None))
        if plans is not None:
            plans[names] = plan
    resolved: dict[str, Any] = {}
    for name, target, ids in plan:
        value = fields[name]
        if ids is None:
            resolved[target] = value
        elif value is None or value == "":
            resolved[target] = None
        else:
            found = ids.get(value if isinstance(value, str) else str(value))
            if found is None:
                related = _related_model(model, name.partition("__")[0])
                raise UnresolvedReference(
                    f"{related._meta.verbose_name} {value} from {connection.name} is not known "
                    "to Concord yet, so the record that refers to it cannot be stored.",
                    field=name.partition("__")[0],
                )
            resolved[target] = found
    return resolved


def _related_model(model: type[models.Model], relation: str) -> type[models.Model]:
    related = model._meta.get_field(relation).related_model
    assert isinstance(related, type)  # noqa: S101 - a mapped relation is a ForeignKey
    return related


def _ownership_case(
    connection: Connection,
    record: models.Model,
    conflicts: dict[str, str],
    fields: dict[str, Any],
) -> None:
    model_name = str(record._meta.model_name)
    changes = ", ".join(
        f"{name} to {fields[name]!r} (owned by the {owner.upper()})"
        for name, owner in sorted(conflicts.items())
    )
    case_open_or_join(
        case_type="ownership_conflict",
        subject={
            "model": model_name,
            "record_id": record.pk,
            "record": f"{record._meta.verbose_name} {record}",
            "connection_id": connection.pk,
            "connection": connection.name,
            "fields": sorted(conflicts),
            "changes": changes,
        },
        records=[Blocked(record_type=model_name, record_id=record.pk, label=str(record))],
        process="inbound",
        step="ownership",
        connection_id=connection.pk,
    )
