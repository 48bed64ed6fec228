"""Fast inserts of many new rows (PostgreSQL COPY), shared by polling and billing runs."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import connection as db
from django.db import models
from django.utils import timezone


def copy_insert(model: type[models.Model], objs: list[Any]) -> None:
    """Insert new rows with COPY on PostgreSQL, their ids drawn from the table's sequence first
    (so the caller's objects get their pk, as bulk_create would give them). For thousands of
    rows this is several times faster than INSERT, whose parameters psycopg quotes in Python;
    other databases use bulk_create."""
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
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [meta.db_table, meta.pk.column, len(objs)],
        )
        for obj, (pk,) in zip(objs, cursor.fetchall(), strict=True):
            obj.pk = pk
        fields = meta.concrete_fields
        columns = ", ".join(db.ops.quote_name(str(f.column)) for f in fields)
        with cursor.cursor.copy(
            f"COPY {db.ops.quote_name(meta.db_table)} ({columns}) FROM STDIN"
        ) as copy:
            for obj in objs:
                copy.write_row([_copy_value(f, getattr(obj, f.attname)) for f in fields])
    for obj in objs:
        obj._state.adding = False
        obj._state.db = db.alias


# Python values psycopg's COPY writes as they are; anything else goes through the field.
_PLAIN = (str, int, bool, Decimal, date, datetime)


def _copy_value(field: models.Field[Any, Any], value: Any) -> Any:
    if value is None:
        return None
    if isinstance(field, models.JSONField):
        return json.dumps(value, cls=field.encoder)
    if isinstance(value, _PLAIN):
        return value
    return field.get_db_prep_save(value, db)
