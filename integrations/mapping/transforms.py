"""Pure value transforms between vendor payload values and canonical values.

Inbound: value-map lookup, date and datetime parsing (ISO 8601, Xero's ``/Date(ms+0000)/``,
Harvest's ``YYYY-MM-DD`` and ``...Z`` stamps, Salesforce's ``...T09:00:10.000+0000``), money to
Decimal, default, concatenation. Outbound: the reverse where one exists (a concatenation has
none). Every failure is a `MappingError` naming the value; the caller adds field and path.

Money never passes through float arithmetic: a float from a JSON payload is converted with
``Decimal(str(x))`` (``str`` gives the shortest repr, so 0.1 becomes Decimal("0.1"), not
0.1000000000000000055...). Only the outbound "number" form turns a Decimal back into a float,
for the JSON body, which is a serialisation, not a calculation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from integrations import timestamps
from integrations.mapping.errors import MappingError

DATE_FORMATS = ("iso", "xero")
DATETIME_FORMATS = ("iso", "xero", "salesforce")
MONEY_FORMS = ("number", "string")
VALUE_TYPES = ("str", "int", "bool")


# -- value maps --------------------------------------------------------------------------------


def vendor_key(value: Any) -> str:
    """The text a vendor value is looked up by: JSON booleans as ``true``/``false``."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)


def coerce(value: str, type_name: str) -> Any:
    """Turn a value map's text into the type the other side expects (``str``, ``int``, ``bool``)."""
    if type_name == "str":
        return value
    if type_name == "int":
        try:
            return int(value)
        except ValueError:
            raise MappingError(f"'{value}' is not a whole number", value=value) from None
    if type_name == "bool":
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise MappingError(f"'{value}' is not true or false", value=value)
    raise MappingError(f"unknown value type '{type_name}'", value=value)


@dataclass(frozen=True, slots=True)
class ValueMapTable:
    """An immutable copy of one ValueMap: vendor value -> canonical value, and back.

    `default` None means "no default": an unknown value is an error. `reverse` maps canonical
    values back to vendor values; where several vendor values share one canonical value the
    first (by vendor value) wins unless a field's ``reverse`` option says otherwise.
    """

    name: str
    entries: Mapping[str, str]
    default: str | None = None
    reverse: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls, name: str, entries: Mapping[str, str] | Iterable[tuple[str, str]], default: str | None
    ) -> ValueMapTable:
        pairs = sorted(entries.items() if isinstance(entries, Mapping) else entries)
        reverse: dict[str, str] = {}
        for vendor, canonical in pairs:
            reverse.setdefault(canonical, vendor)
        return cls(
            name=name,
            entries=MappingProxyType(dict(pairs)),
            default=default if default else None,
            reverse=MappingProxyType(reverse),
        )


def map_value(value: Any, table: ValueMapTable) -> str:
    """Look `value` up; fall back to the map's default; otherwise a MappingError."""
    key = vendor_key(value)
    found = table.entries.get(key)
    if found is not None:
        return found
    if table.default is not None:
        return table.default
    raise MappingError(
        f"value '{key}' is not in value map '{table.name}' and the map has no default",
        value=value,
    )


def unmap_value(
    value: Any, table: ValueMapTable, overrides: Mapping[str, str] | None = None
) -> str:
    """Canonical value -> vendor value (outbound)."""
    key = vendor_key(value)
    if overrides and key in overrides:
        return overrides[key]
    found = table.reverse.get(key)
    if found is not None:
        return found
    raise MappingError(
        f"canonical value '{key}' has no vendor value in value map '{table.name}'", value=value
    )


# -- dates and times ---------------------------------------------------------------------------
# Parsing and formatting live in integrations.timestamps (one reader for connectors and
# mappings); here they are given the mapping's error type and its value shapes.


def parse_datetime(value: Any) -> datetime:
    """An aware UTC datetime from ISO 8601 (``Z``, ``+00:00``, ``+0000``, fractions), Xero's
    ``/Date(ms+0000)/`` or epoch milliseconds. A naive ISO stamp is taken as UTC (Xero's
    ``DateString`` fields are UTC without an offset)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str):
        try:
            return timestamps.parse_timestamp(value)
        except ValueError as exc:
            raise MappingError(str(exc), value=value) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return timestamps.from_millis(value)
    raise MappingError(f"{value!r} is not a date and time", value=value)


def parse_date(value: Any) -> date:
    """A date from ``YYYY-MM-DD`` (Harvest, Salesforce), an ISO datetime (its date as written),
    or Xero's ``/Date(ms+0000)/`` (the UTC date)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.startswith("/Date("):
                return timestamps.from_millis(timestamps.xero_millis(text)).date()
            if len(text) == 10:
                return date.fromisoformat(text)
            return datetime.fromisoformat(text).date()
        except ValueError:
            pass
    raise MappingError(
        f"'{value}' is not a date (expected YYYY-MM-DD or /Date(ms+0000)/)", value=value
    )


def to_microseconds(value: Any) -> int:
    """A modification stamp as microseconds since the epoch (the canonical source_version).

    Integers are taken as they are (a vendor's own revision number); anything else is parsed
    as a datetime.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return timestamps.to_micros(parse_datetime(value))


def format_date(value: Any, fmt: str = "iso") -> str:
    """Outbound date: ``YYYY-MM-DD`` (Harvest, Salesforce, and accepted by Xero on writes) or
    ``/Date(ms+0000)/`` (its UTC midnight)."""
    day = parse_date(value)
    if fmt == "xero":
        return timestamps.format_xero(datetime(day.year, day.month, day.day, tzinfo=UTC))
    return day.isoformat()


def format_datetime(value: Any, fmt: str = "iso") -> str:
    """Outbound datetime in UTC: ISO with ``Z`` (Harvest), Salesforce's
    ``2026-08-28T09:00:10.000+0000`` or Xero's ``/Date(ms+0000)/``."""
    moment = parse_datetime(value)
    if fmt == "xero":
        return timestamps.format_xero(moment)
    if fmt == "salesforce":
        return timestamps.format_salesforce(moment)
    return timestamps.format_iso(moment)


# -- money -------------------------------------------------------------------------------------


def parse_money(value: Any, places: int | None = None) -> Decimal:
    """A Decimal from a JSON number or a numeric string; rounded half-up to `places` if given."""
    if isinstance(value, bool):
        raise MappingError(f"{value!r} is not an amount", value=value)
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(str(value))
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise MappingError(f"'{value}' is not an amount", value=value) from None
    else:
        raise MappingError(f"{value!r} is not an amount", value=value)
    if not amount.is_finite():
        raise MappingError(f"'{value}' is not a finite amount", value=value)
    if places is not None:
        amount = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return amount


def format_money(value: Any, form: str = "number") -> float | int | str:
    """Outbound amount: a JSON number (the vendors' APIs take numbers) or a string."""
    amount = parse_money(value)
    if form == "string":
        return str(amount)
    if amount == amount.to_integral_value():
        return int(amount)
    return float(amount)


# -- default and concatenation -----------------------------------------------------------------


def is_empty(value: Any) -> bool:
    return value is None or value == ""


def with_default(value: Any, default: Any) -> Any:
    return default if is_empty(value) else value


def concat(values: Iterable[Any], sep: str = " ") -> str:
    """Join the non-empty parts (an absent middle name leaves no double space)."""
    return sep.join(str(v) for v in values if not is_empty(v))
