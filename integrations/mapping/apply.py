"""Applying a mapping: vendor payload -> canonical fields (`map_inbound`) and back (`map_outbound`).

Everything here is pure: no database, no cache, no clock. The caller passes a `CompiledMapping`,
an immutable, precompiled form of one MappingSet version (paths parsed, value maps copied,
each field's converter chosen once). `selectors.mapping_load_published` builds and caches it per
published version, so a worker mapping thousands of records a second queries nothing per record.

Foreign keys are mapped as the vendor's identifier into a field named ``<relation>__<attr>``
(``project__external_id``, always as text; ``legal_entity__code``). Turning those into canonical
ids is the upsert step's job (through the cross-reference table), not the mapping's: a mapping
sees one payload and has no business knowing what exists in the database.

Null and missing: a path that leads nowhere leaves the field out of `fields` (the vendor said
nothing about it); an explicit null maps to None. With a ``default`` option both become the
default. A required field that is missing or null is an error.

Outbound: only fields whose canonical key is present in the given dict are written; a missing
required key is an error unless ``partial=True`` (an update carrying only what changed). A
concatenation has no reverse and is inbound only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from integrations.mapping import transforms as t
from integrations.mapping.errors import MappingError, OutboundMappingError, PathError
from integrations.mapping.paths import MISSING, CompiledPath, compile_path
from integrations.models.mapping import FieldMapping

# What a FieldMapping row may hold (its choices: model metadata, no queries).
DIRECTIONS = tuple(FieldMapping.Direction.values)
TRANSFORMS = tuple(FieldMapping.Transform.values)

# Options each transform understands; anything else is a typo the publish check refuses.
ALLOWED_OPTIONS: dict[str, frozenset[str]] = {
    "copy": frozenset({"default", "vendor_type"}),
    "value_map": frozenset({"value_map", "default", "canonical_type", "vendor_type", "reverse"}),
    "date": frozenset({"default", "format"}),
    "datetime": frozenset({"default", "format"}),
    "money": frozenset({"default", "places", "as"}),
    "default": frozenset({"default"}),
    "concat": frozenset({"paths", "sep"}),
}

Converter = Callable[[Any], Any]
EXTERNAL_ID_SUFFIX = "__external_id"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field mapping as plain data (what a FieldMapping row holds)."""

    canonical_field: str
    vendor_path: str
    direction: str = "both"
    transform: str = "copy"
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = False

    @property
    def inbound(self) -> bool:
        return self.direction in ("in", "both")

    @property
    def outbound(self) -> bool:
        return self.direction in ("out", "both") and self.transform != "concat"


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    path: CompiledPath
    convert: Converter
    required: bool
    has_default: bool
    default: Any
    # Concatenation reads several paths; for every other transform this is empty.
    parts: tuple[CompiledPath, ...] = ()
    sep: str = " "

    def read(self, payload: Any) -> Any:
        if not self.parts:
            return self.path.get(payload)
        values = [p.get(payload) for p in self.parts]
        present = [v for v in values if v is not MISSING]
        if not present:
            return MISSING
        return t.concat(present, self.sep)


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    """An immutable, ready-to-apply MappingSet version."""

    object_type: str
    canonical_model: str
    external_id_path: CompiledPath
    version_path: CompiledPath | None
    inbound: tuple[CompiledField, ...]
    outbound: tuple[CompiledField, ...]
    value_maps: Mapping[str, t.ValueMapTable]
    mapping_set_id: int | None = None
    connection_id: int | None = None
    version: int = 0
    # Configuration problems found while compiling (a draft may have them; publish refuses them).
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class MappedRecord:
    """The result of mapping one vendor payload."""

    canonical_model: str
    external_id: str
    source_version: int
    fields: dict[str, Any]
    errors: list[MappingError]

    @property
    def ok(self) -> bool:
        return not self.errors


# -- compiling ---------------------------------------------------------------------------------


def field_spec_problems(spec: FieldSpec, value_maps: Mapping[str, t.ValueMapTable]) -> list[str]:
    """What is wrong with one field mapping's configuration (empty when nothing is)."""
    label = _label(spec)
    problems: list[str] = []
    if not spec.canonical_field:
        problems.append(f"{label}: no canonical field")
    if spec.direction not in DIRECTIONS:
        problems.append(f"{label}: unknown direction '{spec.direction}'")
    if spec.transform not in TRANSFORMS:
        return [*problems, f"{label}: unknown transform '{spec.transform}'"]
    options = spec.options if isinstance(spec.options, Mapping) else {}
    if not isinstance(spec.options, Mapping):
        problems.append(f"{label}: options must be a JSON object")
    unknown = sorted(set(options) - ALLOWED_OPTIONS[spec.transform])
    if unknown:
        problems.append(f"{label}: option(s) {', '.join(unknown)} not used by '{spec.transform}'")
    paths = [spec.vendor_path]
    if spec.transform == "concat":
        raw_paths = options.get("paths", [spec.vendor_path])
        if not isinstance(raw_paths, list) or not raw_paths:
            problems.append(f"{label}: concat needs 'paths', a non-empty list of paths")
            raw_paths = []
        paths = [str(p) for p in raw_paths]
        if not isinstance(options.get("sep", " "), str):
            problems.append(f"{label}: 'sep' must be text")
    for path in paths:
        try:
            compile_path(path)
        except PathError as exc:
            problems.append(f"{label}: {exc.message}")
    if spec.transform == "default" and "default" not in options:
        problems.append(f"{label}: the default transform needs a 'default' option")
    if spec.transform == "copy" and options.get("vendor_type", "str") not in t.VALUE_TYPES:
        problems.append(f"{label}: 'vendor_type' must be one of {', '.join(t.VALUE_TYPES)}")
    if spec.transform == "value_map":
        name = options.get("value_map")
        if not name:
            problems.append(f"{label}: value_map needs a 'value_map' option naming the map")
        elif name not in value_maps:
            problems.append(f"{label}: value map '{name}' does not exist")
        for key in ("canonical_type", "vendor_type"):
            if options.get(key, "str") not in t.VALUE_TYPES:
                problems.append(f"{label}: '{key}' must be one of {', '.join(t.VALUE_TYPES)}")
        if not isinstance(options.get("reverse", {}), Mapping):
            problems.append(f"{label}: 'reverse' must be an object of canonical -> vendor values")
    if spec.transform == "date" and options.get("format", "iso") not in t.DATE_FORMATS:
        problems.append(f"{label}: date 'format' must be one of {', '.join(t.DATE_FORMATS)}")
    if spec.transform == "datetime" and options.get("format", "iso") not in t.DATETIME_FORMATS:
        problems.append(
            f"{label}: datetime 'format' must be one of {', '.join(t.DATETIME_FORMATS)}"
        )
    if spec.transform == "money":
        places = options.get("places")
        if places is not None and (not isinstance(places, int) or not 0 <= places <= 8):
            problems.append(f"{label}: 'places' must be a whole number from 0 to 8")
        if options.get("as", "number") not in t.MONEY_FORMS:
            problems.append(f"{label}: 'as' must be one of {', '.join(t.MONEY_FORMS)}")
    if "default" in options and spec.transform in ("date", "datetime", "money"):
        try:
            _inbound_converter(spec, value_maps)(options["default"])
        except MappingError as exc:
            problems.append(f"{label}: default {exc.message}")
    return problems


def _label(spec: FieldSpec) -> str:
    return f"{spec.canonical_field or '?'} ({spec.vendor_path or '?'})"


def _failing(message: str) -> Converter:
    def convert(value: Any) -> Any:
        raise MappingError(message, value=value)

    return convert


def _inbound_converter(spec: FieldSpec, value_maps: Mapping[str, t.ValueMapTable]) -> Converter:
    options = spec.options
    kind = spec.transform
    if kind in ("copy", "default", "concat"):
        # Identifiers are text everywhere (cross-references store text): Harvest's integer ids
        # become "1000011", so a batch keyed by external id never mixes 1000011 and "1000011".
        return _text if spec.canonical_field.endswith(EXTERNAL_ID_SUFFIX) else _identity
    if kind == "date":
        return t.parse_date
    if kind == "datetime":
        return t.parse_datetime
    if kind == "money":
        places = options.get("places")
        return lambda value: t.parse_money(value, places)
    # value_map
    name = str(options.get("value_map", ""))
    table = value_maps.get(name)
    if table is None:
        return _failing(f"value map '{name}' does not exist")
    canonical_type = options.get("canonical_type", "str")
    if canonical_type == "str":
        return lambda value: t.map_value(value, table)
    return lambda value: t.coerce(t.map_value(value, table), canonical_type)


def _outbound_converter(spec: FieldSpec, value_maps: Mapping[str, t.ValueMapTable]) -> Converter:
    options = spec.options
    kind = spec.transform
    if kind in ("copy", "default"):
        vendor_type = options.get("vendor_type", "")
        if vendor_type in ("int", "bool"):
            return lambda value: t.coerce(t.vendor_key(value), vendor_type)
        return _identity
    if kind == "date":
        fmt = options.get("format", "iso")
        return lambda value: t.format_date(value, fmt)
    if kind == "datetime":
        fmt = options.get("format", "iso")
        return lambda value: t.format_datetime(value, fmt)
    if kind == "money":
        form = options.get("as", "number")
        return lambda value: t.format_money(value, form)
    name = str(options.get("value_map", ""))
    table = value_maps.get(name)
    if table is None:
        return _failing(f"value map '{name}' does not exist")
    reverse = {t.vendor_key(k): str(v) for k, v in dict(options.get("reverse") or {}).items()}
    vendor_type = options.get("vendor_type", "str")
    return lambda value: t.coerce(t.unmap_value(value, table, reverse), vendor_type)


def _identity(value: Any) -> Any:
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else t.vendor_key(value)


def _compile_field(
    spec: FieldSpec, value_maps: Mapping[str, t.ValueMapTable], *, inbound: bool
) -> CompiledField:
    options = spec.options
    convert = (
        _inbound_converter(spec, value_maps) if inbound else _outbound_converter(spec, value_maps)
    )
    has_default = "default" in options
    default = options.get("default")
    if has_default and inbound and spec.transform in ("date", "datetime", "money"):
        try:
            default = _inbound_converter(spec, value_maps)(default)
        except MappingError:
            convert = _failing(f"default {default!r} is not valid for '{spec.transform}'")
    parts: tuple[CompiledPath, ...] = ()
    if spec.transform == "concat":
        parts = tuple(compile_path(str(p)) for p in options.get("paths") or [spec.vendor_path])
    return CompiledField(
        name=spec.canonical_field,
        path=compile_path(spec.vendor_path),
        convert=convert,
        required=spec.required,
        has_default=has_default,
        default=default,
        parts=parts,
        sep=str(options.get("sep", " ")),
    )


def compile_mapping(
    *,
    object_type: str,
    canonical_model: str,
    external_id_path: str,
    version_path: str = "",
    fields: Iterable[FieldSpec],
    value_maps: Mapping[str, t.ValueMapTable] | None = None,
    mapping_set_id: int | None = None,
    connection_id: int | None = None,
    version: int = 0,
) -> CompiledMapping:
    """Precompile a mapping. Fields with configuration problems are kept but fail on use with
    the problem as their error (so a draft can still be previewed); `problems` lists them."""
    maps = MappingProxyType(dict(value_maps or {}))
    inbound: list[CompiledField] = []
    outbound: list[CompiledField] = []
    problems: list[str] = []
    for spec in fields:
        spec_problems = field_spec_problems(spec, maps)
        problems.extend(spec_problems)
        if spec_problems:
            try:
                path = compile_path(spec.vendor_path)
            except PathError:
                # One key no payload has (not parsed: the vendor path may hold empty segments).
                text = f"<invalid path {spec.vendor_path!r}>"
                path = CompiledPath(text=text, steps=((text, None),))
            broken = CompiledField(
                name=spec.canonical_field,
                path=path,
                convert=_failing(spec_problems[0].removeprefix(f"{_label(spec)}: ")),
                required=spec.required,
                has_default=False,
                default=None,
            )
            if spec.direction in ("in", "both"):
                inbound.append(broken)
            if spec.direction in ("out", "both"):
                outbound.append(broken)
            continue
        if spec.inbound:
            inbound.append(_compile_field(spec, maps, inbound=True))
        if spec.outbound:
            outbound.append(_compile_field(spec, maps, inbound=False))
    try:
        id_path = compile_path(external_id_path)
    except PathError as exc:
        problems.append(f"external id path: {exc.message}")
        id_path = compile_path("<no external id path>")
    stamp_path = None
    if version_path:
        try:
            stamp_path = compile_path(version_path)
        except PathError as exc:
            problems.append(f"version path: {exc.message}")
    return CompiledMapping(
        object_type=object_type,
        canonical_model=canonical_model,
        external_id_path=id_path,
        version_path=stamp_path,
        inbound=tuple(inbound),
        outbound=tuple(outbound),
        value_maps=maps,
        mapping_set_id=mapping_set_id,
        connection_id=connection_id,
        version=version,
        problems=tuple(problems),
    )


# -- applying ----------------------------------------------------------------------------------


def map_inbound(mapping: CompiledMapping, payload: Mapping[str, Any]) -> MappedRecord:
    """Vendor payload -> canonical fields. Every field error is collected, none stops the rest."""
    errors: list[MappingError] = []
    values: dict[str, Any] = {}

    raw_id = mapping.external_id_path.get(payload)
    if raw_id is MISSING or raw_id is None or raw_id == "":
        errors.append(_missing_error(mapping.external_id_path, payload, "external_id"))
        external_id = ""
    else:
        external_id = raw_id if isinstance(raw_id, str) else str(raw_id)

    source_version = 0
    stamp_path = mapping.version_path
    if stamp_path is not None:
        stamp = stamp_path.get(payload)
        if stamp is MISSING or stamp is None:
            errors.append(_missing_error(stamp_path, payload, "source_version"))
        else:
            try:
                source_version = t.to_microseconds(stamp)
            except MappingError as exc:
                errors.append(exc.located(field="source_version", path=stamp_path.text))

    for f in mapping.inbound:
        raw = f.read(payload)
        if raw is MISSING or raw is None or (raw == "" and f.has_default):
            if f.has_default:
                values[f.name] = f.default
            elif f.required:
                errors.append(_missing_error(f.path, payload, f.name, f.parts))
            elif raw is not MISSING:
                values[f.name] = raw
            continue
        try:
            values[f.name] = f.convert(raw)
        except MappingError as exc:
            errors.append(exc.located(field=f.name, path=f.path.text))
    return MappedRecord(
        canonical_model=mapping.canonical_model,
        external_id=external_id,
        source_version=source_version,
        fields=values,
        errors=errors,
    )


def _missing_error(
    path: CompiledPath,
    payload: Mapping[str, Any],
    name: str,
    parts: tuple[CompiledPath, ...] = (),
) -> MappingError:
    if parts:
        joined = ", ".join(p.text for p in parts)
        return MappingError(f"required: none of {joined} has a value", field=name, path=path.text)
    try:
        path.require(payload)
    except PathError as exc:
        return exc.located(field=name, path=path.text)
    return MappingError(f"required path '{path.text}' is null", field=name, path=path.text)


def map_outbound(
    mapping: CompiledMapping, canonical: Mapping[str, Any], *, partial: bool = False
) -> dict[str, Any]:
    """Canonical fields -> vendor payload. Raises `OutboundMappingError` listing every field
    that failed. Canonical keys that are absent are left out of the payload; a required one is
    an error unless `partial` (an update that sends only what changed)."""
    payload: dict[str, Any] = {}
    errors: list[MappingError] = []
    for f in mapping.outbound:
        value = canonical.get(f.name, MISSING)
        if value is MISSING:
            if f.required and not partial:
                errors.append(
                    MappingError("required canonical value missing", field=f.name, path=f.path.text)
                )
            continue
        if value is None or (value == "" and f.has_default):
            if f.has_default:
                value = f.default
            elif f.required:
                errors.append(
                    MappingError(
                        "required canonical value is empty", field=f.name, path=f.path.text
                    )
                )
                continue
            else:
                _write(f, payload, None, errors)
                continue
        try:
            converted = f.convert(value)
        except MappingError as exc:
            errors.append(exc.located(field=f.name, path=f.path.text))
            continue
        _write(f, payload, converted, errors)
    if errors:
        raise OutboundMappingError(errors)
    return payload


def _write(
    f: CompiledField, payload: dict[str, Any], value: Any, errors: list[MappingError]
) -> None:
    try:
        f.path.set(payload, value)
    except PathError as exc:
        errors.append(exc.located(field=f.name, path=f.path.text))
