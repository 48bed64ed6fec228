"""Fast inserts of many new rows (PostgreSQL COPY), shared by polling and billing runs.

Two entry points: ``copy_insert`` for model instances a caller already holds, and
``copy_insert_values`` for plain ``{attname: value}`` rows, which skips building model
instances altogether (for tens of thousands of polled records, constructing the instances alone
cost more than the COPY). Both draw the ids from the table's sequence first, so callers learn
them as bulk_create would tell them. Other databases go through bulk_create.
"""

from __future__ import annotations

import contextlib
import gc
import json
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from django.db import connection as db
from django.db import models
from django.utils import timezone

# Python values psycopg's COPY writes as they are; anything else goes through the field.
_PLAIN = (str, int, bool, Decimal, date, datetime)
# Fields whose values psycopg adapts itself (Django's get_db_prep_save returns them unchanged
# on PostgreSQL): no per-value conversion.
_AS_IS = {
    "AutoField",
    "BigAutoField",
    "BigIntegerField",
    "BooleanField",
    "CharField",
    "DateField",
    "DateTimeField",
    "DecimalField",
    "EmailField",
    "ForeignKey",
    "IntegerField",
    "OneToOneField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "SlugField",
    "SmallIntegerField",
    "TextField",
    "URLField",
}

Converter = Callable[[Any], Any] | None


def json_text(value: Any, encoder: type[json.JSONEncoder] | None = None) -> str:
    """A JSON document as text for COPY. With no custom encoder, orjson where it can (several
    times faster than json.dumps), json.dumps for what orjson refuses (integers over 64 bits);
    a field's own encoder is always honoured, so its formats stay exactly as Django writes
    them."""
    if encoder is None:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            pass
    return json.dumps(value, cls=encoder)


def _converter(field: models.Field[Any, Any]) -> Converter:
    if isinstance(field, models.JSONField):
        encoder = field.encoder
        # Rows of one insert often share one JSON value (the same field_sources dict): each
        # distinct object is serialised once. The memo holds the object, so its id stays valid.
        memo: dict[int, tuple[Any, str]] = {}

        def to_json(value: Any) -> Any:
            if value is None:
                return None
            hit = memo.get(id(value))
            if hit is None:
                hit = memo[id(value)] = (value, json_text(value, encoder))
            return hit[1]

        return to_json
    if field.get_internal_type() in _AS_IS:
        return None

    def prepare(value: Any) -> Any:
        if value is None or isinstance(value, _PLAIN):
            return value
        return field.get_db_prep_save(value, db)

    return prepare


def next_ids(model: type[models.Model], count: int) -> list[int]:
    """Draw ids for new rows from the table's sequence (PostgreSQL)."""
    meta = model._meta
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [meta.db_table, meta.pk.column, count],
        )
        return [pk for (pk,) in cursor.fetchall()]


def _copy(model: type[models.Model], rows: Sequence[Sequence[Any]]) -> None:
    meta = model._meta
    fields = meta.concrete_fields
    converters = [(i, c) for i, c in enumerate(_converter(f) for f in fields) if c is not None]
    columns = ", ".join(db.ops.quote_name(str(f.column)) for f in fields)
    # COPY goes through psycopg's own cursor: its errors are translated here, so callers see
    # Django's IntegrityError (and can fall back) as with any other query.
    with (
        db.wrap_database_errors,
        db.cursor() as cursor,
        cursor.cursor.copy(f"COPY {db.ops.quote_name(meta.db_table)} ({columns}) FROM STDIN") as cp,
    ):
        for row in rows:
            if converters:
                row = list(row)
                for i, convert in converters:
                    row[i] = convert(row[i])
            cp.write_row(row)


def copy_insert(model: type[models.Model], objs: list[Any]) -> None:
    """Insert new model instances; each gets its pk, as bulk_create would give it."""
    if not objs:
        return
    if db.vendor != "postgresql":
        model._default_manager.bulk_create(objs, batch_size=1000)
        return
    meta = model._meta
    now = timezone.now()
    for field in meta.concrete_fields:  # what pre_save would fill (auto_now, auto_now_add)
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            for obj in objs:
                setattr(obj, field.attname, now)
    for obj, pk in zip(objs, next_ids(model, len(objs)), strict=True):
        obj.pk = pk
    attnames = [f.attname for f in meta.concrete_fields]
    _copy(model, [[getattr(obj, name) for name in attnames] for obj in objs])
    for obj in objs:
        obj._state.adding = False
        obj._state.db = db.alias


def copy_insert_values(model: type[models.Model], rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert rows given as ``{attname: value}``; a field a row leaves out takes its default
    (as the model's constructor would give it), ``auto_now(_add)`` fields the current time.
    Returns the new ids in the rows' order."""
    if not rows:
        return []
    meta = model._meta
    if db.vendor != "postgresql":
        created = model._default_manager.bulk_create(
            [model(**dict(row)) for row in rows], batch_size=1000
        )
        return [obj.pk for obj in created]
    now = timezone.now()
    pks = next_ids(model, len(rows))
    fixed: dict[str, Any] = {}
    for field in meta.concrete_fields:
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            fixed[field.attname] = now
    defaults = {f.attname: f.get_default() for f in meta.concrete_fields if f is not meta.pk}
    attnames = [f.attname for f in meta.concrete_fields]
    unknown = set().union(*rows) - set(attnames)
    if unknown:  # as the model's constructor would refuse them, instead of dropping them
        raise TypeError(f"{meta.label} has no field(s) {', '.join(sorted(unknown))}")
    pick = operator.itemgetter(*attnames)
    pk_name = meta.pk.attname
    table = [
        pick({**defaults, **row, **fixed, pk_name: pk}) for pk, row in zip(pks, rows, strict=True)
    ]
    _copy(model, table)
    return pks


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """For bulk work that allocates hundreds of thousands of objects none of which is in a
    reference cycle (a polled page of parsed JSON; a billing chunk rendering 5,000 lines):
    each allocation burst would start the cyclic collector, which walks them all (a quarter of
    a poll's CPU time; 0.3 s of a 100,000-entry billing run, measured). Reference counting still
    frees everything; the collector runs again as soon as the work is over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
