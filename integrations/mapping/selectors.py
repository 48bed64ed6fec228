"""Reads of mapping configuration, compiled and cached for the sync workers.

`mapping_load_published(connection_id=, object_type=)` is called once per batch of records (or
per record: after the first call it is two dict lookups and, at most once a second, one cache
read). What is cached, per worker process:

- (connection, object type) -> the published CompiledMapping, or None when there is none;
- (mapping set id, version) -> CompiledMapping, so a version is compiled once.

Invalidation: publishing a version, or changing a value map, bumps a generation counter in the
shared cache (Redis) after the commit and clears this process's copy at once. Other processes
read the counter at most every `CHECK_INTERVAL_S` seconds and drop their copy when it moved, so a
publish reaches every worker within about a second without a query per record. If the shared
cache is unreachable, the local copy is dropped at every check instead (correct, only slower).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.cache import cache

from integrations.mapping.apply import CompiledMapping, compile_mapping
from integrations.mapping.transforms import ValueMapTable
from integrations.models import FieldMapping, MappingSet, ValueMap
from integrations.vendors.spec import FieldSpec

logger = logging.getLogger(__name__)

GENERATION_KEY = "integrations:mapping:generation"
# One cache read per second per worker process: 10,000 records/s would otherwise be 10,000
# Redis round trips (~0.1 ms each, a tenth of the budget) for a value that changes rarely.
CHECK_INTERVAL_S = 1.0

_lock = threading.Lock()
_by_object: dict[tuple[int, str], CompiledMapping | None] = {}
_by_version: dict[tuple[int, int], CompiledMapping] = {}
_state: dict[str, float | int | None] = {"generation": None, "checked_at": float("-inf")}


def _shared_generation() -> int | None:
    try:
        value = cache.get(GENERATION_KEY)
    except Exception:  # the cache being down must not stop the sync
        logger.warning("mapping cache generation unreadable; dropping local mappings")
        return -1
    return int(value) if value is not None else None


def _refresh_if_due() -> None:
    now = time.monotonic()
    if now - float(_state["checked_at"] or 0.0) < CHECK_INTERVAL_S:
        return
    generation = _shared_generation()
    with _lock:
        if generation == -1 or generation != _state["generation"]:
            _by_object.clear()
            _by_version.clear()
        _state["generation"] = generation
        _state["checked_at"] = now


def mapping_cache_clear() -> None:
    """Forget this process's compiled mappings (the next load queries again)."""
    with _lock:
        _by_object.clear()
        _by_version.clear()
        _state["checked_at"] = float("-inf")


def mapping_cache_bump() -> None:
    """Tell every process that published mappings or value maps changed. Call after commit."""
    mapping_cache_clear()
    try:
        cache.add(GENERATION_KEY, 0, timeout=None)
        cache.incr(GENERATION_KEY)
    except Exception:
        logger.warning("mapping cache generation not bumped; workers refresh on their next check")


def value_map_tables(names: Iterable[str]) -> dict[str, ValueMapTable]:
    """Immutable copies of the named value maps (two queries, whatever the number of maps)."""
    wanted = {n for n in names if n}
    if not wanted:
        return {}
    tables: dict[str, ValueMapTable] = {}
    for value_map in ValueMap.objects.filter(name__in=wanted).prefetch_related("entries"):
        tables[value_map.name] = ValueMapTable.build(
            value_map.name,
            [(e.vendor_value, e.canonical_value) for e in value_map.entries.all()],
            value_map.default or None,
        )
    return tables


def value_map_table_of(name: str, table: Mapping[str, Any]) -> ValueMapTable:
    """A version's own copy of a value map ({"entries": {...}, "default": "..."}) as a table."""
    entries = {str(k): str(v) for k, v in dict(table.get("entries") or {}).items()}
    return ValueMapTable.build(name, entries, str(table.get("default") or "") or None)


def field_specs(fields: Iterable[FieldMapping]) -> list[FieldSpec]:
    return [
        FieldSpec(
            canonical_field=f.canonical_field,
            vendor_path=f.vendor_path,
            direction=f.direction,
            transform=f.transform,
            options=dict(f.options or {}),
            required=f.required,
        )
        for f in fields
    ]


def mapping_set_compile(mapping_set: MappingSet) -> CompiledMapping:
    """Compile one version from the database (fields, then the value maps they name). A
    version not yet published reads the value maps it changes from its own copy
    (`MappingSet.value_maps`), the others from the global maps."""
    specs = field_specs(mapping_set.fields.all())
    names = [str(s.options.get("value_map", "")) for s in specs if s.transform == "value_map"]
    tables = value_map_tables(names)
    if mapping_set.status in (MappingSet.Status.DRAFT, MappingSet.Status.PENDING):
        tables.update(
            (name, value_map_table_of(name, table))
            for name, table in (mapping_set.value_maps or {}).items()
            if name in names
        )
    return compile_mapping(
        object_type=mapping_set.object_type,
        canonical_model=mapping_set.canonical_model,
        external_id_path=mapping_set.external_id_path,
        version_path=mapping_set.version_path,
        fields=specs,
        value_maps=tables,
        mapping_set_id=mapping_set.pk,
        connection_id=mapping_set.connection_id,
        version=mapping_set.version,
    )


def mapping_load_published(*, connection_id: int, object_type: str) -> CompiledMapping | None:
    """The published, compiled mapping for a connection's vendor object, or None."""
    _refresh_if_due()
    key = (connection_id, object_type)
    try:
        return _by_object[key]
    except KeyError:
        pass
    mapping_set = mapping_set_published(connection_id=connection_id, object_type=object_type)
    compiled: CompiledMapping | None = None
    if mapping_set is not None:
        version_key = (mapping_set.pk, mapping_set.version)
        compiled = _by_version.get(version_key)
        if compiled is None:
            compiled = mapping_set_compile(mapping_set)
            with _lock:
                _by_version[version_key] = compiled
    with _lock:
        _by_object[key] = compiled
    return compiled


def mapping_set_published(*, connection_id: int, object_type: str) -> MappingSet | None:
    return MappingSet.objects.filter(
        connection_id=connection_id, object_type=object_type, status=MappingSet.Status.PUBLISHED
    ).first()
