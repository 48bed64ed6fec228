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
concatenation has no reverse and is inbound only. Outbound extras:

- lists: ``lines[].quantity`` -> ``LineItems[].Quantity`` writes one vendor item per canonical
  item; a plain canonical field into an item path (``legal_entity__code`` ->
  ``LineItems[].AccountCode``) is converted once and written into every item;
- conditions: option ``when`` (write only if that canonical key has a value) or ``unless``
  (only if it has none), e.g. the contact's name only when its id is unknown. On an item field
  they name an item key (``lines[].key``);
- constants: a ``default`` transform writes its default when the canonical value is absent;
- value maps keyed by the canonical value (option ``keyed_by: canonical``): the map's entries
  read canonical -> vendor, with the map's default for the rest (a legal entity's account code).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from integrations.mapping import transforms as t
from integrations.mapping.errors import MappingError, OutboundMappingError, PathError
from integrations.mapping.paths import (
    LIST_MARK,
    MISSING,
    CompiledPath,
    compile_path,
    split_list_path,
)
from integrations.models.mapping import FieldMapping
from integrations.vendors.spec import FieldSpec

# What a FieldMapping row may hold (its choices: model metadata, no queries).
DIRECTIONS = tuple(FieldMapping.Direction.values)
TRANSFORMS = tuple(FieldMapping.Transform.values)

# Options each transform understands; anything else is a typo the publish check refuses.
CONDITIONS = frozenset({"when", "unless"})
ALLOWED_OPTIONS: dict[str, frozenset[str]] = {
    "copy": frozenset({"default", "vendor_type"}) | CONDITIONS,
    "value_map": frozenset(
        {"value_map", "default", "canonical_type", "vendor_type", "reverse", "keyed_by"}
    )
    | CONDITIONS,
    "date": frozenset({"default", "format"}) | CONDITIONS,
    "datetime": frozenset({"default", "format"}) | CONDITIONS,
    "money": frozenset({"default", "places", "as"}) | CONDITIONS,
    "default": frozenset({"default"}) | CONDITIONS,
    "concat": frozenset({"paths", "sep"}),
}
KEYED_BY = ("vendor", "canonical")

Converter = Callable[[Any], Any]
EXTERNAL_ID_SUFFIX = "__external_id"


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
    # Outbound: write only when this canonical key has a value (`when`) or has none (`unless`).
    when: str = ""
    unless: str = ""
    # Outbound: a constant (the default transform) is written when the canonical value is absent.
    constant: bool = False
    # The key itself when the vendor path is one plain key: written without walking a path.
    key: str | None = None

    def read(self, payload: Any) -> Any:
        if not self.parts:
            return self.path.get(payload)
        values = [p.get(payload) for p in self.parts]
        present = [v for v in values if v is not MISSING]
        if not present:
            return MISSING
        return t.concat(present, self.sep)


@dataclass(frozen=True, slots=True)
class CompiledList:
    """An outbound vendor list (``LineItems``) built from a canonical list (``lines``): `items`
    take their value from each canonical item, `shared` from the canonical record (converted
    once, written into every item). Their paths are relative to the item."""

    name: str
    path: CompiledPath
    items: tuple[CompiledField, ...]
    shared: tuple[CompiledField, ...]
    # Every item path is one plain key: an item starts as a shallow copy of the shared values.
    flat: bool

    @property
    def required(self) -> bool:
        return any(f.required for f in self.items)

    @property
    def simple(self) -> tuple[tuple[str, str, Converter], ...] | None:
        """(canonical key, vendor key, converter) per item field when every one is a plain
        key with no condition or constant: items are then rendered in one tight loop (a
        100,000-line billing run renders 300,000 values)."""
        if not self.flat or any(f.when or f.unless or f.constant for f in self.items):
            return None
        return tuple((f.name, f.key, f.convert) for f in self.items if f.key is not None)


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
    # Outbound vendor lists (``LineItems[]``), each written after the plain fields.
    lists: tuple[CompiledList, ...] = ()
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
    problems.extend(f"{label}: {p}" for p in _list_problems(spec))
    problems.extend(f"{label}: {p}" for p in _condition_problems(spec, options))
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
        keyed_by = options.get("keyed_by", "vendor")
        if keyed_by not in KEYED_BY:
            problems.append(f"{label}: 'keyed_by' must be one of {', '.join(KEYED_BY)}")
        elif keyed_by == "canonical" and spec.direction != "out":
            problems.append(
                f"{label}: a value map keyed by the canonical value reads one way: "
                "map it outbound only"
            )
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


def _list_problems(spec: FieldSpec) -> list[str]:
    """What is wrong with a field's ``[]`` (list) paths; empty when it has none or they hold."""
    vendor_marked = LIST_MARK in spec.vendor_path
    canonical_marked = LIST_MARK in spec.canonical_field
    if not vendor_marked and not canonical_marked:
        return []
    problems: list[str] = []
    if spec.direction != "out" or spec.transform == "concat":
        problems.append("list paths ('[]') are written outbound only: set the direction to out")
    if canonical_marked and not vendor_marked:
        problems.append("a canonical list item needs a vendor list path (e.g. LineItems[].X)")
    for path in (spec.vendor_path, spec.canonical_field):
        try:
            split_list_path(path)
        except PathError as exc:
            problems.append(exc.message)
    if canonical_marked:
        item = spec.canonical_field.partition(LIST_MARK)[2].removeprefix(".")
        if "." in item:
            problems.append("a canonical list item field is one key: lines[].quantity")
    return problems


def _condition_problems(spec: FieldSpec, options: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for name in sorted(CONDITIONS & set(options)):
        key = options[name]
        if not isinstance(key, str) or not key.strip():
            problems.append(f"'{name}' must name a canonical field")
            continue
        if spec.direction != "out":
            problems.append(f"'{name}' applies outbound only: set the direction to out")
        in_item = LIST_MARK in spec.canonical_field
        prefix = spec.canonical_field.partition(LIST_MARK)[0] + LIST_MARK + "."
        if in_item and not key.startswith(prefix):
            problems.append(f"'{name}' on a list item names a key of the same item ({prefix}...)")
        if not in_item and LIST_MARK in key:
            problems.append(f"'{name}' names a list item, but this field is not one")
    return problems


def _label(spec: FieldSpec) -> str:
    return f"{spec.canonical_field or '?'} ({spec.vendor_path or '?'})"


def _failing(message: str) -> Converter:
    def convert(value: Any) -> Any:
        raise MappingError(message, value=value)

    return convert


def _inbound_converter(spec: FieldSpec, value_maps: Mapping[str, t.ValueMapTable]) -> Converter:
    if spec.transform in ("copy", "default", "concat"):
        # Identifiers are text everywhere (cross-references store text): Harvest's integer ids
        # become "1000011", so a batch keyed by external id never mixes 1000011 and "1000011".
        return _text if spec.canonical_field.endswith(EXTERNAL_ID_SUFFIX) else _identity
    return _memoized(_parsing_converter(spec, value_maps))


# Distinct values a converter remembers: a polled page repeats few (2,000 time entries carry a
# few dozen amounts of hours and a few hundred dates).
MEMO_SIZE = 4096


def _memoized(convert: Converter) -> Converter:
    """`convert`, remembering its result per vendor value (of its own class: 1, 1.0 and True
    are equal keys otherwise). The results are immutable (Decimal, date, datetime, text, a
    number), so sharing one is safe; a value that fails is converted (and fails) every time,
    and an unhashable one is converted as it comes."""
    memo: dict[tuple[type, Any], Any] = {}

    def remembered(value: Any) -> Any:
        key = (value.__class__, value)
        try:
            return memo[key]
        except KeyError:
            pass
        except TypeError:
            return convert(value)
        result = convert(value)
        if len(memo) < MEMO_SIZE:
            memo[key] = result
        return result

    return remembered


def _parsing_converter(spec: FieldSpec, value_maps: Mapping[str, t.ValueMapTable]) -> Converter:
    options = spec.options
    kind = spec.transform
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
        return _number if form == "number" else lambda value: t.format_money(value, form)
    name = str(options.get("value_map", ""))
    table = value_maps.get(name)
    if table is None:
        return _failing(f"value map '{name}' does not exist")
    vendor_type = options.get("vendor_type", "str")
    if options.get("keyed_by") == "canonical":
        # The map's entries read canonical -> vendor here ("UK01" -> "200"), default included.
        return lambda value: t.coerce(t.map_value(value, table), vendor_type)
    reverse = {t.vendor_key(k): str(v) for k, v in dict(options.get("reverse") or {}).items()}
    return lambda value: t.coerce(t.unmap_value(value, table, reverse), vendor_type)


def _identity(value: Any) -> Any:
    return value


def _number(value: Any) -> Any:
    """`format_money(value, "number")` with a shortcut for the Decimals canonical records hold:
    an invoice of 100 lines converts 200 of them."""
    if type(value) is Decimal and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    return t.format_money(value, "number")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else t.vendor_key(value)


def _compile_field(
    spec: FieldSpec,
    value_maps: Mapping[str, t.ValueMapTable],
    *,
    inbound: bool,
    name: str | None = None,
    vendor_path: str | None = None,
) -> CompiledField:
    """`name` and `vendor_path` override the spec's for a list field (the item's key and path)."""
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
    path = compile_path(vendor_path if vendor_path is not None else spec.vendor_path)
    return CompiledField(
        name=name if name is not None else spec.canonical_field,
        path=path,
        convert=convert,
        required=spec.required,
        has_default=has_default,
        default=default,
        parts=parts,
        sep=str(options.get("sep", " ")),
        when="" if inbound else _condition(options, "when"),
        unless="" if inbound else _condition(options, "unless"),
        constant=not inbound and spec.transform == "default" and has_default,
        key=path.steps[0][0] if len(path.steps) == 1 else None,
    )


def _condition(options: Mapping[str, Any], name: str) -> str:
    key = str(options.get(name, ""))
    # An item's condition names "lines[].key"; within the item it is read as "key".
    return key.partition(LIST_MARK + ".")[2] if LIST_MARK in key else key


def _broken_field(spec: FieldSpec, problem: str) -> CompiledField:
    """A field whose configuration is wrong: it fails with its problem whenever it is used."""
    try:
        path = compile_path(spec.vendor_path)
    except PathError:
        # One key no payload has (not parsed: the vendor path may hold empty segments).
        text = f"<invalid path {spec.vendor_path!r}>"
        path = CompiledPath(text=text, steps=((text, None),))
    return CompiledField(
        name=spec.canonical_field,
        path=path,
        convert=_failing(problem.removeprefix(f"{_label(spec)}: ")),
        required=spec.required,
        has_default=False,
        default=None,
    )


def _compile_lists(
    specs: Sequence[FieldSpec], value_maps: Mapping[str, t.ValueMapTable], problems: list[str]
) -> tuple[CompiledList, ...]:
    """Group the outbound list fields by vendor list; each list reads one canonical list."""
    grouped: dict[str, list[tuple[FieldSpec, str]]] = {}
    for spec in specs:
        vendor_list, item_path = split_list_path(spec.vendor_path) or ("", "")
        grouped.setdefault(vendor_list, []).append((spec, item_path))
    lists: list[CompiledList] = []
    for vendor_list, members in grouped.items():
        sources = {
            spec.canonical_field.partition(LIST_MARK)[0]
            for spec, _ in members
            if LIST_MARK in spec.canonical_field
        }
        if len(sources) != 1:
            problems.append(
                f"{vendor_list}[]: its items must come from one canonical list "
                f"({', '.join(sorted(sources)) or 'none is mapped, e.g. lines[].description'})"
            )
            continue
        (source,) = sources
        items: list[CompiledField] = []
        shared: list[CompiledField] = []
        for spec, item_path in members:
            in_item = LIST_MARK in spec.canonical_field
            name = spec.canonical_field.partition(LIST_MARK)[2][1:] if in_item else None
            compiled = _compile_field(
                spec, value_maps, inbound=False, name=name, vendor_path=item_path
            )
            (items if in_item else shared).append(compiled)
        lists.append(
            CompiledList(
                name=source,
                path=compile_path(vendor_list),
                items=tuple(items),
                shared=tuple(shared),
                flat=all(f.key is not None for f in (*items, *shared)),
            )
        )
    return tuple(lists)


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
    list_specs: list[FieldSpec] = []
    problems: list[str] = []
    for spec in fields:
        spec_problems = field_spec_problems(spec, maps)
        problems.extend(spec_problems)
        if spec_problems:
            broken = _broken_field(spec, spec_problems[0])
            if spec.direction in ("in", "both"):
                inbound.append(broken)
            if spec.direction in ("out", "both"):
                outbound.append(broken)
            continue
        if LIST_MARK in spec.vendor_path:
            list_specs.append(spec)  # outbound only (checked above)
            continue
        if spec.inbound:
            inbound.append(_compile_field(spec, maps, inbound=True))
        if spec.outbound:
            outbound.append(_compile_field(spec, maps, inbound=False))
    lists = _compile_lists(list_specs, maps, problems)
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
        lists=lists,
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
                source_version = (
                    _stamp_micros(stamp) if stamp.__class__ is str else t.to_microseconds(stamp)
                )
            except MappingError as exc:
                errors.append(exc.located(field="source_version", path=stamp_path.text))

    # A field read from one key of a dict payload (most are) is one dict lookup, no path walk.
    plain = payload.__class__ is dict
    for f in mapping.inbound:
        key = f.key
        raw = (
            payload.get(key, MISSING)
            if plain and key is not None and not f.parts
            else f.read(payload)
        )
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


@lru_cache(maxsize=MEMO_SIZE)
def _stamp_micros(stamp: str) -> int:
    """``to_microseconds`` of a text stamp, each distinct one parsed once (a page's records
    share few)."""
    return t.to_microseconds(stamp)


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
    an error unless `partial` (an update that sends only what changed). Lists are written after
    the plain fields, one vendor item per canonical item."""
    payload: dict[str, Any] = {}
    errors: list[MappingError] = []
    _render(mapping.outbound, canonical, payload, errors, partial=partial)
    for target in mapping.lists:
        items = _render_list(target, canonical, errors, partial=partial)
        if items is not None:
            _write(target.name, target.path, payload, items, errors)
    if errors:
        raise OutboundMappingError(errors)
    return payload


def _has_value(value: Any) -> bool:
    return value is not MISSING and value is not None and value != ""


def _render(
    fields: Sequence[CompiledField],
    source: Mapping[str, Any],
    out: dict[str, Any],
    errors: list[MappingError],
    *,
    partial: bool,
    where: str = "",
) -> None:
    """Write each field's converted value from `source` into `out`. `where` names the list
    item in error messages (``lines[3].``)."""
    for f in fields:
        if f.when and not _has_value(source.get(f.when, MISSING)):
            continue
        if f.unless and _has_value(source.get(f.unless, MISSING)):
            continue
        value = source.get(f.name, MISSING)
        if value is MISSING and not (f.constant and not partial):
            if f.required and not partial:
                errors.append(_located_missing("required canonical value missing", f, where))
            continue
        if value is MISSING or value is None or (value == "" and f.has_default):
            if f.has_default:
                value = f.default
            elif f.required:
                errors.append(_located_missing("required canonical value is empty", f, where))
                continue
            else:
                _put(f, out, None, errors, where)
                continue
        try:
            converted = f.convert(value)
        except MappingError as exc:
            errors.append(exc.located(field=f"{where}{f.name}", path=f.path.text))
            continue
        _put(f, out, converted, errors, where)


def _render_list(
    target: CompiledList,
    canonical: Mapping[str, Any],
    errors: list[MappingError],
    *,
    partial: bool,
) -> list[dict[str, Any]] | None:
    """The vendor items for one canonical list, or None when the list is not given."""
    source = canonical.get(target.name, MISSING)
    if source is MISSING or source is None:
        if target.required and not partial:
            errors.append(
                MappingError(
                    "required canonical value missing", field=target.name, path=target.path.text
                )
            )
        return None
    if not isinstance(source, Sequence) or isinstance(source, str | bytes):
        errors.append(
            MappingError(
                f"expected a list, got {type(source).__name__}",
                field=target.name,
                path=target.path.text,
            )
        )
        return None
    # The values every item shares are converted once, not once per item.
    shared: dict[str, Any] = {}
    _render(target.shared, canonical, shared, errors, partial=partial)
    items: list[dict[str, Any]] = []
    simple = target.simple
    for index, item in enumerate(source):
        if not isinstance(item, Mapping):
            errors.append(MappingError("expected an object", field=f"{target.name}[{index}]"))
            continue
        out = dict(shared) if target.flat else copy.deepcopy(shared)
        if simple is not None:
            # The common case, in one loop: every value present and convertible. Anything else
            # (a gap, an empty value, a bad value) renders the item again the general way.
            try:
                for name, key, convert in simple:
                    value = item[name]
                    if value is None or value == "":
                        raise KeyError(name)
                    out[key] = convert(value)
            except (KeyError, MappingError):
                out = dict(shared)
            else:
                items.append(out)
                continue
        where = f"{target.name}[{index}]."
        _render(target.items, item, out, errors, partial=partial, where=where)
        items.append(out)
    return items


def _located_missing(message: str, f: CompiledField, where: str) -> MappingError:
    return MappingError(message, field=f"{where}{f.name}", path=f.path.text)


def _put(
    f: CompiledField, out: dict[str, Any], value: Any, errors: list[MappingError], where: str
) -> None:
    if f.key is not None:
        out[f.key] = value
    else:
        _write(f"{where}{f.name}", f.path, out, value, errors)


def _write(
    name: str, path: CompiledPath, payload: dict[str, Any], value: Any, errors: list[MappingError]
) -> None:
    try:
        path.set(payload, value)
    except PathError as exc:
        errors.append(exc.located(field=name, path=path.text))
