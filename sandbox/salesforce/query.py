"""``GET /query?q=SOQL`` and ``/query/{locator}``: records that match, in batches of 200..2000
behind server-side cursors (``nextRecordsUrl``)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, Sandbox
from ..store import Row
from .base import SalesforceBase
from .schema import DATA, FIELDS, SYSTEM, SfError
from .soql import SoqlDateTime, order_key, parse_soql

DEFAULT_BATCH = 2000  # query batch size; Sforce-Query-Options: batchSize=200..2000 changes it
MAX_CURSORS = 1000  # open query cursors kept (oldest dropped first), like Salesforce's per-user cap


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dataclass
class Cursor:
    obj: str
    keys: list[str]
    fields: list[str]
    batch: int


class Query(SalesforceBase):
    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self.cursors: dict[str, Cursor] = {}
        sandbox.reset_hooks.append(self.cursors.clear)

    async def query(self, request: Request) -> Response:
        soql = request.query_params.get("q", "")
        batch = DEFAULT_BATCH
        options = request.headers.get("sforce-query-options", "")
        match = re.search(r"batchSize=(\d+)", options)
        if match:
            batch = min(2000, max(200, int(match.group(1))))
        try:
            parsed = parse_soql(soql)
            obj = parsed.obj
            if obj not in FIELDS:
                raise SfError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
            unknown = [
                f
                for f in parsed.fields + [c[0] for c in parsed.where] + [o[0] for o in parsed.order]
                if f not in FIELDS[obj]
            ]
            if unknown:
                raise SfError("INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'.")
            rows = [
                r
                for r in self.store.rows(SYSTEM, obj)
                if all(self._match(obj, r, c) for c in parsed.where)
            ]
        except SfError as exc:
            return self.fail(request, exc)
        for name, descending in reversed(parsed.order):  # stable sorts: last key first

            def sort_key(row: Row, field: str = name) -> tuple[int, Any]:
                return order_key(self._raw(obj, row, field))

            rows.sort(key=sort_key, reverse=descending)
        if parsed.offset:
            rows = rows[parsed.offset :]
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        if parsed.count:
            return JSON({"totalSize": len(rows), "done": True, "records": []})
        cursor = Cursor(obj, [str(r.key) for r in rows], parsed.fields, batch)
        return self._page(cursor, "01g" + secrets.token_hex(6), 0)

    async def query_more(self, request: Request) -> Response:
        locator, _, offset = request.path_params["cursor"].rpartition("-")
        cursor = self.cursors.get(locator)
        if cursor is None or not offset.isdigit():
            return self.fail(
                request, SfError("INVALID_QUERY_LOCATOR", "invalid query locator", status=400)
            )
        return self._page(cursor, locator, int(offset))

    def _page(self, cursor: Cursor, locator: str, offset: int) -> Response:
        chunk = cursor.keys[offset : offset + cursor.batch]
        records = []
        for key in chunk:
            row = self.store.get(SYSTEM, cursor.obj, key)
            if row is not None:
                records.append(self.render(cursor.obj, row, cursor.fields))
        done = offset + cursor.batch >= len(cursor.keys)
        body: dict[str, Any] = {"totalSize": len(cursor.keys), "done": done}
        if done:
            self.cursors.pop(locator, None)
        else:
            self.cursors[locator] = cursor
            while len(self.cursors) > MAX_CURSORS:
                self.cursors.pop(next(iter(self.cursors)))
            body["nextRecordsUrl"] = f"{DATA}/query/{locator}-{offset + cursor.batch}"
        body["records"] = records
        return JSON(body)

    def _raw(self, obj: str, row: Row, name: str) -> Any:
        if name == "CreatedDate":
            return row.created
        if name in ("LastModifiedDate", "SystemModstamp"):
            return row.updated
        return self.value(obj, row, name)

    def _match(self, obj: str, row: Row, condition: tuple[str, str, Any]) -> bool:
        name, op, expected = condition
        value = self._raw(obj, row, name)
        if isinstance(expected, SoqlDateTime):
            if not isinstance(value, int | float):
                raise SfError(
                    "INVALID_FIELD",
                    f"value of filter criterion for field '{name}' must be of type date "
                    "and should not be enclosed in quotes",
                )
            expected = expected.ts
        if op == "IN":
            return value in expected
        if op == "NOT IN":
            return value not in expected
        if op == "LIKE":
            pattern = "^" + re.escape(str(expected)).replace("%", ".*").replace("_", ".") + "$"
            return value is not None and re.match(pattern, str(value), re.IGNORECASE) is not None
        if op == "=":
            return bool(value == expected)
        if op == "!=":
            return bool(value != expected)
        if value is None or expected is None:
            return False
        try:
            return bool(_COMPARE[op](value, expected))
        except TypeError:
            return False
