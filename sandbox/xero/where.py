"""The subset of Xero's ``where`` query filter the sandbox understands, and the sort key that
``order`` and the comparisons share."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .formats import MS_DATE

_CONDITION = re.compile(
    r"""^\s*([A-Za-z][\w.]*)\s*(==|!=|>=|<=|>|<)\s*(?:"([^"]*)"|Guid\("([^"]*)"\)|(true|false|null)|(-?\d+(?:\.\d+)?))\s*$"""
)


def sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, str):
        match = MS_DATE.match(value)
        if match:
            return (1, int(match.group(1)))
    return (1, value) if isinstance(value, int | float) else (2, str(value))


def _lookup(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compile_where(where: str) -> Callable[[dict[str, Any]], bool]:
    """A small subset of Xero's ``where``: comparisons joined by AND (``&&``), alternatives
    joined by OR (``||``), AND binding tighter, optionally in one pair of parentheses each.

    ``Status=="AUTHORISED" AND Contact.ContactID==Guid("...")``, ``Reference!=null``,
    ``Total>=100``, ``Reference=="A" OR Reference=="B"`` (how a client looks up a batch of its
    own references in one call). Anything else raises ValueError (a 400, as Xero's parser would).
    Quoted values must not themselves contain `` AND `` or `` OR ``.
    """
    alternatives: list[list[Callable[[dict[str, Any]], bool]]] = []
    for alternative in re.split(r"\s+(?:OR|or)\s+|\s*\|\|\s*", where.strip()):
        alternative = alternative.strip()
        if alternative.startswith("(") and alternative.endswith(")"):
            alternative = alternative[1:-1]
        tests: list[Callable[[dict[str, Any]], bool]] = []
        for part in re.split(r"\s+(?:AND|and)\s+|\s*&&\s*", alternative):
            match = _CONDITION.match(part)
            if match is None:
                raise ValueError(f"Unsupported where clause: {part!r}")
            path, op, text, guid, word, number = match.groups()
            expected: Any = text if text is not None else guid.lower() if guid is not None else None
            if word is not None:
                expected = {"true": True, "false": False, "null": None}[word]
            if number is not None:
                expected = float(number)
            tests.append(_comparison(path, op, expected, guid is not None))
        alternatives.append(tests)
    return lambda item: any(all(test(item) for test in tests) for tests in alternatives)


def _comparison(
    path: str, op: str, expected: Any, is_guid: bool
) -> Callable[[dict[str, Any]], bool]:
    def test(item: dict[str, Any]) -> bool:
        value = _lookup(item, path)
        if is_guid and isinstance(value, str):
            value = value.lower()
        if op == "==":
            return bool(value == expected)
        if op == "!=":
            return bool(value != expected)
        if value is None or expected is None:
            return False
        left, right = sort_key(value), sort_key(expected)
        return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]

    return test
