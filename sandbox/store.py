"""In-memory state of the sandbox: tables of records, a monotonic clock, and the counters.

Everything lives in one process and one event loop. Handlers never ``await`` between reading
and writing a table, so a write is atomic without locks.

Records are stored *compact* (flat fields, foreign keys as ids) and each vendor module renders
them into the vendor's JSON shape on the way out. That keeps 100,000 seeded time entries at a
few hundred bytes each instead of the ~3 KB Harvest's nested JSON would take.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

Key = int | str  # Harvest ids are ints; Xero and Salesforce ids are strings
IndexKeys = Mapping[str, Hashable]  # index name -> the value a record is found under
ChangeListener = Callable[["Change"], None]


@dataclass(slots=True)
class Row:
    """One stored record: vendor fields in ``data`` plus bookkeeping the vendors expose."""

    key: Key
    data: dict[str, Any]
    created: float  # epoch seconds
    updated: float  # epoch seconds; strictly increasing across the whole store
    version: int = 1


@dataclass(slots=True, frozen=True)
class Change:
    """A record was created or updated through a vendor API (or the control API)."""

    system: str
    obj: str
    scope: str  # the Xero tenant id; "" for single-tenant vendors
    row: Row
    kind: str  # "created" | "updated"


@dataclass
class Table:
    """Rows of one object type, in creation order, plus explicit secondary indexes."""

    rows: dict[Key, Row] = field(default_factory=dict)
    # index name -> value -> key. Vendors maintain them explicitly (unique names, references)
    # because a linear scan per create would make a 10,000-invoice posting run quadratic.
    indexes: dict[str, dict[Hashable, Key]] = field(default_factory=lambda: defaultdict(dict))

    def index_get(self, name: str, value: Hashable) -> Row | None:
        key = self.indexes[name].get(value)
        return None if key is None else self.rows.get(key)

    def reindex(self, key: Key, old: IndexKeys, new: IndexKeys) -> None:
        """Move record ``key`` from the index entries ``old`` to ``new``.

        Every write path of a vendor calls this with the keys it computes (one function per
        vendor) from the record before and after the write: ``{}`` as ``old`` for an insert,
        ``{}`` as ``new`` for a delete. An old entry is dropped only while it still points at
        ``key``: indexes that tolerate repeats (a Xero ``Reference``, a Salesforce account name)
        keep the entry another record put there since.
        """
        for value in new.values():
            hash(value)  # an unhashable value (a raw control PATCH) fails before any change
        for name, value in old.items():
            entries = self.indexes[name]
            if new.get(name) != value and entries.get(value) == key:
                del entries[value]
        for name, value in new.items():
            self.indexes[name][value] = key


def _zero_refused() -> dict[str, Any]:
    # Plain dicts (not defaultdicts), so ``asdict`` can copy them on Python 3.11.
    return {"total": 0, "by_status": {}, "by_reason": {}}


@dataclass
class ObjectStats:
    """What one vendor object received. ``refused`` splits by HTTP status and by reason."""

    requests: int = 0
    created: int = 0
    updated: int = 0
    idempotent_replays: int = 0
    duplicates_detected: int = 0
    throttled: int = 0
    dropped_responses: int = 0  # writes applied whose response was then cut off
    refused: dict[str, Any] = field(default_factory=_zero_refused)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stats:
    """Counters per system and object, read by ``GET /_control/stats``."""

    def __init__(self) -> None:
        self._by: dict[str, dict[str, ObjectStats]] = defaultdict(lambda: defaultdict(ObjectStats))

    def of(self, system: str, obj: str) -> ObjectStats:
        return self._by[system][obj]

    def refused(self, system: str, obj: str, status: int, reason: str) -> None:
        refused = self._by[system][obj].refused
        refused["total"] += 1
        by_status, by_reason = refused["by_status"], refused["by_reason"]
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def as_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            system: {obj: stats.as_dict() for obj, stats in sorted(objs.items())}
            for system, objs in sorted(self._by.items())
        }


class Clock:
    """Wall-clock seconds that never repeat or go backwards.

    Incremental polls (``updated_since``, ``If-Modified-Since``, SOQL ``SystemModstamp >``)
    are only lossless if two writes never share a timestamp and a later write never gets an
    earlier one; Xero exposes milliseconds, so successive calls are at least 1 ms apart.
    """

    def __init__(self) -> None:
        self._last = 0.0

    def now(self) -> float:
        now = max(time.time(), self._last + 0.001)
        self._last = now
        return now


class Store:
    """All tables of all vendors, the clock, the counters and the change listeners."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.stats = Stats()
        self.listeners: list[ChangeListener] = []
        self._tables: dict[tuple[str, str, str], Table] = {}
        self._sequences: dict[tuple[str, str], int] = defaultdict(int)

    def reset(self) -> None:
        self.stats = Stats()
        self._tables.clear()
        self._sequences.clear()

    # -- tables ------------------------------------------------------------------------------

    def table(self, system: str, obj: str, scope: str = "") -> Table:
        key = (system, obj, scope)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = Table()
        return table

    def scopes(self, system: str, obj: str) -> list[str]:
        return [scope for (sys_, ob, scope) in self._tables if sys_ == system and ob == obj]

    def objects(self) -> list[tuple[str, str, str, int]]:
        """(system, object, scope, row count) for every table, for the control API."""
        return [(s, o, sc, len(t.rows)) for (s, o, sc), t in sorted(self._tables.items())]

    def next_id(self, system: str, obj: str, start: int = 1) -> int:
        """Next integer id for ``obj``; ``start`` only matters for the first call."""
        key = (system, obj)
        current = self._sequences[key]
        if current < start:
            current = start - 1
        self._sequences[key] = current + 1
        return current + 1

    # -- writes ------------------------------------------------------------------------------

    def insert(
        self,
        system: str,
        obj: str,
        key: Key,
        data: dict[str, Any],
        scope: str = "",
        *,
        at: float | None = None,
        seeded: bool = False,
    ) -> Row:
        """Store a new record. Seeded rows carry a historic ``at`` and are neither counted
        nor announced by webhook: the counters describe what the sandbox *received*."""
        stamp = at if at is not None else self.clock.now()
        row = Row(key=key, data=data, created=stamp, updated=stamp)
        self.table(system, obj, scope).rows[key] = row
        if not seeded:
            self.stats.of(system, obj).created += 1
            self._emit(Change(system, obj, scope, row, "created"))
        return row

    def touch(self, system: str, obj: str, row: Row, scope: str = "") -> Row:
        """Mark ``row`` as updated after its ``data`` was changed in place."""
        row.updated = self.clock.now()
        row.version += 1
        self.stats.of(system, obj).updated += 1
        self._emit(Change(system, obj, scope, row, "updated"))
        return row

    def _emit(self, change: Change) -> None:
        for listener in self.listeners:
            listener(change)

    # -- reads -------------------------------------------------------------------------------

    def get(self, system: str, obj: str, key: Any, scope: str = "") -> Row | None:
        table = self._tables.get((system, obj, scope))
        return None if table is None else table.rows.get(key)

    def rows(self, system: str, obj: str, scope: str = "") -> Iterable[Row]:
        table = self._tables.get((system, obj, scope))
        return () if table is None else table.rows.values()

    def count(self, system: str, obj: str, scope: str = "") -> int:
        table = self._tables.get((system, obj, scope))
        return 0 if table is None else len(table.rows)
