"""Writes to mapping configuration: drafts, publishing, value maps, and the vendor defaults
(installed for a new connection, upgraded in place for an existing one).

A MappingSet version is edited as a draft, checked, then published; publishing retires the
version that was published before (the database allows one published version per connection
and object) and tells every worker to reload (`mapping_cache_bump`, after the commit). Published
and retired versions are never edited: a change is a new draft.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from integrations.mapping.apply import CompiledMapping, MappedRecord, map_inbound
from integrations.mapping.canonical import canonical_field_problem, canonical_model_problem
from integrations.mapping.selectors import (
    field_specs,
    mapping_cache_bump,
    mapping_set_compile,
)
from integrations.models import (
    AuditEvent,
    Connection,
    FieldMapping,
    MappingSet,
    ValueMap,
    ValueMapEntry,
)
from integrations.services.audit import audit_record
from integrations.vendors import VENDORS
from integrations.vendors.spec import FieldSpec, MappingDefault, ValueMapDefault

logger = logging.getLogger(__name__)

Actor = AbstractBaseUser | AnonymousUser | None

# A version that is not (yet) applied: edited as a draft, or waiting for a second admin.
UNPUBLISHED = (MappingSet.Status.DRAFT, MappingSet.Status.PENDING)


def _user(actor: Actor) -> Any:
    return actor if isinstance(actor, get_user_model()) else None


# -- drafts ------------------------------------------------------------------------------------


@transaction.atomic
def mapping_set_create_draft(
    *,
    connection: Connection,
    object_type: str,
    canonical_model: str,
    from_version: int | None = None,
    actor: Actor,
    external_id_path: str = "id",
    version_path: str = "",
    notes: str = "",
) -> MappingSet:
    """A new draft version: a copy of `from_version`, else of the published version, else empty
    (then with the given paths and notes). One draft per connection and object at a time."""
    # Lock the connection so two admins cannot allocate the same version number.
    Connection.objects.select_for_update().get(pk=connection.pk)
    versions = MappingSet.objects.filter(connection=connection, object_type=object_type)
    draft = versions.filter(status__in=UNPUBLISHED).first()
    if draft is not None:
        if draft.status == MappingSet.Status.PENDING:
            raise ValidationError(
                f"{object_type} on {connection.name} has v{draft.version} waiting for approval: "
                "approve or reject it first."
            )
        raise ValidationError(
            f"{object_type} on {connection.name} already has a draft (v{draft.version}): "
            "edit or delete it first."
        )
    if from_version is not None:
        source = versions.filter(version=from_version).first()
        if source is None:
            raise ValidationError(f"{object_type} has no version {from_version} to copy.")
    else:
        source = versions.filter(status=MappingSet.Status.PUBLISHED).first()
    version = (versions.aggregate(top=Max("version"))["top"] or 0) + 1
    mapping_set = MappingSet.objects.create(
        connection=connection,
        object_type=object_type,
        canonical_model=canonical_model,
        version=version,
        status=MappingSet.Status.DRAFT,
        external_id_path=source.external_id_path if source else external_id_path,
        version_path=source.version_path if source else version_path,
        notes=source.notes if source else notes,
        based_on=source.version if source else None,
    )
    if source is not None:
        _fields_add(mapping_set, field_specs(source.fields.all()))
    audit_record(
        actor=actor,
        action=AuditEvent.Action.CREATE,
        instance=mapping_set,
        changes={"version": [None, version], "copied_from": [None, source and source.version]},
    )
    return mapping_set


def _fields_add(mapping_set: MappingSet, specs: list[FieldSpec]) -> None:
    FieldMapping.objects.bulk_create(
        FieldMapping(
            mapping_set=mapping_set,
            canonical_field=s.canonical_field,
            vendor_path=s.vendor_path,
            direction=s.direction,
            transform=s.transform,
            options=dict(s.options),
            required=s.required,
            position=position,
        )
        for position, s in enumerate(specs)
    )


# -- validation and publishing -----------------------------------------------------------------


def mapping_set_problems(
    mapping_set: MappingSet, *, compiled: CompiledMapping | None = None
) -> list[str]:
    """Everything that stops this version from being published (empty when it can be).

    Compiling finds what is wrong with each field on its own and with the paths
    (`CompiledMapping.problems`); this adds what compiling cannot know: an empty mapping, a
    canonical model or field that does not exist, a concatenation mapped outbound, and a field
    mapped twice in one direction. Pass `compiled` when this version is already compiled.
    """
    if compiled is None:
        compiled = mapping_set_compile(mapping_set)
    specs = field_specs(mapping_set.fields.all())
    model = mapping_set.canonical_model
    problems: list[str] = []
    if not specs:
        problems.append("the mapping has no fields")
    model_problem = canonical_model_problem(model)
    if model_problem:
        problems.append(model_problem)
    else:
        problems.extend(
            problem
            for spec in specs
            if (
                problem := canonical_field_problem(
                    model, spec.canonical_field, outbound_only=spec.direction == "out"
                )
            )
        )
    problems.extend(compiled.problems)
    inbound: dict[str, str] = {}
    outbound: dict[str, str] = {}
    for spec in specs:
        for wanted, seen in ((spec.inbound, inbound), (spec.outbound, outbound)):
            if not wanted:
                continue
            if spec.canonical_field in seen:
                problems.append(
                    f"{spec.canonical_field} is mapped twice in one direction "
                    f"({seen[spec.canonical_field]} and {spec.vendor_path})"
                )
            seen[spec.canonical_field] = spec.vendor_path
        if spec.transform == "concat" and spec.direction == "out":
            problems.append(
                f"{spec.canonical_field}: a concatenation has no reverse; map it inbound only"
            )
    return problems


@transaction.atomic
def mapping_set_publish(*, mapping_set: MappingSet, actor: Actor) -> MappingSet:
    """Check the draft, retire the published version, publish this one, reload workers.

    The value maps the draft changes (`MappingSet.value_maps`) are written to the global value
    maps first (audited there), and the version keeps a copy of every map its fields read, as
    published. Under four-eyes the console asks for approval instead of calling this
    (integrations/mapping/versions.py); a version pending approval is published by its
    approver."""
    Connection.objects.select_for_update().get(pk=mapping_set.connection_id)
    locked = MappingSet.objects.select_for_update().get(pk=mapping_set.pk)
    if locked.status not in UNPUBLISHED:
        raise ValidationError(
            f"Only a draft can be published; {locked.object_type} v{locked.version} is "
            f"{locked.status}."
        )
    problems = mapping_set_problems(locked)
    if problems:
        raise ValidationError(problems)
    was = locked.status
    # Only the maps its rows read: a map the draft changed and no longer reads stays as it is.
    read = value_map_names(locked)
    _value_maps_apply({n: t for n, t in (locked.value_maps or {}).items() if n in read}, actor)
    previous = MappingSet.objects.filter(
        connection_id=locked.connection_id,
        object_type=locked.object_type,
        status=MappingSet.Status.PUBLISHED,
    )
    retired = list(previous.values_list("version", flat=True))
    previous.update(status=MappingSet.Status.RETIRED)
    locked.status = MappingSet.Status.PUBLISHED
    locked.published_at = timezone.now()
    locked.published_by = _user(actor)
    if locked.submitted_at is None:  # published at once, not on approval
        locked.submitted_at, locked.submitted_by = locked.published_at, locked.published_by
    locked.value_maps = value_maps_snapshot(locked)
    locked.save(
        update_fields=[
            "status",
            "published_at",
            "published_by",
            "submitted_at",
            "submitted_by",
            "value_maps",
        ]
    )
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=locked,
        changes={"status": [str(was), "published"], "retired_versions": [None, retired]},
    )
    transaction.on_commit(mapping_cache_bump)
    logger.info(
        "mapping %s %s v%s published (retired %s)",
        locked.connection_id,
        locked.object_type,
        locked.version,
        retired,
    )
    mapping_set.status = locked.status
    mapping_set.published_at = locked.published_at
    mapping_set.published_by = locked.published_by
    mapping_set.value_maps = locked.value_maps
    return locked


def _value_maps_apply(changes: Mapping[str, Any], actor: Actor) -> None:
    """Write a draft's value maps to the global ones (creating those that do not exist)."""
    for name in sorted(changes):
        table = changes[name]
        entries = {str(k): str(v) for k, v in dict(table.get("entries") or {}).items()}
        default = str(table.get("default") or "")
        existing = ValueMap.objects.filter(name=name).first()
        if existing is None:
            value_map_create(
                name=name,
                entries=entries,
                default=default,
                description=str(table.get("description") or ""),
                actor=actor,
            )
        else:
            value_map_set_entries(value_map=existing, entries=entries, default=default, actor=actor)


def value_map_names(mapping_set: MappingSet) -> set[str]:
    return {
        str(spec.options.get("value_map", ""))
        for spec in field_specs(mapping_set.fields.all())
        if spec.transform == "value_map"
    } - {""}


def value_maps_snapshot(mapping_set: MappingSet) -> dict[str, dict[str, Any]]:
    """The global value maps this version's fields read, as they stand: what a published
    version keeps (`MappingSet.value_maps`)."""
    names = value_map_names(mapping_set)
    return {
        vm.name: {
            "entries": {e.vendor_value: e.canonical_value for e in vm.entries.all()},
            "default": vm.default,
        }
        for vm in ValueMap.objects.filter(name__in=names).prefetch_related("entries")
    }


# -- value maps --------------------------------------------------------------------------------


@transaction.atomic
def value_map_create(
    *,
    name: str,
    entries: Mapping[str, str],
    default: str = "",
    description: str = "",
    actor: Actor,
) -> ValueMap:
    value_map = ValueMap(name=name, description=description, default=default)
    value_map.full_clean()
    value_map.save()
    ValueMapEntry.objects.bulk_create(
        ValueMapEntry(value_map=value_map, vendor_value=k, canonical_value=v)
        for k, v in entries.items()
    )
    audit_record(
        actor=actor,
        action=AuditEvent.Action.CREATE,
        instance=value_map,
        changes={"entries": [None, dict(entries)], "default": [None, default]},
    )
    transaction.on_commit(mapping_cache_bump)
    return value_map


@transaction.atomic
def value_map_set_entries(
    *,
    value_map: ValueMap,
    entries: Mapping[str, str],
    default: str | None = None,
    actor: Actor,
) -> ValueMap:
    """Replace a value map's entries (and its default when given). Published mappings that use
    the map see the change as soon as workers reload (the cache is bumped after commit)."""
    locked = ValueMap.objects.select_for_update().get(pk=value_map.pk)
    before = {e.vendor_value: e.canonical_value for e in locked.entries.all()}
    after = {str(k): str(v) for k, v in entries.items()}
    changes: dict[str, Any] = {}
    if before != after:
        locked.entries.exclude(vendor_value__in=list(after)).delete()
        for vendor_value, canonical_value in after.items():
            if before.get(vendor_value) != canonical_value:
                ValueMapEntry.objects.update_or_create(
                    value_map=locked,
                    vendor_value=vendor_value,
                    defaults={"canonical_value": canonical_value},
                )
        changes["entries"] = [before, after]
    if default is not None and default != locked.default:
        changes["default"] = [locked.default, default]
        locked.default = default
        locked.save(update_fields=["default"])
    if changes:
        audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=locked, changes=changes)
        transaction.on_commit(mapping_cache_bump)
    value_map.default = locked.default
    return locked


# -- defaults ----------------------------------------------------------------------------------


def _vendor_defaults(vendor: str) -> tuple[tuple[MappingDefault, ...], tuple[ValueMapDefault, ...]]:
    entry = VENDORS.get(str(vendor))
    return (entry.mappings, entry.value_maps) if entry else ((), ())


def _value_maps_install(value_maps: tuple[ValueMapDefault, ...], actor: Actor) -> None:
    """Create the vendor's value maps that do not exist; one that exists is left as the admins
    edited it."""
    for vm in value_maps:
        if ValueMap.objects.filter(name=vm.name).exists():
            continue
        try:
            # A savepoint: two connections installed at once may both try to create the map.
            with transaction.atomic():
                value_map_create(
                    name=vm.name,
                    entries=vm.entries,
                    default=vm.default,
                    description=vm.description,
                    actor=actor,
                )
        except IntegrityError:
            logger.info("value map %s created concurrently; keeping that one", vm.name)


@transaction.atomic
def mapping_defaults_install(*, connection: Connection, actor: Actor = None) -> list[MappingSet]:
    """Publish the default mappings for the connection's vendor (integrations/vendors/<vendor>/).

    Idempotent and polite: a value map that exists is left as the admins edited it, and an
    object that already has a published version or an open draft is skipped (see
    `mapping_defaults_upgrade` for bringing a published version up to the current defaults).
    """
    mappings, value_maps = _vendor_defaults(connection.vendor)
    _value_maps_install(value_maps, actor)
    installed: list[MappingSet] = []
    for default in mappings:
        taken = MappingSet.objects.filter(
            connection=connection,
            object_type=default.object_type,
            status__in=[MappingSet.Status.PUBLISHED, MappingSet.Status.DRAFT],
        ).exists()
        if taken:
            logger.info("default mapping %s skipped: one exists", default.object_type)
            continue
        draft = mapping_set_create_draft(
            connection=connection,
            object_type=default.object_type,
            canonical_model=default.canonical_model,
            external_id_path=default.external_id_path,
            version_path=default.version_path,
            notes=default.notes,
            actor=actor,
        )
        _fields_add(draft, list(default.fields))
        installed.append(mapping_set_publish(mapping_set=draft, actor=actor))
    return installed


def _directions(direction: str) -> set[str]:
    return {"in", "out"} if direction == "both" else {direction}


def defaults_missing(
    published: list[FieldSpec], default: MappingDefault
) -> tuple[list[FieldSpec], list[FieldSpec]]:
    """(the published rows to keep, the default rows to add) to bring a published version up to
    the current default: rows an earlier default shipped and this one supersedes go; a default
    row is added for each direction its canonical field is not mapped in yet."""
    kept = [spec for spec in published if spec not in default.replaces]
    covered = {(spec.canonical_field, way) for spec in kept for way in _directions(spec.direction)}
    added: list[FieldSpec] = []
    for spec in default.fields:
        missing = {
            way for way in _directions(spec.direction) if (spec.canonical_field, way) not in covered
        }
        if not missing:
            continue
        if missing != _directions(spec.direction):  # half of a "both" row: add that half
            (way,) = missing
            spec = replace(spec, direction=way)
        added.append(spec)
        covered |= {(spec.canonical_field, way) for way in missing}
    return kept, added


@transaction.atomic
def mapping_defaults_upgrade(*, connection: Connection, actor: Actor = None) -> list[MappingSet]:
    """Bring the connection's published mappings up to its vendor's current defaults: for each
    object whose published version lacks default rows (or holds rows a newer default
    supersedes), publish a new version with them added. Rows an admin added or edited stay as
    they are; an object with an open draft is skipped (the admin's draft would be overwritten).
    Also creates the vendor's value maps that do not exist yet. Idempotent: a second run finds
    nothing missing and publishes nothing. `manage.py mapping_defaults_install` runs this for
    existing databases."""
    mappings, value_maps = _vendor_defaults(connection.vendor)
    _value_maps_install(value_maps, actor)
    upgraded: list[MappingSet] = []
    for default in mappings:
        versions = MappingSet.objects.filter(connection=connection, object_type=default.object_type)
        if versions.filter(status=MappingSet.Status.DRAFT).exists():
            logger.info("default mapping %s not upgraded: a draft is open", default.object_type)
            continue
        published = versions.filter(status=MappingSet.Status.PUBLISHED).first()
        if published is None:
            continue
        current = field_specs(published.fields.all())
        kept, added = defaults_missing(current, default)
        if not added and len(kept) == len(current):
            continue
        draft = mapping_set_create_draft(
            connection=connection,
            object_type=default.object_type,
            canonical_model=default.canonical_model,
            actor=actor,
        )
        draft.fields.all().delete()
        _fields_add(draft, [*kept, *added])
        upgraded.append(mapping_set_publish(mapping_set=draft, actor=actor))
        logger.info(
            "default mapping %s upgraded to v%s: %d row(s) added, %d superseded",
            default.object_type,
            draft.version,
            len(added),
            len(current) - len(kept),
        )
    return upgraded


# -- preview -----------------------------------------------------------------------------------


def mapping_preview(
    *,
    mapping_set: MappingSet,
    payloads: list[dict[str, Any]],
    compiled: CompiledMapping | None = None,
) -> list[MappedRecord]:
    """Map payloads through any version (typically a draft) without publishing or caching it.

    Configuration problems show up as field errors on every record, so an admin sees both a bad
    setting and a bad payload in one place. Pass `compiled` when this version is already compiled.
    """
    if compiled is None:
        compiled = mapping_set_compile(mapping_set)
    return [map_inbound(compiled, payload) for payload in payloads]
