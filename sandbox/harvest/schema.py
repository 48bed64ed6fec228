"""What every Harvest resource module is built from: ``Kind`` (how one object is stored,
validated, derived, indexed and rendered), Harvest's 422 error and its timestamp format."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from ..store import Row

if TYPE_CHECKING:
    from .base import HarvestBase

SYSTEM = "harvest"
ACCOUNT_ID = "100001"
# token -> account id. One personal access token, documented in README.md.
TOKENS = {"sandbox-harvest-token": ACCOUNT_ID}
ID_START = 1_000_000  # Harvest ids are int32: start high enough to look real, far from 2**31
MAX_PER_PAGE = 2000


# Every record of a list page gives two of these, and seeded records share their stamps (a day's
# entries, one time of day): remembered, a 100,000-entry read spends 0.1 s on them, not 1.6 s.
@functools.lru_cache(maxsize=1 << 16)
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Invalid(Exception):
    """A 422 in Harvest's shape: ``{"message": ...}``."""

    def __init__(self, message: str, reason: str = "validation") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def _coerce(name: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    ok = True
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "date":
        try:
            ok = isinstance(value, str) and bool(date.fromisoformat(value))
        except ValueError:
            ok = False
    elif kind == "list":
        ok = isinstance(value, list)
    elif kind == "dict":
        ok = isinstance(value, dict)
    if not ok:
        raise Invalid(f"{name} is invalid")
    return value


# The rules a resource module may give its Kind; ``h`` is the Harvest vendor (store, lookups).
# (data after the write, the stored row or None on create, the fields the write sets) -> raise
Validate = Callable[["HarvestBase", dict[str, Any], Row | None, dict[str, Any]], None]
# (data after the write, the fields the write sets): fill the fields Harvest computes
Derive = Callable[["HarvestBase", dict[str, Any], dict[str, Any]], None]
# data -> {index name: value the record is found under besides its id}
IndexKeys = Callable[[dict[str, Any]], dict[str, Any]]
# data -> the JSON fields besides id, created_at and updated_at
Render = Callable[["HarvestBase", dict[str, Any]], dict[str, Any]]


@dataclass
class Kind:
    """How one Harvest object is stored, validated and rendered."""

    name: str
    fields: dict[str, str]  # writable field -> type
    required: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    filters: tuple[str, ...] = ()  # list query params compared for equality with data
    date_field: str | None = None  # field the ``from``/``to`` params filter on
    # Writable on create only: the spec's update body for the object has no such field.
    create_only: tuple[str, ...] = ()
    validate: Validate | None = None
    derive: Derive | None = None
    index_keys: IndexKeys | None = None
    # Without one, every stored field but the ``*_id`` references is rendered as it is.
    render: Render | None = None

    def clean(self, body: dict[str, Any], partial: bool) -> dict[str, Any]:
        """The writable fields of a request body, type-checked; unknown ones are dropped."""
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if partial and name in self.create_only:
                label = name.removesuffix("_id").capitalize()
                raise Invalid(
                    f"{label} can't be changed on an existing {self.name[:-1].replace('_', ' ')}"
                )
            if name in self.fields:
                clean[name] = _coerce(name, self.fields[name], value)
            # Unknown parameters are ignored, as Harvest does.
        if not partial:
            missing = [name for name in self.required if clean.get(name) in (None, "")]
            if missing:
                raise Invalid(
                    f"{missing[0].replace('_id', '').replace('_', ' ').capitalize()} can't be blank"
                )
        return clean


# Lists the spec pages with ``cursor`` (``page`` deprecated there): harvest-v2.yaml's GET
# /clients, /contacts, /users, /roles, /tasks, /projects, /task_assignments, /user_assignments
# and /expense_categories. Time entries, expenses, invoices and the nested assignment lists
# have page numbers only.
CURSOR_KINDS = frozenset(
    {
        "clients",
        "contacts",
        "users",
        "roles",
        "tasks",
        "projects",
        "task_assignments",
        "user_assignments",
        "expense_categories",
    }
)


def encode_cursor(direction: str, key: int) -> str:
    """Harvest's cursor shape: base64url of ``{"after": {"id": 3007}}``, unpadded."""
    raw = json.dumps({direction: {"id": key}}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(value: str) -> tuple[str, int] | None:
    """(``after`` | ``before``, id) of a cursor, or None when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        body = json.loads(raw)
        ((direction, ref),) = body.items()
        key = ref["id"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if direction not in ("after", "before") or not isinstance(key, int):
        return None
    return direction, key
