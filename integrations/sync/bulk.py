"""Fast inserts of many new rows (PostgreSQL COPY), shared by polling and billing runs.

Two entry points: ``copy_insert`` for model instances a caller already holds, and
``copy_insert_values`` for plain ``{attname: value}`` rows, which skips building model
instances altogether (for tens of thousands of polled records, constructing the instances alone
cost more than the COPY). Both draw the ids from the table's sequence first, so callers learn
them as bulk_create would tell them (``copy_insert_values(..., ids=False)``: none are drawn, for
rows nobody needs the ids of). ``copy_insert_values(..., binary=True)`` sends the rows in
COPY's binary format (see `_copy`). Other databases go through bulk_create.
"""

from __future__ import annotations

import contextlib
import gc
import json
import operator
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from django.db import connection as db
from django.db import models
from django.utils import timezone
from psycopg.types.json import Json, Jsonb

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


# Binary COPY: the PostgreSQL type of each column (its type name without modifiers, as the
# database names it) -> the Python classes psycopg's binary dumper for it takes as they are.
_BINARY_CLASSES: dict[str, tuple[type, ...]] = {
    "bigint": (int, bool),
    "integer": (int, bool),
    "smallint": (int, bool),
    "numeric": (Decimal, int),
    "varchar": (str,),
    "text": (str,),
    "boolean": (bool,),
    "date": (date,),
    "timestamp with time zone": (datetime,),
    "jsonb": (),
    "json": (),
    "uuid": (uuid.UUID,),
}
# The JSON types, sent as the bytes they are encoded to (`_json_converter`).
_JSON_TYPES: dict[str, type[Json] | type[Jsonb]] = {"jsonb": Jsonb, "json": Json}


# Django's own fields whose values binary COPY sends (converted as above when needed).
_BINARY_FIELDS = _AS_IS | {"JSONField", "UUIDField"}


def _json_bytes(value: Any, encoder: type[json.JSONEncoder] | None) -> bytes:
    """``json_text`` as bytes: what psycopg sends for a jsonb column, without a round trip
    through ``str``."""
    if encoder is None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value, cls=encoder).encode()


def _as_is(data: bytes) -> bytes:
    return data


def _json_converter(
    field: models.Field[Any, Any], wrapper: type[Json] | type[Jsonb] = Jsonb
) -> Callable[[Any], Any]:
    """JSON for a binary COPY: the bytes it is encoded to, each distinct object once (rows of
    one insert often share one value, as `_converter` notes)."""
    encoder = getattr(field, "encoder", None)
    memo: dict[int, tuple[Any, Json | Jsonb]] = {}

    def to_json_bytes(value: Any) -> Any:
        if value is None:
            return None
        hit = memo.get(id(value))
        if hit is None:
            hit = memo[id(value)] = (value, wrapper(_json_bytes(value, encoder), _as_is))
        return hit[1]

    return to_json_bytes


def _takes_subclass(pg_type: str, value: Any) -> bool:
    """Whether a binary dumper sends this value of a subclass of its classes as it is: text of
    any str, numbers of any int or Decimal. Dates and times only of their own class (a datetime
    is a date to isinstance, and a date column must not get one unconverted)."""
    if pg_type in ("varchar", "text"):
        return isinstance(value, str)
    if pg_type in ("bigint", "integer", "smallint"):
        return isinstance(value, int)
    if pg_type == "numeric":
        return isinstance(value, int | Decimal)
    return False


def _prepared(field: models.Field[Any, Any]) -> Callable[[Any], Any]:
    """A value of another class than its column's binary dumper takes, as Django prepares it
    for a save (a value it cannot convert still fails, loudly, in the dumper)."""
    return lambda value: field.get_db_prep_save(field.to_python(value), db)


def _binary_types(fields: Sequence[models.Field[Any, Any]]) -> list[str] | None:
    """The columns' PostgreSQL types for a binary COPY, or None when one is not a plain type
    this module knows how to send in binary (COPY then goes as text)."""
    names = []
    for field in fields:
        if field.get_internal_type() not in _BINARY_FIELDS:
            return None  # a field of its own kind may prepare its values in its own way
        db_type = field.db_type(db)
        name = db_type.split("(", 1)[0].strip() if db_type else ""
        if name == "character varying":
            name = "varchar"
        if name not in _BINARY_CLASSES:
            return None
        names.append(name)
    return names


def _copy(
    model: type[models.Model],
    rows: Sequence[Sequence[Any]],
    fields: Sequence[models.Field[Any, Any]] | None = None,
    *,
    binary: bool = False,
) -> None:
    """COPY rows (values in the order of `fields`, the model's concrete fields by default).
    ``binary``: in PostgreSQL's binary format when every column's type allows, which halves
    the client's work per row (no text formatting and escaping of each value; a JSON document
    goes as the bytes it was encoded to) and a third of the server's (no parsing of numbers and
    times) on a page of 2,000 polled records. Binary dumpers are strict about the Python class
    of a value (a str for an integer column fails), so it is for rows whose values were
    validated or built with their fields' own types: the values are checked on the way, and
    converted by the field when their class is not the column's."""
    meta = model._meta
    fields = meta.concrete_fields if fields is None else fields
    types = _binary_types(fields) if binary else None
    if types is not None:
        _copy_binary(meta.db_table, fields, types, rows)
        return
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


def _copy_binary(
    table: str,
    fields: Sequence[models.Field[Any, Any]],
    types: list[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    jsons = [
        (i, _json_converter(f, _JSON_TYPES[t]))
        for i, (f, t) in enumerate(zip(fields, types, strict=True))
        if t in _JSON_TYPES
    ]
    # Per other column: the classes its dumper takes as they are (a set that learns the
    # subclasses it may, such as a TextChoices member for a text column), and the field's
    # conversion for the rest.
    checks = [
        (i, set(_BINARY_CLASSES[t]), t, _prepared(f))
        for i, (f, t) in enumerate(zip(fields, types, strict=True))
        if t not in _JSON_TYPES
    ]
    columns = ", ".join(db.ops.quote_name(str(f.column)) for f in fields)
    with (
        db.wrap_database_errors,
        db.cursor() as cursor,
        cursor.cursor.copy(
            f"COPY {db.ops.quote_name(table)} ({columns}) FROM STDIN (FORMAT BINARY)"
        ) as cp,
    ):
        cp.set_types(types)
        for row in rows:
            row = list(row)
            for i, to_json_bytes in jsons:
                row[i] = to_json_bytes(row[i])
            for i, classes, pg_type, prepare in checks:
                value = row[i]
                if value is not None and value.__class__ not in classes:
                    if _takes_subclass(pg_type, value):
                        classes.add(value.__class__)
                    else:
                        row[i] = prepare(value)
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


def copy_insert_values(
    model: type[models.Model],
    rows: Sequence[Mapping[str, Any]],
    *,
    ids: bool = True,
    binary: bool = False,
) -> list[int]:
    """Insert rows given as ``{attname: value}``; a field a row leaves out takes its default
    (as the model's constructor would give it), ``auto_now(_add)`` fields the current time.
    Returns the new ids in the rows' order; with ``ids=False`` the table's identity numbers
    the rows as COPY stores them and nothing is returned (no query drawing the ids first).
    ``binary``: the rows' values have their fields' types (see `_copy`)."""
    if not rows:
        return []
    meta = model._meta
    if db.vendor != "postgresql":
        created = model._default_manager.bulk_create(
            [model(**dict(row)) for row in rows], batch_size=1000
        )
        return [obj.pk for obj in created] if ids else []
    now = timezone.now()
    fixed: dict[str, Any] = {}
    for field in meta.concrete_fields:
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            fixed[field.attname] = now
    fields = [f for f in meta.concrete_fields if ids or f is not meta.pk]
    defaults = {f.attname: f.get_default() for f in fields if f is not meta.pk}
    attnames = [f.attname for f in fields]
    unknown = set().union(*rows) - {f.attname for f in meta.concrete_fields}
    if unknown:  # as the model's constructor would refuse them, instead of dropping them
        raise TypeError(f"{meta.label} has no field(s) {', '.join(sorted(unknown))}")
    pick = operator.itemgetter(*attnames)
    if not ids:
        _copy(model, [pick({**defaults, **row, **fixed}) for row in rows], fields, binary=binary)
        return []
    pks = next_ids(model, len(rows))
    pk_name = meta.pk.attname
    table = [
        pick({**defaults, **row, **fixed, pk_name: pk}) for pk, row in zip(pks, rows, strict=True)
    ]
    _copy(model, table, binary=binary)
    return pks


def update_rows(model: type[models.Model], objs: Sequence[Any], fields: Sequence[str]) -> None:
    """Write these fields of these saved instances, as ``bulk_update(objs, fields)`` writes
    them: the values the instances hold (an auto_now field named is written as it is held, not
    set to now). On PostgreSQL one ``UPDATE ... FROM (VALUES ...)``: bulk_update builds a CASE
    WHEN expression per row and field, and resolving those cost far more CPU than the database
    took to write the rows (a dispatched batch of 50 outbox rows and their 50 invoices: 80 ms of
    CPU, against 5 ms). Other databases go through bulk_update."""
    if not objs:
        return
    if db.vendor != "postgresql":
        model._default_manager.bulk_update(objs, list(fields), batch_size=500)
        return
    meta = model._meta
    columns: list[models.Field[Any, Any]] = []
    for name in fields:
        field = meta.get_field(name)
        if not isinstance(field, models.Field) or field.primary_key:
            raise TypeError(f"{meta.label}.{name} is not a column update_rows can write")
        columns.append(field)
    converters = [(i, c) for i, c in enumerate(_converter(f) for f in columns) if c is not None]
    attnames = [f.attname for f in columns]
    quote = db.ops.quote_name
    names = ", ".join(quote(str(f.column)) for f in columns)
    sets = ", ".join(
        f"{quote(str(f.column))} = v.{quote(str(f.column))}::{f.db_type(db)}" for f in columns
    )
    row = "(" + ", ".join(["%s"] * (len(columns) + 1)) + ")"
    params: list[Any] = []
    for obj in objs:
        values = [getattr(obj, name) for name in attnames]
        for i, convert in converters:
            values[i] = convert(values[i])
        params += [obj.pk, *values]
    pk = quote(str(meta.pk.column))
    sql = (
        f"UPDATE {quote(meta.db_table)} AS t SET {sets} "  # noqa: S608 - names, not values
        f"FROM (VALUES {', '.join([row] * len(objs))}) AS v({pk}, {names}) "
        f"WHERE t.{pk} = v.{pk}"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, params)


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
