"""Checking a mapping version before it is saved or published, against what the vendor really
sends: the recent inbound payloads of its object (`recent_samples`).

`mapping_set_review` lists what stops a version from being published (errors) and what an
admin should know first (warnings); `field_row_review` does the same for one row before it is
saved into a draft (integrations/mapping/versions.py), where doubts raised by the payloads
(a path none of them has, values the row cannot read) are saved only when the admin confirms.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from integrations.connectors.errors import ConnectorError
from integrations.mapping.apply import (
    CompiledField,
    CompiledMapping,
    compile_mapping,
    field_spec_problems,
)
from integrations.mapping.canonical import (
    EXTERNAL_ID,
    VIRTUAL_MODELS,
    canonical_field_problem,
    canonical_models,
)
from integrations.mapping.errors import MappingError
from integrations.mapping.paths import LIST_MARK, MISSING, compile_path
from integrations.mapping.selectors import (
    field_specs,
    mapping_set_compile,
)
from integrations.mapping.services import (
    UNPUBLISHED,
    mapping_set_problems,
)
from integrations.mapping.transforms import ValueMapTable, vendor_key
from integrations.models import (
    Connection,
    FieldMapping,
    InboundMessage,
    MappingSet,
)
from integrations.vendors import VENDORS, connector_for
from integrations.vendors.spec import FieldSpec

logger = logging.getLogger(__name__)

Status = MappingSet.Status

# Payloads a preview maps by default, and at most: 20 shows a pattern; 200 is still well under a
# second of mapping (about 0.05 ms a record) and one indexed read.
SAMPLES_DEFAULT = 20
SAMPLES_MAX = 200
# Vendor reads one preview may make for messages that only name their record (a webhook's
# change notification): about 0.1 s each against a real vendor, so a preview stays within a few
# seconds. Beyond it a record is counted as not checked, never guessed.
FETCH_LIMIT = 25


# -- samples: real vendor payloads -------------------------------------------------------------


# Payload keys that name a record for people (Harvest's code and name, Xero's and Salesforce's
# Name, numbers), shown beside the vendor's id.
NAME_KEYS = ("code", "name", "Name", "InvoiceNumber", "ContractNumber")


@dataclass(frozen=True)
class Sample:
    """A vendor record as Concord received it: the payload of a polled message, or the record
    a change notification names, read from the vendor (`record` None when it was not read)."""

    message: InboundMessage
    record: Mapping[str, Any] | None
    note: str = ""

    @property
    def label(self) -> str:
        """ "projects 1000002 (ARCH-1 Archived 1)": the object, the vendor's id, and the record's
        own code and name where it has them."""
        label = f"{self.message.object_type} {self.message.external_id}".strip()
        record = self.record or {}
        names = [str(record[k]) for k in NAME_KEYS if isinstance(record.get(k), str | int)]
        return f"{label} ({' '.join(names)[:80]})" if names else label


class VendorReader:
    """Reads the records change notifications name, at most `limit` per preview, through one
    connector (one HTTP client) that is closed at the end."""

    def __init__(self, connection: Connection, limit: int) -> None:
        self.connection = connection
        self.left = limit
        self.read = 0
        self.skipped = 0
        self._connector: Any = None
        self._cache: dict[tuple[str, str], tuple[Mapping[str, Any] | None, str]] = {}

    def record(self, message: InboundMessage) -> tuple[Mapping[str, Any] | None, str]:
        if message.source == InboundMessage.Source.POLL:
            payload = message.payload
            return (payload, "") if isinstance(payload, Mapping) else (None, "not a record")
        key = (message.object_type, message.external_id)
        if key in self._cache:
            return self._cache[key]
        if self.left <= 0:
            self.skipped += 1
            return None, "not read: this preview has read its share of records from the vendor"
        self.left -= 1
        try:
            if self._connector is None:
                self._connector = connector_for(self.connection)
            fetched = self._connector.fetch(message.object_type, message.external_id)
        except ConnectorError as exc:
            found: tuple[Mapping[str, Any] | None, str] = (None, f"could not be read: {exc}")
        else:
            self.read += 1
            found = (fetched, "") if fetched is not None else (None, "no longer exists")
        self._cache[key] = found
        return found

    def close(self) -> None:
        if self._connector is not None:
            self._connector.close()


def recent_samples(
    *, connection: Connection, object_type: str, limit: int = SAMPLES_DEFAULT, reader: Any = None
) -> list[Sample]:
    """The newest inbound messages of one object (originals, not replays), newest first, each
    with the record it carries. Without a `reader`, a change notification's record is not read
    (a page view makes no vendor call) and its sample says so."""
    messages = list(
        InboundMessage.objects.filter(
            connection=connection, object_type=object_type, replay_of__isnull=True
        ).order_by("-id")[: max(1, min(limit, SAMPLES_MAX))]
    )
    samples: list[Sample] = []
    for message in messages:
        if reader is not None:
            record, note = reader.record(message)
        elif message.source == InboundMessage.Source.POLL and isinstance(message.payload, Mapping):
            record, note = message.payload, ""
        else:
            record, note = None, "a change notification: the record is read when you preview"
        samples.append(Sample(message=message, record=record, note=note))
    return samples


# -- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """What stops a version from being published (`errors`) and what an admin should know
    before publishing it (`warnings`), each a sentence."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_NUMBERS = frozenset(
    {
        "DecimalField",
        "FloatField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
        "PositiveBigIntegerField",
    }
)
_WHOLE = _NUMBERS - {"DecimalField", "FloatField"}
_TEXT = frozenset({"CharField", "TextField", "EmailField", "URLField", "SlugField"})
_KIND_WORDS = {
    "DecimalField": "an amount",
    "FloatField": "a number",
    "DateField": "a date",
    "DateTimeField": "a date and time",
    "BooleanField": "true or false",
    "JSONField": "a JSON value",
}


def _kind_words(internal_type: str) -> str:
    if internal_type in _WHOLE:
        return "a whole number"
    if internal_type in _TEXT:
        return "text"
    return _KIND_WORDS.get(internal_type, internal_type)


def model_field(model_name: str, canonical_field: str) -> models.Field[Any, Any] | None:
    """The canonical model's own field a mapping row writes, or None (a relation given by an
    identifier, a list item, a value only sent outbound, a model without a table)."""
    if "__" in canonical_field or LIST_MARK in canonical_field or model_name in VIRTUAL_MODELS:
        return None
    model = canonical_models().get(model_name)
    if model is None:
        return None
    try:
        found = model._meta.get_field(canonical_field)
    except Exception:  # FieldDoesNotExist: canonical_field_problem says so
        return None
    return found if isinstance(found, models.Field) and not found.is_relation else None


def _gives(spec: FieldSpec) -> tuple[str, frozenset[str]] | None:
    """What an inbound transform hands the canonical field: (in words, the field types that
    take it), or None when it passes the vendor's value on as it is."""
    if spec.transform == "money":
        return "an amount", _NUMBERS
    if spec.transform == "date":
        return "a date", frozenset({"DateField"})
    if spec.transform == "datetime":
        return "a date and time", frozenset({"DateTimeField"})
    if spec.transform == "concat":
        return "text", _TEXT
    if spec.transform == "value_map":
        kind = spec.options.get("canonical_type", "str")
        if kind == "bool":
            return "true or false", frozenset({"BooleanField"})
        if kind == "int":
            return "a whole number", _WHOLE
        return "text", _TEXT
    return None


def _label(spec: FieldSpec) -> str:
    return f"{spec.canonical_field} ({spec.vendor_path})"


def type_problem(model_name: str, spec: FieldSpec) -> str | None:
    """A transform whose result the canonical field cannot hold (an amount into a text field,
    a value map's text into a true/false field), or None."""
    if not spec.inbound:
        return None
    target = model_field(model_name, spec.canonical_field)
    gives = _gives(spec)
    if target is None or gives is None:
        return None
    words, takes = gives
    kind = target.get_internal_type()
    if kind in takes:
        return None
    hint = ""
    if spec.transform == "value_map" and kind == "BooleanField":
        hint = ": give the row the option canonical_type bool"
    elif spec.transform == "value_map" and kind in _WHOLE:
        hint = ": give the row the option canonical_type int"
    return (
        f"{_label(spec)}: type mismatch: '{spec.transform}' gives {words}, but "
        f"{model_name}.{spec.canonical_field} holds {_kind_words(kind)}{hint}"
    )


def _allowed_values(model_name: str, spec: FieldSpec) -> tuple[list[str], str] | None:
    """The canonical values a value map read by this row may give (the field's choices, or
    true/false, or whole numbers), with words for them; None when any text will do."""
    if spec.transform != "value_map" or spec.options.get("keyed_by", "vendor") != "vendor":
        return None
    kind = spec.options.get("canonical_type", "str")
    if kind == "bool":
        return ["true", "false", "1", "0", "yes", "no"], "true or false"
    if kind == "int":
        return [], "a whole number"
    target = model_field(model_name, spec.canonical_field)
    if target is not None and target.choices:
        values = [str(value) for value, _ in target.choices]
        return values, f"a {model_name} {spec.canonical_field} ({', '.join(values)})"
    return None


def value_problem(model_name: str, spec: FieldSpec, map_name: str, value: str) -> str | None:
    """Why `value` cannot be a canonical value of value map `map_name` as this row reads it."""
    allowed = _allowed_values(model_name, spec)
    if allowed is None:
        return None
    values, words = allowed
    # No listed values: a whole number.
    ok = value.strip().lower() in values if values else value.strip().lstrip("-").isdigit()
    if ok:
        return None
    return (
        f"value map '{map_name}': '{value}' is not {words}, which {spec.canonical_field} "
        f"({spec.vendor_path}) needs"
    )


def _related_model(model: type[models.Model], relation: str) -> Any:
    try:
        return model._meta.get_field(relation).related_model
    except Exception:  # FieldDoesNotExist: canonical_field_problem reports it
        return None


def specs_reading(specs: Iterable[FieldSpec], map_name: str) -> list[FieldSpec]:
    return [
        s
        for s in specs
        if s.transform == "value_map" and str(s.options.get("value_map", "")) == map_name
    ]


def _vendor_required(connection: Connection, object_type: str) -> list[tuple[str, str]]:
    """(operation, vendor path) the vendor needs in every payload that creates this object."""
    entry = VENDORS.get(str(connection.vendor))
    return [
        (op.name, path)
        for (_, action), op in (entry.operations.items() if entry else ())
        if action == "create" and op.object_type == object_type
        for path in op.requires
    ]


def _writes(specs: Iterable[FieldSpec], path: str) -> bool:
    for spec in specs:
        if not spec.outbound:
            continue
        written = spec.vendor_path.replace(LIST_MARK, "")
        if written == path or written.startswith((f"{path}.", f"{path}[")):
            return True
        if spec.vendor_path.startswith(f"{path}{LIST_MARK}"):
            return True
    return False


def mapping_set_review(
    mapping_set: MappingSet,
    *,
    samples: Sequence[Sample] = (),
    compiled: CompiledMapping | None = None,
) -> Review:
    """Everything the console checks before a version is saved or published.

    Errors (publishing is refused): what `mapping_set_problems` finds (configuration, unknown
    canonical fields, fields mapped twice), a transform whose result the canonical field cannot
    hold (type mismatch), a value-map value the canonical field does not allow, a vendor field
    the vendor requires on create that no outbound row writes, and a canonical field the
    record needs that the published version maps and this one no longer does.

    Warnings, from `samples` (recent real payloads): a path none of them has (unknown path), a
    value a row cannot read (type mismatch in the data), a value a value map has no entry for
    (value-map gap); and, for a version not yet published, the other mappings that read a
    value map it changes (publishing changes them too)."""
    if compiled is None:
        compiled = mapping_set_compile(mapping_set)
    specs = field_specs(mapping_set.fields.all())
    model_name = mapping_set.canonical_model
    errors = list(mapping_set_problems(mapping_set, compiled=compiled))
    warnings: list[str] = []
    for spec in specs:
        problem = type_problem(model_name, spec)
        if problem:
            errors.append(problem)
    tables = compiled.value_maps
    for name, table in sorted(tables.items()):
        for spec in specs_reading(specs, name):
            values = [*table.entries.values(), *([table.default] if table.default else [])]
            errors.extend(
                problem
                for value in dict.fromkeys(values)
                if (problem := value_problem(model_name, spec, name, value))
            )
    if any(spec.outbound for spec in specs):
        for operation, path in _vendor_required(mapping_set.connection, mapping_set.object_type):
            if not _writes(specs, path):
                errors.append(
                    f"no outbound row writes {path}, which {operation} requires: the vendor "
                    "would refuse every record"
                )
    errors.extend(_required_dropped(mapping_set, specs))
    warnings.extend(_sample_warnings(mapping_set, compiled, specs, samples))
    warnings.extend(_outbound_gaps(mapping_set, specs, tables))
    if mapping_set.status in UNPUBLISHED:
        warnings.extend(_shared_maps(mapping_set))
    return Review(errors=list(dict.fromkeys(errors)), warnings=list(dict.fromkeys(warnings)))


def _required_dropped(mapping_set: MappingSet, specs: Sequence[FieldSpec]) -> list[str]:
    if mapping_set.status not in UNPUBLISHED:
        return []
    published = MappingSet.objects.filter(
        connection_id=mapping_set.connection_id,
        object_type=mapping_set.object_type,
        status=Status.PUBLISHED,
    ).first()
    model = canonical_models().get(mapping_set.canonical_model)
    if published is None or model is None:
        return []
    mapped = {s.canonical_field.partition("__")[0] for s in specs if s.inbound}
    before = {
        s.canonical_field.partition("__")[0]
        for s in field_specs(published.fields.all())
        if s.inbound
    }
    found = []
    for target in model._meta.concrete_fields:
        needed = not (target.null or target.blank or target.has_default())
        if needed and target.name in before and target.name not in mapped:
            found.append(
                f"{target.name}: v{published.version} reads it and this version does not, "
                f"but every {mapping_set.canonical_model} needs one"
            )
    return found


def _sample_warnings(
    mapping_set: MappingSet,
    compiled: CompiledMapping,
    specs: Sequence[FieldSpec],
    samples: Sequence[Sample],
) -> list[str]:
    records = [s.record for s in samples if s.record is not None]
    if not records:
        return []
    n = len(records)
    noun = f"{mapping_set.object_type} payload{'s' if n != 1 else ''}"
    warnings: list[str] = []
    paths = [("external id", mapping_set.external_id_path)]
    if mapping_set.version_path:
        paths.append(("version", mapping_set.version_path))
    for spec in specs:
        if spec.inbound and LIST_MARK not in spec.vendor_path:
            parts = spec.options.get("paths") if spec.transform == "concat" else None
            for path in parts if isinstance(parts, list) else [spec.vendor_path]:
                paths.append((spec.canonical_field, str(path)))
    for what, path in dict.fromkeys(paths):
        try:
            compiled_path = compile_path(path)
        except MappingError:
            continue  # a configuration problem, listed as an error
        if all(compiled_path.get(r) is MISSING for r in records):
            warnings.append(f"unknown path: {path} ({what}) is in none of the {n} latest {noun}")
    by_name = {s.canonical_field: s for s in specs if s.inbound}
    for compiled_field in compiled.inbound:
        row = by_name.get(compiled_field.name)
        if row is not None:
            warnings.extend(
                _field_sample_warnings(mapping_set, compiled, row, compiled_field, records)
            )
    return warnings


def _field_sample_warnings(
    mapping_set: MappingSet,
    compiled: CompiledMapping,
    spec: FieldSpec,
    compiled_field: CompiledField,
    records: Sequence[Mapping[str, Any]],
) -> list[str]:
    n = len(records)
    gaps: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    table = (
        compiled.value_maps.get(str(spec.options.get("value_map", "")))
        if spec.transform == "value_map"
        else None
    )
    target = model_field(mapping_set.canonical_model, spec.canonical_field)
    for record in records:
        raw = compiled_field.read(record)
        if raw is MISSING or raw is None:
            continue
        if table is not None and vendor_key(raw) not in table.entries and table.default is None:
            gaps[vendor_key(raw)] += 1
            continue
        try:
            value = compiled_field.convert(raw)
        except MappingError as exc:
            failures[exc.message] += 1
            continue
        problem = _holds(target, value)
        if problem:
            failures[problem] += 1
    warnings = [
        f"value-map gap: '{value}' at {spec.vendor_path} has no entry in value map "
        f"'{table.name if table else ''}' (in {count} of the {n} latest payloads) and the map "
        "has no default"
        for value, count in sorted(gaps.items())
    ]
    warnings.extend(
        f"type mismatch: {_label(spec)} cannot read {count} of the {n} latest payloads: {message}"
        for message, count in sorted(failures.items())
    )
    return warnings


def _holds(target: models.Field[Any, Any] | None, value: Any) -> str | None:
    """Why the canonical field would refuse `value` (Django's own conversion), or None."""
    if target is None or value is None:
        return None
    if isinstance(value, dict | list) and target.get_internal_type() != "JSONField":
        return f"{type(value).__name__} is not {_kind_words(target.get_internal_type())}"
    try:
        converted = target.to_python(value)
    except ValidationError as exc:
        return f"{value!r}: {' '.join(str(m) for m in exc.messages)}"
    if target.choices and converted not in {c for c, _ in target.choices}:
        return f"{value!r} is not one of {', '.join(str(c) for c, _ in target.choices)}"
    if isinstance(converted, bool) and target.get_internal_type() in _NUMBERS:
        return f"{value!r} is not {_kind_words(target.get_internal_type())}"
    return None


def _outbound_gaps(
    mapping_set: MappingSet, specs: Sequence[FieldSpec], tables: Mapping[str, ValueMapTable]
) -> list[str]:
    """Canonical values an outbound value map keyed by the canonical value has no entry for
    (and no default): a legal entity whose account code is missing."""
    model = canonical_models().get(mapping_set.canonical_model)
    warnings = []
    for spec in specs:
        if not (spec.outbound and spec.options.get("keyed_by") == "canonical"):
            continue
        table = tables.get(str(spec.options.get("value_map", "")))
        relation, _, attr = spec.canonical_field.partition("__")
        if table is None or table.default is not None or model is None or not attr:
            continue
        if attr == EXTERNAL_ID:
            continue
        related = _related_model(model, relation)
        if not isinstance(related, type) or not issubclass(related, models.Model):
            continue
        values = related._default_manager.order_by().values_list(attr, flat=True)[:1000]
        missing = sorted({str(v) for v in values if v} - set(table.entries))
        if missing:
            warnings.append(
                f"value-map gap: value map '{table.name}' has no entry for "
                f"{', '.join(missing[:10])}{' and more' if len(missing) > 10 else ''} "
                f"({spec.canonical_field}) and no default: such records cannot be rendered"
            )
    return warnings


def _shared_maps(mapping_set: MappingSet) -> list[str]:
    changed = set(mapping_set.value_maps or {})
    if not changed:
        return []
    others = (
        FieldMapping.objects.filter(
            transform=FieldMapping.Transform.VALUE_MAP,
            mapping_set__status=Status.PUBLISHED,
        )
        .exclude(
            mapping_set__connection_id=mapping_set.connection_id,
            mapping_set__object_type=mapping_set.object_type,
        )
        .select_related("mapping_set__connection")
    )
    readers: dict[str, set[str]] = defaultdict(set)
    for row in others:
        name = str((row.options or {}).get("value_map", ""))
        if name in changed:
            ms = row.mapping_set
            readers[name].add(f"{ms.connection.name} {ms.object_type} v{ms.version}")
    return [
        f"value map '{name}' is also read by {', '.join(sorted(readers[name]))}: publishing "
        "this version changes them too"
        for name in sorted(readers)
    ]


def field_row_review(
    mapping_set: MappingSet,
    spec: FieldSpec,
    *,
    replacing: int | None = None,
    samples: Sequence[Sample] = (),
) -> tuple[list[str], list[str]]:
    """(errors, doubts) about one row before it is saved into the draft. Errors refuse it:
    its configuration, an unknown canonical field, a type mismatch, the same field mapped in
    the same direction by another row. Doubts refuse it unless the admin confirms: a path none
    of the recent payloads has, values in them the row cannot read."""
    rows = mapping_set.fields.all()
    others = field_specs(rows.exclude(pk=replacing) if replacing is not None else rows)
    compiled = mapping_set_compile(mapping_set)
    tables = compiled.value_maps
    label = _label(spec)
    errors = list(field_spec_problems(spec, tables))
    problem = canonical_field_problem(
        mapping_set.canonical_model, spec.canonical_field, outbound_only=spec.direction == "out"
    )
    if problem:
        errors.append(f"{label}: {problem}")
    mismatch = type_problem(mapping_set.canonical_model, spec)
    if mismatch:
        errors.append(mismatch)
    for other in others:
        overlap = {"in", "out"} if other.direction == "both" else {other.direction}
        mine = {"in", "out"} if spec.direction == "both" else {spec.direction}
        if other.canonical_field == spec.canonical_field and overlap & mine:
            way = (
                "both ways"
                if overlap & mine == {"in", "out"}
                else ("inbound" if "in" in overlap & mine else "outbound")
            )
            errors.append(
                f"{spec.canonical_field} is already mapped {way} (from {other.vendor_path}): "
                "edit that row instead"
            )
    if spec.transform == "value_map":
        name = str(spec.options.get("value_map", ""))
        table = tables.get(name)
        if table is not None:
            for value in dict.fromkeys(
                [*table.entries.values(), *([table.default] if table.default else [])]
            ):
                problem = value_problem(mapping_set.canonical_model, spec, name, value)
                if problem:
                    errors.append(problem)
    doubts: list[str] = []
    records = [s.record for s in samples if s.record is not None]
    if errors or not records or not spec.inbound or LIST_MARK in spec.vendor_path:
        return errors, doubts
    single = replace_compiled(compiled, spec, mapping_set)
    doubts.extend(
        w
        for w in _sample_warnings(mapping_set, single, [spec], samples)
        if "value-map gap" not in w
    )
    return errors, doubts


def replace_compiled(
    compiled: CompiledMapping, spec: FieldSpec, mapping_set: MappingSet
) -> CompiledMapping:
    """A compiled mapping holding just this row, with the draft's value maps."""
    return compile_mapping(
        object_type=mapping_set.object_type,
        canonical_model=mapping_set.canonical_model,
        external_id_path=mapping_set.external_id_path,
        version_path=mapping_set.version_path,
        fields=[spec],
        value_maps=compiled.value_maps,
    )
