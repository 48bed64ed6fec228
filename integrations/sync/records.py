"""The one write path of canonical records, for every writer: polled pages, webhooks (a batch
of one) and people's edits through the API and the admin.

Whoever writes, a record goes through the same steps:

1. ownership: ``split_by_owner`` decides which of the written fields the writer may change
   (integrations.mapping.ownership). A system's change of a field another system owns is
   withheld (an ownership-conflict case, opened by the caller). A person is no system: what a
   person's edit means is below.
2. validation: the checks ``full_clean`` makes, compiled per model and written fields
   (integrations.sync.validation); a record that fails them is refused alone, with Django's
   wording per field, and the others are written.
3. the stamp: ``field_sources`` records who set each written field (by attname, as the sync
   has always stamped them: system, connection or person, version or time).
4. the write, in bulk: new rows by COPY (``copy_insert_values``), changed rows by one
   ``bulk_update``, each batch in a savepoint together with what the caller writes along with
   it (the cross-references). When the database refuses one row (a unique code taken, a check
   constraint), the batch is written again one record per savepoint, so the good records land
   and each refused one fails alone with the refusal worded as ``full_clean`` words it.

People's edits (``record_create``, ``record_update``, ``record_delete``) are one-record batches
of this path, in one transaction each, audited with the old and new values. A person's edit of a
field a system owns (a PMO user changing a Harvest project's status) is applied: the person's
role is the permission to edit that record type (integrations.roles), and fixing data in
Concord is how a person resolves a case. It is not silent, though: the field is stamped as the
person's (``person:<user id>:<microseconds>``), and the audit event lists the fields whose
owning system's value the person replaced under ``owned_by`` (``{"status": "psa"}``), because
the owner keeps its authority: its next change of the field replaces the person's value, as it
replaces any non-owner's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from integrations.mapping.ownership import OwnershipRules, load_ownership_rules, split_by_owner
from integrations.models import AuditEvent, CanonicalRecord
from integrations.models.base import FieldSource, with_sources
from integrations.services.audit import audit_record, field_changes
from integrations.sync.bulk import copy_insert_values, update_rows
from integrations.sync.identity import match_keys_refresh
from integrations.sync.validation import (
    ErrorDict,
    clean_errors,
    has_own_clean,
    integrity_errors,
    row_checks,
)
from integrations.timestamps import to_micros

R = TypeVar("R", bound=CanonicalRecord)
Actor = AbstractBaseUser | AnonymousUser | None

# The source role of a person's edit. No ownership rule names it, so a person owns no field.
PERSON = "person"
# Rows per UPDATE statement of bulk_update: one CASE per column over 1,000 ids keeps each
# statement well under PostgreSQL's 65,535 parameters with a dozen columns.
UPDATE_BATCH = 1000


# -- ownership ----------------------------------------------------------------------------------


def owner_split(
    rules: OwnershipRules,
    model: type[models.Model],
    *,
    source_role: str,
    values: Mapping[str, Any],
    current: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``split_by_owner`` on attname-keyed values: (values applied, {field name: owner} of the
    ones another system owns). Rules name fields (``legal_entity``), the values are written by
    attname (``legal_entity_id``): the split sees the names."""
    names = _names(model)
    if not any(attname in names for attname in values):
        decision = split_by_owner(
            rules,
            object_type=str(model._meta.model_name),
            source_role=source_role,
            fields=values,
            current=current,
        )
        return decision.applied, decision.conflicts
    by_name = {names.get(a, a): v for a, v in values.items()}
    now = None if current is None else {names.get(a, a): v for a, v in current.items()}
    decision = split_by_owner(
        rules,
        object_type=str(model._meta.model_name),
        source_role=source_role,
        fields=by_name,
        current=now,
    )
    attnames = {name: attname for attname, name in names.items()}
    applied = {attnames.get(n, n): v for n, v in decision.applied.items()}
    return applied, decision.conflicts


_NAMES: dict[type[models.Model], dict[str, str]] = {}


def _names(model: type[models.Model]) -> dict[str, str]:
    """attname -> field name, for the fields where they differ (relations)."""
    names = _NAMES.get(model)
    if names is None:
        names = _NAMES[model] = {
            f.attname: f.name for f in model._meta.concrete_fields if f.attname != f.name
        }
    return names


# -- validation ---------------------------------------------------------------------------------


def row_errors(
    model: type[models.Model],
    values: dict[str, Any],
    *,
    creating: bool,
    instance: models.Model | None = None,
) -> ErrorDict | None:
    """The errors ``full_clean`` would report for these values (converted in place), and the
    model's own ``clean()`` on `instance` (or on a new instance of the values) if it has one."""
    errors = row_checks(model, tuple(values), creating=creating)(values)
    if errors is None and has_own_clean(model):
        if instance is None:
            instance = model(**values)
        else:
            for attname, value in values.items():
                setattr(instance, attname, value)
        errors = clean_errors(instance)
    return errors


# -- the bulk write -----------------------------------------------------------------------------


@dataclass
class Stored:
    """What a write stored: (position among the creates, new id), positions among the
    updates; and what the database refused, by ("create" | "update", position)."""

    created: list[tuple[int, int]] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    refused: dict[tuple[str, int], ErrorDict] = field(default_factory=dict)


# Writes the caller's companion rows (cross-references) of the records just stored, in the
# same savepoint: a record the database refuses leaves none behind.
Along = Callable[[Stored], None]


def records_store(
    model: type[models.Model],
    *,
    creates: Sequence[dict[str, Any]],
    updates: Sequence[models.Model],
    update_fields: Iterable[str] = (),
    along: Along | None = None,
) -> Stored:
    """Insert `creates` (``{attname: value}`` rows, complete with their stamps) and save the
    `update_fields` of `updates` (instances holding their new values), inside the caller's
    transaction. All in one savepoint; when the database refuses a row, one savepoint per
    record, so only the refused ones fail (each with its reason, in ``refused``)."""
    fields = sorted({*update_fields, "updated_at"}) if updates else []
    try:
        with transaction.atomic():
            return _store(model, creates, updates, fields, range(len(creates)), along)
    except IntegrityError as exc:
        if len(creates) + len(updates) == 1:  # nothing to retry apart
            kind = "create" if creates else "update"
            return Stored(refused={(kind, 0): integrity_errors(model, exc)})
    stored = Stored()
    for i, row in enumerate(creates):
        try:
            with transaction.atomic():
                one = _store(model, [row], [], fields, [i], along)
            stored.created.extend(one.created)
        except IntegrityError as exc:
            stored.refused[("create", i)] = integrity_errors(model, exc)
    for i, record in enumerate(updates):
        try:
            with transaction.atomic():
                _store(model, [], [record], fields, [], None)
                if along is not None:
                    along(Stored(updated=[i]))
            stored.updated.append(i)
        except IntegrityError as exc:
            stored.refused[("update", i)] = integrity_errors(model, exc)
    return stored


def _store(
    model: type[models.Model],
    creates: Sequence[dict[str, Any]],
    updates: Sequence[models.Model],
    fields: list[str],
    positions: Iterable[int],
    along: Along | None,
) -> Stored:
    new_ids = copy_insert_values(model, creates, binary=True)
    if updates:
        now = timezone.now()  # bulk_update does not run auto_now
        for record in updates:
            record.updated_at = now  # type: ignore[attr-defined]
        # update_rows, not bulk_update: its CASE WHEN per row and field cost 1.2 s of CPU to
        # link 1,200 projects to their contracts (three fields), the database a fraction.
        for start in range(0, len(updates), UPDATE_BATCH):
            update_rows(model, updates[start : start + UPDATE_BATCH], fields)
    stored = Stored(
        created=list(zip(positions, new_ids, strict=True)), updated=list(range(len(updates)))
    )
    if along is not None:
        along(stored)
    return stored


# -- people's edits -----------------------------------------------------------------------------


def person_source(actor: Actor) -> FieldSource:
    """The stamp of a person's edit: who (user id) and when (microseconds)."""
    user_id = actor.pk if isinstance(actor, AbstractBaseUser) else None
    return FieldSource(PERSON, user_id, to_micros(timezone.now()))


def _values(model: type[models.Model], data: Mapping[str, Any]) -> dict[str, Any]:
    """Form or serializer data ({field name: value, a related instance for a relation}) as
    ``{attname: value}``."""
    values: dict[str, Any] = {}
    for name, value in data.items():
        model_field = model._meta.get_field(name)
        attname = getattr(model_field, "attname", name)
        if isinstance(value, models.Model):
            value = value.pk
        values[attname] = value
    return values


def _by_name(model: type[models.Model], values: Mapping[str, Any]) -> dict[str, Any]:
    names = _names(model)
    return {names.get(attname, attname): value for attname, value in values.items()}


@transaction.atomic
def record_create(*, model: type[R], data: dict[str, Any], actor: Actor) -> R:
    """Create a record through the write path (validated, stamped as the person's) and audit
    it. A refusal is a ValidationError naming the fields, in Django's words."""
    values = _values(model, data)
    errors = row_errors(model, values, creating=True)
    if errors:
        raise ValidationError(errors)
    row = {**values, "field_sources": with_sources(None, values, person_source(actor))}
    stored = records_store(model, creates=[row], updates=[])
    if stored.refused:
        raise ValidationError(stored.refused[("create", 0)])
    record = model._default_manager.get(pk=stored.created[0][1])
    match_keys_refresh(records=[record])
    audit_record(
        actor=actor,
        action=AuditEvent.Action.CREATE,
        instance=record,
        changes=field_changes({}, _by_name(model, values)),
    )
    return record


@transaction.atomic
def record_update(
    *, record: R, data: dict[str, Any], actor: Actor, rules: OwnershipRules | None = None
) -> R:
    """Change a record's fields through the write path and audit the change (old and new
    values, and the fields whose owning system the person overrode). Returns the record as
    stored, read under a row lock so the old values are the ones replaced."""
    model = type(record)
    locked = model._default_manager.select_for_update().get(pk=record.pk)
    values = _values(model, data)
    before = {attname: getattr(locked, attname) for attname in values}
    changed = {a: v for a, v in values.items() if before[a] != v}
    if not changed:
        return locked
    rules = rules if rules is not None else load_ownership_rules()
    allowed, _ = owner_split(rules, model, source_role=PERSON, values=changed, current=before)
    # What the split withholds is owned by a system. A person's edit is applied all the same
    # (see the module's docstring), and the audit event names those owners.
    object_type, names = str(model._meta.model_name), _names(model)
    owned = {
        names.get(a, a): rules.owner_of(object_type, names.get(a, a)) or ""
        for a in changed
        if a not in allowed
    }
    applied = dict(changed)
    errors = row_errors(model, applied, creating=False, instance=locked)
    if errors:
        raise ValidationError(errors)
    for attname, value in applied.items():
        setattr(locked, attname, value)
    locked.field_sources = with_sources(locked.field_sources, applied, person_source(actor))
    stored = records_store(
        model, creates=[], updates=[locked], update_fields=[*applied, "field_sources"]
    )
    if stored.refused:
        raise ValidationError(stored.refused[("update", 0)])
    match_keys_refresh(records=[locked])
    changes: dict[str, Any] = field_changes(_by_name(model, before), _by_name(model, applied))
    if owned:
        changes["owned_by"] = [None, dict(sorted(owned.items()))]
    audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=locked, changes=changes)
    return locked


@transaction.atomic
def record_delete(*, record: CanonicalRecord, actor: Actor) -> None:
    audit_record(actor=actor, action=AuditEvent.Action.DELETE, instance=record)
    record.delete()
