"""Dotted paths into vendor payloads: ``Addresses.0.City``, ``LineItems.2.Tracking.0.Option``.

A segment is a dict key, or a list index when the value at that point is a list (``-1`` is the
last item). ``[]`` after a segment marks a list written item by item (``LineItems[].Quantity``,
outbound only): `split_list_path` cuts such a path into the list's path and the item's. Paths
are compiled once (`compile_path`, cached) into a tuple of steps, so reading a field from a
payload is a short loop of dict lookups with no string parsing per record.

Missing versus null: `get` returns `MISSING` when the path does not lead anywhere (a key absent,
an index past the end, a scalar where a container was expected) and `None` when the vendor sent
an explicit null at the end of the path. `require` raises a `PathError` saying where it broke.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from integrations.mapping.errors import PathError


class _Missing:
    """Sentinel for 'the path leads nowhere' (distinct from an explicit null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

Step = tuple[str, int | None]


def _as_index(segment: str) -> int | None:
    body = segment[1:] if segment.startswith("-") else segment
    return int(segment) if body.isdigit() else None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


@dataclass(frozen=True, slots=True)
class CompiledPath:
    text: str
    steps: tuple[Step, ...]

    def get(self, data: Any, default: Any = MISSING) -> Any:
        """The value at this path, or `default` when the path leads nowhere."""
        current = data
        for key, index in self.steps:
            if isinstance(current, dict):
                current = current.get(key, MISSING)
                if current is MISSING:
                    return default
            elif index is not None and isinstance(current, list):
                try:
                    current = current[index]
                except IndexError:
                    return default
            else:
                return default
        return current

    def require(self, data: Any) -> Any:
        """The value at this path; a `PathError` naming the broken segment when there is none."""
        current = data
        walked: list[str] = []
        for key, index in self.steps:
            where = ".".join(walked) or "the payload"
            if isinstance(current, dict):
                if key not in current:
                    raise PathError(
                        f"required path '{self.text}' not found: {where} has no '{key}'"
                    )
                current = current[key]
            elif index is not None and isinstance(current, list):
                try:
                    current = current[index]
                except IndexError:
                    raise PathError(
                        f"required path '{self.text}' not found: {where} has "
                        f"{len(current)} item(s), no index {index}"
                    ) from None
            else:
                raise PathError(
                    f"required path '{self.text}' not found: {where} is {_describe(current)}, "
                    f"not {'a list' if index is not None else 'an object'}"
                )
            walked.append(key)
        return current

    def set(self, data: dict[str, Any], value: Any) -> None:
        """Write `value` at this path, creating objects and lists on the way.

        A numeric segment creates a list (padded with None up to the index); any other segment
        an object. Writing through an existing scalar is refused rather than overwritten.
        """
        current: Any = data
        last = len(self.steps) - 1
        for position, (key, index) in enumerate(self.steps):
            final = position == last
            if isinstance(current, dict):
                if final:
                    current[key] = value
                    return
                child = current.get(key)
                if child is None:
                    child = [] if self.steps[position + 1][1] is not None else {}
                    current[key] = child
                current = child
            elif isinstance(current, list) and index is not None:
                if index < 0:
                    raise PathError(f"cannot write '{self.text}': negative index {index}")
                while len(current) <= index:
                    current.append(None)
                if final:
                    current[index] = value
                    return
                child = current[index]
                if child is None:
                    child = [] if self.steps[position + 1][1] is not None else {}
                    current[index] = child
                current = child
            else:
                at = ".".join(k for k, _ in self.steps[:position]) or "the payload"
                raise PathError(f"cannot write '{self.text}': {at} is {_describe(current)}")


@lru_cache(maxsize=4096)
def compile_path(path: str) -> CompiledPath:
    """Parse a dotted path once. Raises `PathError` for an empty path or an empty segment."""
    text = path.strip()
    if not text:
        raise PathError("empty path")
    segments = text.split(".")
    if any(not s for s in segments):
        raise PathError(f"path '{text}' has an empty segment")
    return CompiledPath(text=text, steps=tuple((s, _as_index(s)) for s in segments))


def get_path(data: Any, path: str, default: Any = MISSING) -> Any:
    return compile_path(path).get(data, default)


def require_path(data: Any, path: str) -> Any:
    return compile_path(path).require(data)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    compile_path(path).set(data, value)


LIST_MARK = "[]"


def split_list_path(path: str) -> tuple[str, str] | None:
    """``LineItems[].Tracking.0.Name`` -> (``LineItems``, ``Tracking.0.Name``): the list's path
    and the path inside each item. None for a path without ``[]``. A `PathError` when ``[]`` is
    used more than once (lists inside lists are not supported), or not as ``<list>[].<item>``."""
    text = path.strip()
    head, mark, tail = text.partition(LIST_MARK)
    if not mark:
        return None
    if LIST_MARK in tail:
        raise PathError(f"path '{text}' has '[]' twice: lists inside lists are not supported")
    if not head or not tail.startswith(".") or len(tail) == 1:
        raise PathError(f"path '{text}' must read <list>[].<item path>, e.g. LineItems[].Quantity")
    item = tail[1:]
    compile_path(head)
    compile_path(item)
    return head, item
