"""``field__any=[...]``: membership in a list sent as ONE array parameter on PostgreSQL.

``field__in=[...]`` with thousands of values (a page of polled ids) builds a placeholder and a
Python-side parameter per value, which costs more than the query itself; ``= ANY(%s)`` sends
the list as a single array. Other databases get the ordinary ``IN``.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.lookups import Lookup
from django.db.models.sql.compiler import SQLCompiler


@models.Field.register_lookup
class AnyOf(Lookup[Any]):
    lookup_name = "any"
    prepare_rhs = False

    def get_prep_lookup(self) -> Any:
        return [self.lhs.output_field.get_prep_value(v) for v in self.rhs]

    def as_sql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper
    ) -> tuple[str, tuple[Any, ...]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if not values:
            return "1 = 0", ()
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(%s)", (*lhs_params, values)
        placeholders = ", ".join(["%s"] * len(values))
        return f"{lhs} IN ({placeholders})", (*lhs_params, *values)
