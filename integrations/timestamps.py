"""Timestamps as the vendors write them, and as Concord keeps them (pure: no Django, no I/O).

Read (``parse_timestamp``): ISO 8601 with ``Z``, an offset (``+00:00`` or ``+0000``, as
Salesforce writes it) or none (naive = UTC: Xero's ``DateString`` and ``If-Modified-Since``
values are UTC without a zone), any number of fraction digits; and Xero's Microsoft-JSON dates
``/Date(1796153857772+0000)/`` or ``/Date(1550793549392)/``. In those the number is always
milliseconds since the epoch in UTC; the offset only says which zone the value was entered in,
so the instant does not depend on it. Every result is an aware datetime in UTC.

Written back (``format_iso``, ``format_salesforce``, ``format_xero``, ``format_rfc3339``) and
counted in microseconds since the epoch (``to_micros``, ``from_micros``), the unit of every
source version (``InboundMessage.source_version``, a poll cursor's position, a cross-reference's
``external_version``); ``micros_to_iso`` turns a version back into the ``since`` a connector
reads from. ``version_micros`` reads a version whatever it was stored as: the micros digits
Concord writes, or a vendor's own stamp (what cross-references held before versions had one
unit: Xero's ``/Date(...)/`` after a push).

Arithmetic is on integers and timedeltas, never floats: a millisecond stamp stays exact
(``datetime.fromtimestamp(ms / 1000)`` can land a microsecond off).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MILLISECOND = timedelta(milliseconds=1)
_XERO_PREFIX = "/Date("
_XERO_SUFFIX = ")/"


def parse_timestamp(value: str) -> datetime:
    """An aware UTC datetime from an ISO 8601 text or a Xero ``/Date(ms[+-hhmm])/``; ValueError
    names the text when it is neither."""
    text = value.strip()
    if text.startswith(_XERO_PREFIX):
        return from_millis(xero_millis(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"'{value}' is not a date and time (expected ISO 8601 or /Date(ms+0000)/)"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def xero_millis(text: str) -> int:
    """The milliseconds of ``/Date(1796153857772+0000)/``, ``/Date(1796153857772)/`` or a
    pre-1970 ``/Date(-86400000+0000)/``."""
    if not (text.startswith(_XERO_PREFIX) and text.endswith(_XERO_SUFFIX)):
        raise ValueError(f"'{text}' is not a Xero /Date(ms+0000)/ value")
    body = text[len(_XERO_PREFIX) : -len(_XERO_SUFFIX)]
    number, offset = body, ""
    for sign in ("+", "-"):
        at = body.find(sign, 1)  # position 0 may be the sign of a pre-1970 stamp
        if at > 0:
            number, offset = body[:at], body[at + 1 :]
            break
    digits = number[1:] if number.startswith("-") else number
    if not digits.isdigit() or (offset and not (len(offset) == 4 and offset.isdigit())):
        raise ValueError(f"'{text}' is not a Xero /Date(ms+0000)/ value")
    return int(number)


def from_millis(ms: int) -> datetime:
    return EPOCH + ms * _MILLISECOND


def to_millis(moment: datetime) -> int:
    return (_as_utc(moment) - EPOCH) // _MILLISECOND


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch (a naive datetime is UTC)."""
    return (_as_utc(moment) - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + micros * _MICROSECOND


def micros_of(value: str | None) -> int:
    """A vendor's modification stamp as microseconds since the epoch; 0 when it has none."""
    return _stamp_micros(value) if value else 0


@lru_cache(maxsize=4096)
def _stamp_micros(value: str) -> int:
    # A polled page's records share few stamps (2,000 time entries: a few hundred), so each
    # distinct one is parsed once; a text that is no stamp raises every time (not kept).
    return to_micros(parse_timestamp(value))


def version_micros(value: str | int | None) -> int:
    """A version in microseconds since the epoch: an int as it is, a text of digits (Concord's
    own form) as that number, any vendor stamp ``parse_timestamp`` reads as its instant, and
    nothing (``None``, ``""``) as 0. ValueError names a text that is none of these."""
    if value is None or value == "":
        return 0
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
        return int(text)
    return to_micros(parse_timestamp(text))


def micros_to_iso(micros: int) -> str:
    """A source version back to an ISO ``since``: ``2024-05-01T10:00:00.123456Z``."""
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_iso(moment: datetime) -> str:
    """``2026-08-28T09:00:10.250000Z`` (Harvest's form; whole seconds carry no fraction)."""
    return _as_utc(moment).isoformat().replace("+00:00", "Z")


def format_salesforce(moment: datetime) -> str:
    """``2026-08-28T09:00:10.250+0000``: milliseconds and a numeric offset."""
    utc = _as_utc(moment)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


def format_rfc3339(micros: int) -> str:
    """``2026-09-06T09:11:00.250Z``: an RFC 3339 date-time (an OpenAPI ``date-time``) to the
    millisecond, with its offset, as Xero's ``If-Modified-Since`` is specified."""
    utc = from_micros(micros)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_xero(moment: datetime) -> str:
    """``/Date(1787907610250+0000)/``."""
    return f"/Date({to_millis(moment)}+0000)/"


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
