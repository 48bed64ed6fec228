"""Applying a mapped vendor record to its canonical record: version check, ownership, upsert.

One record per call, in one transaction that locks the cross-reference row, so two deliveries
of changes to the same record apply one after the other, never interleaved. A version older than
(or equal to) the one already applied from that system is recorded as stale and skipped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from exceptions.models import Queue
from exceptions.services import blocked_record, case_fingerprint, exception_case_open_or_join
from integrations.mapping.apply import MappedRecord
from integrations.mapping.canonical import EXTERNAL_ID, VIRTUAL_MODELS, canonical_models
from integrations.mapping.ownership import OwnershipRules, split_by_owner
from integrations.models import Connection, CrossReference, InboundMessage
from integrations.models.base import FieldSource, with_sources


@dataclass
class UpsertResult:
    state: str  # applied | stale | failed | skipped
    record: models.Model | None = None
    created: bool = False
    conflicts: dict[str, str] = field(default_factory=dict)
    error: str = ""


class UnresolvedReference(Exception):
    pass


STALE_REASON = "An equal or newer version was already applied."


def is_stale(version: int, xref: CrossReference | None) -> bool:
    """A version no newer than the one applied from that system (0: the source has no
    versions, so nothing it sends is stale)."""
    return bool(xref is not None and version and version <= int(xref.external_version or 0))


def message_state(result: UpsertResult) -> tuple[str, str]:
    """What an upsert's outcome means for the inbound message that carried it: its state and
    the reason shown with it."""
    State = InboundMessage.State
    if result.state == "stale":
        return State.STALE, STALE_REASON
    if result.state == "failed":
        return State.FAILED, result.error
    if result.conflicts:
        return (
            State.CONFLICT,
            f"Not applied (owned elsewhere): {', '.join(sorted(result.conflicts))}",
        )
    return State.APPLIED, ""


def canonical_upsert(
    *, connection: Connection, mapped: MappedRecord, rules: OwnershipRules
) -> UpsertResult:
    if mapped.canonical_model in VIRTUAL_MODELS:
        # No table (e.g. the CRM opportunity): the workflow that needs it reads the mapped fields.
        return UpsertResult(state="skipped", error=f"{mapped.canonical_model} has no table")
    model = canonical_models()[mapped.canonical_model]
    content_type = ContentType.objects.get_for_model(model)
    try:
        with transaction.atomic():
            return _upsert(connection, mapped, rules, model, content_type)
    except UnresolvedReference as exc:
        return UpsertResult(state="failed", error=str(exc))
    except (ValidationError, IntegrityError) as exc:
        detail = (
            exc.message_dict
            if isinstance(exc, ValidationError) and hasattr(exc, "error_dict")
            else str(exc)
        )
        return UpsertResult(
            state="failed", error=f"{mapped.canonical_model} {mapped.external_id}: {detail}"
        )


def _upsert(
    connection: Connection,
    mapped: MappedRecord,
    rules: OwnershipRules,
    model: type[models.Model],
    content_type: ContentType,
) -> UpsertResult:
    xref = (
        CrossReference.objects.select_for_update()
        .filter(connection=connection, content_type=content_type, external_id=mapped.external_id)
        .first()
    )
    record: Any = None
    if is_stale(mapped.source_version, xref):
        return UpsertResult(state="stale")
    if xref is not None:
        record = model._default_manager.select_for_update().filter(pk=xref.object_id).first()

    fields = resolve_fields(
        connection, model, mapped.fields, relation_ids(connection, model, [mapped.fields])
    )
    object_type = str(model._meta.model_name)
    current = {name: getattr(record, name) for name in fields} if record is not None else None
    decision = split_by_owner(
        rules,
        object_type=object_type,
        source_role=connection.role,
        fields=fields,
        current=current,
    )
    created = record is None
    if created:
        record = model(**decision.applied)
    else:
        for name, value in decision.applied.items():
            setattr(record, name, value)
    record.source_system = connection.role
    record.source_version = mapped.source_version
    record.field_sources = with_sources(
        record.field_sources,
        decision.applied,
        FieldSource(connection.role, connection.pk, mapped.source_version),
    )
    record.full_clean(validate_unique=False, validate_constraints=False)
    record.save()

    now = timezone.now()
    if xref is None:
        CrossReference.objects.create(
            content_type=content_type,
            object_id=record.pk,
            connection=connection,
            external_id=mapped.external_id,
            external_version=str(mapped.source_version),
            last_synced_at=now,
        )
    else:
        xref.external_version = str(mapped.source_version)
        xref.last_synced_at = now
        xref.save(update_fields=["external_version", "last_synced_at"])
    if decision.conflicts:
        _ownership_case(connection, record, decision.conflicts, fields)
    return UpsertResult(
        state="applied", record=record, created=created, conflicts=dict(decision.conflicts)
    )


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
                    "to Concord yet, so the record that refers to it cannot be stored."
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
    exception_case_open_or_join(
        fingerprint=case_fingerprint(
            "inbound", "ownership", model_name, record.pk, connection.pk, sorted(conflicts)
        ),
        process="inbound",
        step="ownership",
        case_type="ownership_conflict",
        queue=Queue.INTEGRATION_ADMIN,
        message=(
            f"{connection.name} tried to change {record._meta.verbose_name} {record}: {changes}. "
            "The change was not applied; the owning system's value stands until someone decides."
        ),
        connection_id=connection.pk,
        record=blocked_record(record_type=model_name, record_id=record.pk, label=str(record)),
    )
