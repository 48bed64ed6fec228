"""The SOQL subset the sandbox parses: ``SELECT fields | COUNT() FROM X [WHERE a op v AND ...]
[ORDER BY ...] [LIMIT n] [OFFSET n]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .schema import SfError


@dataclass(frozen=True)
class SoqlDateTime:
    ts: float


@dataclass
class Soql:
    obj: str
    fields: list[str]
    where: list[tuple[str, str, Any]]
    order: list[tuple[str, bool]]
    limit: int | None
    offset: int
    count: bool


_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<obj>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>.+?))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?"
    r"(?:\s+OFFSET\s+(?P<offset>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<>|>=|<=|=|>|<)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<word>[^\s,()=<>!']+))"
)
_DT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})$")


def _literal(token: str) -> Any:
    if token.startswith("'"):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    lowered = token.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if _DT.match(token):
        text = token.replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", text):
            text = text[:-2] + ":" + text[-2:]
        return SoqlDateTime(datetime.fromisoformat(text).timestamp())
    if re.match(r"^\d{4}-\d{2}-\d{2}$", token):
        return token
    try:
        return float(token) if "." in token else int(token)
    except ValueError as exc:
        raise SfError("MALFORMED_QUERY", f"unexpected token: '{token}'") from exc


def parse_soql(soql: str) -> Soql:
    """The simple SOQL a connector needs: SELECT fields FROM X [WHERE a op v AND ...]
    [ORDER BY f [ASC|DESC], ...] [LIMIT n] [OFFSET n]. OR, sub-queries, relationships and
    functions other than COUNT() are refused with MALFORMED_QUERY."""
    match = _SOQL.match(soql)
    if match is None:
        raise SfError("MALFORMED_QUERY", f"unexpected token or unsupported query: {soql[:200]}")
    raw_fields = [f.strip() for f in match["fields"].split(",")]
    count = [f.upper() for f in raw_fields] == ["COUNT()"]
    if not count and any(not re.match(r"^\w+$", f) for f in raw_fields):
        raise SfError(
            "MALFORMED_QUERY", "only plain field names (or COUNT()) are supported in SELECT"
        )
    where: list[tuple[str, str, Any]] = []
    if match["where"]:
        tokens = [m for m in _TOKEN.finditer(match["where"]) if m.group(0).strip()]
        pos, values = 0, [(m.lastgroup, m.group(m.lastgroup or 0)) for m in tokens]

        def take() -> tuple[str | None, str]:
            nonlocal pos
            if pos >= len(values):
                raise SfError("MALFORMED_QUERY", "unexpected end of WHERE clause")
            pos += 1
            return values[pos - 1]

        while pos < len(values):
            kind, name = take()
            if kind != "word":
                raise SfError("MALFORMED_QUERY", f"unexpected token: '{name}'")
            kind, op = take()
            op_upper = op.upper()
            if kind == "word" and op_upper == "NOT":
                kind, op = take()
                op_upper = "NOT " + op.upper()
            if kind == "op":
                _, literal = take()
                where.append((name, "!=" if op == "<>" else op, _literal(literal)))
            elif op_upper in ("IN", "NOT IN"):
                kind, _ = take()
                if kind != "lp":
                    raise SfError("MALFORMED_QUERY", "expected ( after IN")
                items: list[Any] = []
                while True:
                    kind, literal = take()
                    if kind == "rp":
                        break
                    if kind != "comma":
                        items.append(_literal(literal))
                where.append((name, op_upper, items))
            elif op_upper == "LIKE":
                _, literal = take()
                where.append((name, "LIKE", _literal(literal)))
            else:
                raise SfError("MALFORMED_QUERY", f"unexpected token: '{op}'")
            if pos < len(values):
                kind, joiner = take()
                if joiner.upper() != "AND":
                    raise SfError(
                        "MALFORMED_QUERY",
                        f"only AND is supported between conditions, got '{joiner}'",
                    )
    order: list[tuple[str, bool]] = []
    if match["order"]:
        for part in match["order"].split(","):
            words = part.split()
            if not words or len(words) > 4:
                raise SfError("MALFORMED_QUERY", f"bad ORDER BY: {part}")
            order.append((words[0], len(words) > 1 and words[1].upper() == "DESC"))
    return Soql(
        obj=match["obj"],
        fields=[] if count else raw_fields,
        where=where,
        order=order,
        limit=int(match["limit"]) if match["limit"] else None,
        offset=int(match["offset"]) if match["offset"] else 0,
        count=count,
    )


def order_key(value: Any) -> tuple[int, Any]:
    # Salesforce sorts nulls first in ascending order.
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))
