"""Mapping versions as integration admins work them in the configuration console
(integrations/console/mappings.py): a draft edited row by row and value by value, checked before
anything is saved, compared with any other version, previewed against the latest vendor payloads
and the open cases it would fix, published (or sent to a second admin for approval when the
installation asks for four eyes), and rolled back.

Every write is keyword-only, runs in one transaction with the version's row locked, refuses a
version that is no longer a draft, and leaves an AuditEvent on the version, so the versions page
can say who changed what and when.

Value maps. The global ValueMap tables are what published mappings read. A draft never writes
them: it keeps its own copy of each map it changes (`MappingSet.value_maps`), which its compile,
checks and previews read and which publishing writes to the global maps
(services.mapping_set_publish). A published version keeps a copy of the maps it read, so a diff
shows value-map changes and a rollback restores them. One map can be read by several mappings
(every Harvest connection's projects read ``harvest_project_active``): publishing a change to it
changes them all, which the checks say before anyone publishes.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from exceptions.models import ExceptionCase
from integrations.mapping.errors import EditNeedsConfirmation, MappingError
from integrations.mapping.paths import compile_path
from integrations.mapping.preview import INBOUND_CASE, OUTBOUND_CASE
from integrations.mapping.review import (
    Sample,
    field_row_review,
    mapping_set_review,
    specs_reading,
    value_problem,
)
from integrations.mapping.selectors import (
    field_specs,
    value_map_table_of,
    value_map_tables,
)
from integrations.mapping.services import (
    UNPUBLISHED,
    Actor,
    mapping_set_create_draft,
    mapping_set_publish,
    value_map_names,
)
from integrations.mapping.transforms import ValueMapTable
from integrations.models import (
    AuditEvent,
    Connection,
    ConsoleSettings,
    FieldMapping,
    MappingSet,
    ValueMap,
)
from integrations.services.audit import audit_record, field_changes
from integrations.vendors import VENDORS
from integrations.vendors.spec import FieldSpec

logger = logging.getLogger(__name__)

Status = MappingSet.Status


def _person(actor: Actor) -> Any:
    return actor if isinstance(actor, get_user_model()) else None


# -- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingObject:
    """One vendor object of one connection, as the console's mapping index lists it."""

    connection: Connection
    object_type: str
    canonical_model: str
    published: MappingSet | None
    unpublished: MappingSet | None
    open_cases: int


def mapping_objects(*, connection_id: int | None = None, search: str = "") -> list[MappingObject]:
    """Every mapped object of every connection (or one), with its published version, its draft
    or version pending approval, and its open mapping cases. Three queries."""
    connections = Connection.objects.order_by("name")
    if connection_id:
        connections = connections.filter(pk=connection_id)
    versions = MappingSet.objects.filter(
        connection__in=connections, status__in=[*UNPUBLISHED, Status.PUBLISHED]
    ).select_related("connection", "submitted_by", "published_by")
    by_object: dict[tuple[int, str], dict[str, MappingSet]] = defaultdict(dict)
    for version in versions:
        kind = "published" if version.status == Status.PUBLISHED else "unpublished"
        by_object[(version.connection_id, version.object_type)][kind] = version
    cases = Counter(
        {
            (row["connection_id"], row["subject__object_type"]): row["n"]
            for row in ExceptionCase.objects.filter(
                status=ExceptionCase.Status.OPEN,
                case_type__in=[INBOUND_CASE, OUTBOUND_CASE],
                connection__in=connections,
            )
            .order_by()
            .values("connection_id", "subject__object_type")
            .annotate(n=Count("id"))
        }
    )
    found: list[MappingObject] = []
    term = search.strip().casefold()
    for connection in connections:
        entry = VENDORS.get(str(connection.vendor))
        models_of = {d.object_type: d.canonical_model for d in (entry.mappings if entry else ())}
        objects = dict(models_of)
        for (conn_id, object_type), kinds in by_object.items():
            if conn_id == connection.pk:
                version = kinds.get("published") or kinds["unpublished"]
                objects[object_type] = version.canonical_model
        for object_type in sorted(objects, key=str.casefold):
            kinds = by_object.get((connection.pk, object_type), {})
            item = MappingObject(
                connection=connection,
                object_type=object_type,
                canonical_model=objects[object_type],
                published=kinds.get("published"),
                unpublished=kinds.get("unpublished"),
                open_cases=cases.get((connection.pk, object_type), 0),
            )
            haystack = f"{connection.name} {object_type} {item.canonical_model}".casefold()
            if not term or term in haystack:
                found.append(item)
    return found


def mapping_versions(*, connection: Connection, object_type: str) -> list[MappingSet]:
    """Every version of one object, newest first, each with its number of rows (`rows`)."""
    return list(
        MappingSet.objects.filter(connection=connection, object_type=object_type)
        .select_related("submitted_by", "published_by")
        .annotate(rows=Count("fields"))
        .order_by("-version")
    )


def mapping_version(*, connection: Connection, object_type: str, version: int) -> MappingSet:
    found = MappingSet.objects.filter(
        connection=connection, object_type=object_type, version=version
    ).first()
    if found is None:
        raise ValidationError(f"{object_type} on {connection.name} has no version {version}.")
    return found


def mapping_history(
    *, connection: Connection, object_type: str, before: int | None = None, limit: int = 30
) -> list[AuditEvent]:
    """Who changed what and when: the audit events of every version of this object and of the
    value maps its versions read, newest first; keyset paged by event id (`before`)."""
    versions = MappingSet.objects.filter(connection=connection, object_type=object_type)
    names: set[str] = set()
    for options in FieldMapping.objects.filter(
        mapping_set__in=versions, transform=FieldMapping.Transform.VALUE_MAP
    ).values_list("options", flat=True):
        names.add(str((options or {}).get("value_map", "")))
    map_ids = [
        str(pk) for pk in ValueMap.objects.filter(name__in=names).values_list("pk", flat=True)
    ]
    version_ids = [str(pk) for pk in versions.values_list("pk", flat=True)]
    events = AuditEvent.objects.filter(
        Q(object_type="mappingset", object_id__in=version_ids)
        | Q(object_type="valuemap", object_id__in=map_ids)
    ).order_by("-id")
    if before:
        events = events.filter(id__lt=before)
    return list(events[:limit])


# -- editing a draft ---------------------------------------------------------------------------


def _locked_draft(mapping_set: MappingSet) -> MappingSet:
    locked = (
        MappingSet.objects.select_for_update().select_related("connection").get(pk=mapping_set.pk)
    )
    if locked.status != Status.DRAFT:
        raise ValidationError(
            f"{locked.object_type} v{locked.version} is {locked.get_status_display().lower()}: "
            "only a draft is edited. Start a new draft from the published version."
        )
    return locked


@transaction.atomic
def mapping_draft_start(
    *, connection: Connection, object_type: str, actor: Actor, canonical_model: str = ""
) -> MappingSet:
    """A draft copied from the published version (or empty, for an object with none)."""
    published = MappingSet.objects.filter(
        connection=connection, object_type=object_type, status=Status.PUBLISHED
    ).first()
    default = next(
        (
            d
            for d in (
                VENDORS[str(connection.vendor)].mappings if connection.vendor in VENDORS else ()
            )
            if d.object_type == object_type
        ),
        None,
    )
    model = (
        published.canonical_model
        if published
        else canonical_model or (default.canonical_model if default else "")
    )
    if not model:
        raise ValidationError(f"Name the canonical model {object_type} maps to.")
    return mapping_set_create_draft(
        connection=connection,
        object_type=object_type,
        canonical_model=model,
        actor=actor,
        external_id_path=default.external_id_path if default else "id",
        version_path=default.version_path if default else "",
    )


@transaction.atomic
def mapping_draft_discard(*, mapping_set: MappingSet, actor: Actor) -> None:
    locked = _locked_draft(mapping_set)
    audit_record(
        actor=actor,
        action=AuditEvent.Action.DELETE,
        instance=locked,
        changes={"status": ["draft", None], "fields": [locked.fields.count(), None]},
    )
    locked.delete()


@transaction.atomic
def mapping_draft_settings(
    *,
    mapping_set: MappingSet,
    external_id_path: str,
    version_path: str,
    notes: str,
    actor: Actor,
) -> MappingSet:
    """The draft's id path, modification-stamp path and notes."""
    locked = _locked_draft(mapping_set)
    problems = []
    for what, path in (("external id path", external_id_path), ("version path", version_path)):
        if path.strip():
            try:
                compile_path(path)
            except MappingError as exc:
                problems.append(f"{what}: {exc.message}")
        elif what == "external id path":
            problems.append("external id path: the vendor's id must be read from somewhere")
    if problems:
        raise ValidationError(problems)
    before = {
        "external_id_path": locked.external_id_path,
        "version_path": locked.version_path,
        "notes": locked.notes,
    }
    after = {
        "external_id_path": external_id_path.strip(),
        "version_path": version_path.strip(),
        "notes": notes.strip(),
    }
    changes = field_changes(before, after)
    if changes:
        for name, value in after.items():
            setattr(locked, name, value)
        locked.save(update_fields=list(after))
        audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=locked, changes=changes)
    return locked


def spec_of(row: FieldMapping) -> FieldSpec:
    (spec,) = field_specs([row])
    return spec


def _spec_dict(spec: FieldSpec) -> dict[str, Any]:
    return {
        "canonical_field": spec.canonical_field,
        "vendor_path": spec.vendor_path,
        "direction": spec.direction,
        "transform": spec.transform,
        "options": dict(spec.options),
        "required": spec.required,
    }


@transaction.atomic
def mapping_field_save(
    *,
    mapping_set: MappingSet,
    spec: FieldSpec,
    actor: Actor,
    field_id: int | None = None,
    samples: Sequence[Sample] = (),
    confirmed: bool = False,
) -> FieldMapping:
    """Add a row to the draft (`field_id` None) or change one, after `field_row_review`:
    errors refuse it (ValidationError); doubts refuse it with `EditNeedsConfirmation` unless
    `confirmed`."""
    locked = _locked_draft(mapping_set)
    row = None
    if field_id is not None:
        row = locked.fields.filter(pk=field_id).first()
        if row is None:
            raise ValidationError("That row is no longer in the draft (reload the page).")
    errors, doubts = field_row_review(locked, spec, replacing=field_id, samples=samples)
    if errors:
        raise ValidationError(errors)
    if doubts and not confirmed:
        raise EditNeedsConfirmation(doubts)
    before = _spec_dict(spec_of(row)) if row is not None else None
    if row is None:
        top = locked.fields.aggregate(top=Max("position"))["top"]
        row = FieldMapping(mapping_set=locked, position=0 if top is None else top + 1)
    for name, value in _spec_dict(spec).items():
        setattr(row, name, value)
    row.save()
    key = f"field {spec.canonical_field} ({spec.direction})"
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=locked,
        changes={key: [before, _spec_dict(spec)]},
    )
    return row


@transaction.atomic
def mapping_field_remove(*, mapping_set: MappingSet, field_id: int, actor: Actor) -> None:
    locked = _locked_draft(mapping_set)
    row = locked.fields.filter(pk=field_id).first()
    if row is None:
        raise ValidationError("That row is no longer in the draft (reload the page).")
    spec = spec_of(row)
    row.delete()
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=locked,
        changes={f"field {spec.canonical_field} ({spec.direction})": [_spec_dict(spec), None]},
    )


@transaction.atomic
def mapping_draft_replace(
    *,
    mapping_set: MappingSet,
    canonical_model: str,
    external_id_path: str,
    version_path: str,
    notes: str,
    specs: Sequence[FieldSpec],
    value_maps: dict[str, dict[str, Any]],
    source: str,
    actor: Actor,
) -> MappingSet:
    """Give a draft the whole content of a version kept elsewhere: its settings, its rows in
    the order given, and the value maps it changes (`MappingSet.value_maps`, applied to the
    global maps when it is published). For a configuration file promoted from another
    installation (integrations/workflows/config_files.py), as a rollback copies an earlier
    version. Nothing is checked here that publishing does not check again
    (`mapping_set_request_publish`: the same review as the editor's); one audit event on the
    draft holds each row's before and after, as the editor records them, and `source`."""
    locked = _locked_draft(mapping_set)
    before_rows = {
        (s.canonical_field, s.direction): _spec_dict(s) for s in field_specs(locked.fields.all())
    }
    after_rows = {(s.canonical_field, s.direction): _spec_dict(s) for s in specs}
    settings = {
        "canonical_model": canonical_model,
        "external_id_path": external_id_path,
        "version_path": version_path,
        "notes": notes,
    }
    changes: dict[str, Any] = {"source": [None, source]}
    changes.update(field_changes({name: getattr(locked, name) for name in settings}, settings))
    for key in sorted(set(before_rows) | set(after_rows)):
        if before_rows.get(key) != after_rows.get(key):
            changes[f"field {key[0]} ({key[1]})"] = [before_rows.get(key), after_rows.get(key)]
    for name in sorted(set(value_maps) | set(locked.value_maps or {})):
        old, new = (locked.value_maps or {}).get(name), value_maps.get(name)
        if old != new:
            changes[f"{name}: value map"] = [old, new]
    for name, value in settings.items():
        setattr(locked, name, value)
    locked.value_maps = {name: dict(table) for name, table in value_maps.items()}
    locked.save(update_fields=[*settings, "value_maps"])
    locked.fields.all().delete()
    FieldMapping.objects.bulk_create(
        FieldMapping(mapping_set=locked, position=position, **_spec_dict(spec))
        for position, spec in enumerate(specs)
    )
    audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=locked, changes=changes)
    return locked


# -- a draft's value maps ----------------------------------------------------------------------


def draft_value_maps(mapping_set: MappingSet) -> dict[str, ValueMapTable]:
    """The value maps this version reads, as it has them: for a draft, the global maps its
    rows name with its own changes over them (and maps it creates); for a published or retired
    version, the copy it kept when published (the global map for a version published before
    versions kept one)."""
    names = value_map_names(mapping_set)
    kept = dict(mapping_set.value_maps or {})
    if mapping_set.status in UNPUBLISHED:
        tables = value_map_tables(names)
        tables.update((n, value_map_table_of(n, t)) for n, t in kept.items())
        return tables
    if kept:
        return {n: value_map_table_of(n, t) for n, t in kept.items()}
    return value_map_tables(names) if mapping_set.status == Status.PUBLISHED else {}


def _map_copy(locked: MappingSet, name: str) -> dict[str, Any]:
    kept = dict(locked.value_maps or {})
    if name in kept:
        table = kept[name]
        return {
            "entries": dict(table.get("entries") or {}),
            "default": str(table.get("default") or ""),
            **({"description": table["description"]} if table.get("description") else {}),
        }
    existing = ValueMap.objects.filter(name=name).prefetch_related("entries").first()
    if existing is None:
        raise ValidationError(f"There is no value map '{name}'.")
    return {
        "entries": {e.vendor_value: e.canonical_value for e in existing.entries.all()},
        "default": existing.default,
    }


def _map_save(
    locked: MappingSet, name: str, table: dict[str, Any], actor: Actor, changes: dict[str, Any]
) -> None:
    locked.value_maps = {**(locked.value_maps or {}), name: table}
    locked.save(update_fields=["value_maps"])
    if changes:
        audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=locked, changes=changes)


def _value_checks(locked: MappingSet, name: str, values: Iterable[str]) -> list[str]:
    readers = specs_reading(field_specs(locked.fields.all()), name)
    return list(
        dict.fromkeys(
            problem
            for value in values
            for spec in readers
            if (problem := value_problem(locked.canonical_model, spec, name, value))
        )
    )


@transaction.atomic
def draft_value_map_entry_set(
    *,
    mapping_set: MappingSet,
    name: str,
    vendor_value: str,
    canonical_value: str,
    actor: Actor,
    was: str | None = None,
) -> None:
    """Add or change one entry of a value map, in the draft's copy of the map. `was`: the
    entry's key before (an edit that renames it)."""
    locked = _locked_draft(mapping_set)
    key, value = vendor_value.strip(), canonical_value.strip()
    problems = []
    if not key:
        problems.append("The value to look up cannot be empty.")
    if not value:
        problems.append("The value it maps to cannot be empty.")
    problems.extend(_value_checks(locked, name, [value] if value else []))
    table = _map_copy(locked, name)
    entries: dict[str, str] = table["entries"]
    if key and key != was and key in entries:
        problems.append(f"'{key}' already has an entry ({entries[key]}): edit that one.")
    if problems:
        raise ValidationError(problems)
    old = None
    if was is not None and was != key:
        old = entries.pop(was, None)
    before = entries.get(key, old)
    entries[key] = value
    changes = {f"{name}: {key}": [before, value]}
    if was is not None and was != key:
        changes[f"{name}: {was}"] = [old, None]
    _map_save(locked, name, table, actor, changes)


@transaction.atomic
def draft_value_map_entry_delete(
    *, mapping_set: MappingSet, name: str, vendor_value: str, actor: Actor
) -> None:
    locked = _locked_draft(mapping_set)
    table = _map_copy(locked, name)
    if vendor_value not in table["entries"]:
        raise ValidationError(f"Value map '{name}' has no entry for '{vendor_value}'.")
    old = table["entries"].pop(vendor_value)
    _map_save(locked, name, table, actor, {f"{name}: {vendor_value}": [old, None]})


@transaction.atomic
def draft_value_map_default_set(
    *, mapping_set: MappingSet, name: str, default: str, actor: Actor
) -> None:
    """The value for anything without an entry; blank: such a value is an error (a case)."""
    locked = _locked_draft(mapping_set)
    default = default.strip()
    problems = _value_checks(locked, name, [default] if default else [])
    if problems:
        raise ValidationError(problems)
    table = _map_copy(locked, name)
    before = table["default"]
    table["default"] = default
    changes = {f"{name}: default": [before, default]} if before != default else {}
    _map_save(locked, name, table, actor, changes)


@transaction.atomic
def draft_value_map_create(
    *, mapping_set: MappingSet, name: str, description: str, actor: Actor
) -> None:
    """A new, empty value map, in the draft (created for everyone when it is published)."""
    locked = _locked_draft(mapping_set)
    name = name.strip()
    if not name or not name.replace("_", "").isalnum() or len(name) > 64:
        raise ValidationError(
            "A value map's name is up to 64 letters, digits and underscores (e.g. "
            "harvest_project_state)."
        )
    if name in (locked.value_maps or {}) or ValueMap.objects.filter(name=name).exists():
        raise ValidationError(f"A value map named '{name}' exists already.")
    table = {"entries": {}, "default": "", "description": description.strip()[:200]}
    _map_save(locked, name, table, actor, {f"{name}: created": [None, table["description"]]})


CSV_HEADER = ("vendor_value", "canonical_value")
# A value map is a lookup table, not a data set: the largest shipped (countries) has ~40 rows.
CSV_MAX_ROWS = 10_000


def value_map_csv(table: ValueMapTable) -> str:
    """A value map as CSV: a header, then one line per entry (sorted by the looked-up value)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for key in sorted(table.entries):
        writer.writerow([key, table.entries[key]])
    return out.getvalue()


@dataclass(frozen=True)
class CsvImport:
    added: int
    changed: int
    removed: int
    unchanged: int


@transaction.atomic
def draft_value_map_import(
    *, mapping_set: MappingSet, name: str, text: str, actor: Actor, replace: bool = False
) -> CsvImport:
    """Entries from CSV (the export's format: a `vendor_value,canonical_value` header, then one
    entry per line) into the draft's copy of the map; `replace`: entries the file does not
    hold are removed. Every line is checked first; one bad line refuses the whole file."""
    locked = _locked_draft(mapping_set)
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    problems: list[str] = []
    if not rows or [c.strip().lower() for c in rows[0]] != list(CSV_HEADER):
        raise ValidationError(
            f"The first line must be the header {','.join(CSV_HEADER)} (as the export writes it)."
        )
    if len(rows) - 1 > CSV_MAX_ROWS:
        raise ValidationError(f"At most {CSV_MAX_ROWS:,} entries per file.")
    found: dict[str, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            problems.append(f"line {number}: expected 2 values, found {len(row)}")
            continue
        key, value = row[0].strip(), row[1].strip()
        if not key or not value:
            problems.append(f"line {number}: both values are needed")
            continue
        if key in found and found[key] != value:
            problems.append(f"line {number}: '{key}' is given twice ({found[key]}, {value})")
            continue
        found[key] = value
        problems.extend(f"line {number}: {p}" for p in _value_checks(locked, name, [value]))
    if problems:
        raise ValidationError(
            problems[:20] + ([f"and {len(problems) - 20} more"] if len(problems) > 20 else [])
        )
    table = _map_copy(locked, name)
    before: dict[str, str] = dict(table["entries"])
    after = dict(found) if replace else {**before, **found}
    table["entries"] = after
    changes = {
        f"{name}: {key}": [before.get(key), after.get(key)]
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }
    _map_save(locked, name, table, actor, changes)
    return CsvImport(
        added=sum(1 for k in after if k not in before),
        changed=sum(1 for k in after if k in before and before[k] != after[k]),
        removed=sum(1 for k in before if k not in after),
        unchanged=sum(1 for k in after if before.get(k) == after[k]),
    )


# -- comparing versions ------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    key: str
    kind: str  # added | removed | changed
    before: FieldSpec | None
    after: FieldSpec | None
    changes: list[tuple[str, Any, Any]]


@dataclass(frozen=True)
class ValueMapChange:
    name: str
    kind: str  # added | removed | changed | unknown
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)
    default: tuple[str, str] | None = None


@dataclass(frozen=True)
class VersionDiff:
    a: MappingSet
    b: MappingSet
    settings: list[tuple[str, Any, Any]]
    fields: list[FieldChange]
    value_maps: list[ValueMapChange]

    @property
    def empty(self) -> bool:
        return not (self.settings or self.fields or self.value_maps)


_DIRECTION_WORDS = dict(FieldMapping.Direction.choices)


def mapping_versions_diff(a: MappingSet, b: MappingSet) -> VersionDiff:
    """What changes from version `a` to version `b` of one object: its settings, its rows
    (added, removed, changed: which attributes), and its value maps' entries and defaults."""
    settings = [
        (name, getattr(a, name), getattr(b, name))
        for name in ("canonical_model", "external_id_path", "version_path", "notes")
        if getattr(a, name) != getattr(b, name)
    ]
    rows_a = {(s.canonical_field, s.direction): s for s in field_specs(a.fields.all())}
    rows_b = {(s.canonical_field, s.direction): s for s in field_specs(b.fields.all())}
    changes: list[FieldChange] = []
    for key in sorted(set(rows_a) | set(rows_b)):
        label = f"{key[0]} ({_DIRECTION_WORDS.get(key[1], key[1]).lower()})"
        old, new = rows_a.get(key), rows_b.get(key)
        if old is None:
            changes.append(FieldChange(label, "added", None, new, []))
        elif new is None:
            changes.append(FieldChange(label, "removed", old, None, []))
        else:
            attrs = [
                (name, getattr(old, name), getattr(new, name))
                for name in ("vendor_path", "transform", "options", "required")
                if (dict(getattr(old, name)) if name == "options" else getattr(old, name))
                != (dict(getattr(new, name)) if name == "options" else getattr(new, name))
            ]
            if attrs:
                changes.append(FieldChange(label, "changed", old, new, attrs))
    maps_a, maps_b = draft_value_maps(a), draft_value_maps(b)
    value_maps: list[ValueMapChange] = []
    names_a, names_b = value_map_names(a), value_map_names(b)
    for name in sorted(names_a | names_b | set(maps_a) | set(maps_b)):
        old_table, new_table = maps_a.get(name), maps_b.get(name)
        if old_table is None and new_table is None:
            continue
        if old_table is None or new_table is None:
            unknown = (old_table is None and name in names_a) or (
                new_table is None and name in names_b
            )
            if unknown:
                value_maps.append(ValueMapChange(name, "unknown"))
            else:
                value_maps.append(ValueMapChange(name, "added" if old_table is None else "removed"))
            continue
        diff = _table_diff(name, old_table, new_table)
        if diff is not None:
            value_maps.append(diff)
    return VersionDiff(a=a, b=b, settings=settings, fields=changes, value_maps=value_maps)


def _table_diff(name: str, old: ValueMapTable, new: ValueMapTable) -> ValueMapChange | None:
    added = sorted((k, v) for k, v in new.entries.items() if k not in old.entries)
    removed = sorted((k, v) for k, v in old.entries.items() if k not in new.entries)
    changed = sorted(
        (k, old.entries[k], v)
        for k, v in new.entries.items()
        if k in old.entries and old.entries[k] != v
    )
    default = (
        (old.default or "", new.default or "")
        if (old.default or "") != (new.default or "")
        else None
    )
    if not (added or removed or changed or default):
        return None
    return ValueMapChange(name, "changed", added, removed, changed, default)


# -- publishing --------------------------------------------------------------------------------


def four_eyes() -> bool:
    return ConsoleSettings.load().mapping_four_eyes


@transaction.atomic
def console_settings_update(*, mapping_four_eyes: bool, actor: Actor) -> ConsoleSettings:
    ConsoleSettings.load()
    row = ConsoleSettings.objects.select_for_update().get(pk=1)
    changes = field_changes(
        {"mapping_four_eyes": row.mapping_four_eyes}, {"mapping_four_eyes": mapping_four_eyes}
    )
    if changes:
        row.mapping_four_eyes = mapping_four_eyes
        row.save(update_fields=["mapping_four_eyes", "updated_at"])
        audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=row, changes=changes)
    return row


@transaction.atomic
def mapping_set_request_publish(*, mapping_set: MappingSet, actor: Actor) -> MappingSet:
    """Publish a draft after the console's checks (`mapping_set_review` errors refuse it), or,
    with four-eyes on, mark it pending approval: the published version stays in effect until
    another admin approves (`mapping_set_approve`)."""
    locked = _locked_draft(mapping_set)
    review = mapping_set_review(locked)
    if review.errors:
        raise ValidationError(review.errors)
    if not four_eyes():
        return mapping_set_publish(mapping_set=locked, actor=actor)
    if _person(actor) is None:
        raise ValidationError("Under four-eyes a person publishes, so another can approve.")
    locked.status = Status.PENDING
    locked.submitted_at = timezone.now()
    locked.submitted_by = _person(actor)
    locked.save(update_fields=["status", "submitted_at", "submitted_by"])
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=locked,
        changes={"status": ["draft", "pending"]},
    )
    logger.info(
        "mapping %s %s v%s waits for approval",
        locked.connection_id,
        locked.object_type,
        locked.version,
    )
    return locked


def _locked_pending(mapping_set: MappingSet) -> MappingSet:
    locked = MappingSet.objects.select_for_update().get(pk=mapping_set.pk)
    if locked.status != Status.PENDING:
        raise ValidationError(
            f"{locked.object_type} v{locked.version} is {locked.get_status_display().lower()}, "
            "not waiting for approval."
        )
    return locked


@transaction.atomic
def mapping_set_approve(*, mapping_set: MappingSet, actor: Actor) -> MappingSet:
    """A second admin approves a version pending approval: it is published now."""
    Connection.objects.select_for_update().get(pk=mapping_set.connection_id)
    locked = _locked_pending(mapping_set)
    person = _person(actor)
    if person is None or not person.has_perm("integrations.change_mappingset"):
        raise ValidationError("Only an integration admin approves a mapping.")
    if locked.submitted_by_id == person.pk:
        raise ValidationError(
            "Four-eyes: another admin must approve what you published. Ask a colleague, or "
            "reject it to edit it again."
        )
    submitter = locked.submitted_by.get_username() if locked.submitted_by else "system"
    published = mapping_set_publish(mapping_set=locked, actor=actor)
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=published,
        changes={"approved": [None, f"published by {submitter}, approved"]},
    )
    return published


@transaction.atomic
def mapping_set_reject(*, mapping_set: MappingSet, actor: Actor, reason: str) -> MappingSet:
    """Send a version pending approval back to draft (its publisher withdrawing it, or another
    admin refusing it), with the reason."""
    locked = _locked_pending(mapping_set)
    if _person(actor) is None:
        raise ValidationError("A person rejects a mapping, with a reason.")
    if not reason.strip():
        raise ValidationError("Say why it is rejected: its publisher reads it.")
    locked.status = Status.DRAFT
    locked.submitted_at = None
    locked.submitted_by = None
    locked.save(update_fields=["status", "submitted_at", "submitted_by"])
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=locked,
        changes={"status": ["pending", "draft"], "reason": [None, reason.strip()[:500]]},
    )
    return locked


@transaction.atomic
def mapping_set_rollback(*, mapping_set: MappingSet, actor: Actor) -> MappingSet:
    """Publish a copy of an earlier version as a new version, with the value maps it had when
    it was published (through the same checks and four-eyes as any publish)."""
    if mapping_set.status != Status.RETIRED:
        raise ValidationError(
            f"v{mapping_set.version} is {mapping_set.get_status_display().lower()}: only a "
            "retired version is rolled back to."
        )
    draft = mapping_set_create_draft(
        connection=mapping_set.connection,
        object_type=mapping_set.object_type,
        canonical_model=mapping_set.canonical_model,
        from_version=mapping_set.version,
        actor=actor,
    )
    draft.value_maps = dict(mapping_set.value_maps or {})
    draft.notes = mapping_set.notes
    draft.save(update_fields=["value_maps", "notes"])
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=draft,
        changes={"rollback_to": [None, mapping_set.version]},
    )
    return mapping_set_request_publish(mapping_set=draft, actor=actor)
