"""Xero's wire formats: ``/Date(ms+0000)/`` dates, money rounding, the problem body of
401/403/404/429/5xx answers."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any


def ms_date(ts: float) -> str:
    return f"/Date({int(ts * 1000)}+0000)/"  # floor: a watermark never passes the record


def day_to_ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def parse_day(value: Any) -> str | None:
    """Xero accepts ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM:SS`` and ``/Date(ms+0000)/``."""
    if not isinstance(value, str) or not value:
        return None
    match = MS_DATE.match(value)
    if match:
        return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC).date().isoformat()
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        return None


def parse_since(value: str) -> float | None:
    """An ``If-Modified-Since``: an HTTP date (RFC 1123, in GMT) or the spec's ``date-time``
    (RFC 3339: ``2020-02-06T12:17:43.202-08:00``, ``...Z``). A date-time without its offset is
    refused (None) rather than read in a zone the client may not have meant."""
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def money(value: float) -> float:
    return round(value + 0.0, 2)


def problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {
        "Type": None,
        "Title": title,
        "Status": status,
        "Detail": detail,
        "Instance": str(uuid.uuid4()),
        "Extensions": {},
    }
