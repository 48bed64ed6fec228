"""What the console's tables share: sorts, keyset pages, CSV export, the answer to an htmx
request (a fragment) or a plain one (the page), and the audit trail in words.

Keyset pages: a page is "the rows after the last one shown", in the sort's order with the id
breaking ties, so a page costs one index range scan however deep, and a row added or removed
meanwhile never makes a row appear twice or go missing. The cursor is the last row's sort
values, encoded in the URL. Sort columns are never NULL (selectors give a nullable column a
sort value of its own, e.g. "" for no legal entity), so the row comparison stays exact.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers

Row = TypeVar("Row", bound=Model)

# Rows per page: a screen or two of configuration rows; the export has every filtered row.
PAGE_SIZE = 50
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): such cells
# get a leading apostrophe, which shows the text as it is (as the queue's export does).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class BadCursor(ValueError):
    """A cursor this sort did not make (edited, or from another sort)."""


@dataclass(frozen=True)
class Sort:
    key: str  # its value in the URL
    label: str
    fields: tuple[str, ...]  # row attributes, "-" first for descending; the id breaks ties

    def order_by(self) -> list[str]:
        return [*self.fields, "pk"]

    def _names(self) -> list[tuple[str, bool]]:
        return [(f.lstrip("-"), f.startswith("-")) for f in self.fields]

    def after(self, values: Sequence[Any]) -> Q:
        """The rows after the one whose sort values are ``values`` (its id last)."""
        names = self._names()
        if len(values) != len(names) + 1:
            raise BadCursor("cursor does not match the sort")
        condition = Q(pk__gt=values[-1])
        for (name, descending), value in reversed(list(zip(names, values[:-1], strict=True))):
            beyond = Q(**{f"{name}__{'lt' if descending else 'gt'}": value})
            condition = beyond | (Q(**{name: value}) & condition)
        return condition

    def values_of(self, row: Any) -> list[Any]:
        return [_plain(getattr(row, name)) for name, _ in self._names()] + [row.pk]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("not a cursor") from exc
    if not isinstance(values, list):
        raise BadCursor("not a cursor")
    return values


@dataclass
class TablePage:
    rows: list[Any]
    count: int  # every filtered row
    sort: Sort
    sorts: list[dict[str, Any]]  # links: label, url, current
    first_url: str | None  # back to the first page (None: on it)
    next_url: str | None


def url_with(path: str, params: QueryDict, **changes: str | None) -> str:
    """``path`` with ``params``, some changed (None: dropped)."""
    query = params.copy()
    for key, value in changes.items():
        query.pop(key, None)
        if value is not None:
            query[key] = value
    encoded = query.urlencode()
    return f"{path}?{encoded}" if encoded else path


def table_page(
    rows: QuerySet[Row],
    *,
    path: str,
    params: QueryDict,
    sorts: Sequence[Sort],
    size: int = PAGE_SIZE,
) -> TablePage:
    """One keyset page of ``rows`` (already filtered) for the ``sort`` and ``cursor`` in
    ``params``; an unknown sort is the first, a cursor that is not ours the first page."""
    by_key = {s.key: s for s in sorts}
    sort = by_key.get(params.get("sort") or "", sorts[0])
    cursor = params.get("cursor") or None
    ordered = rows.order_by(*sort.order_by())
    page_rows = ordered
    if cursor:
        try:
            page_rows = ordered.filter(sort.after(decode_cursor(cursor)))
        except BadCursor:
            cursor = None
    found = list(page_rows[: size + 1])
    more = len(found) > size
    found = found[:size]
    next_cursor = encode_cursor(sort.values_of(found[-1])) if more and found else None
    return TablePage(
        rows=found,
        count=rows.count(),
        sort=sort,
        sorts=[
            {
                "label": s.label,
                "url": url_with(path, params, sort=s.key, cursor=None),
                "current": s.key == sort.key,
            }
            for s in sorts
        ],
        first_url=url_with(path, params, cursor=None) if cursor else None,
        next_url=url_with(path, params, cursor=next_cursor) if next_cursor else None,
    )


# --- CSV ----------------------------------------------------------------------------------------


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def csv_response(
    *, name: str, header: Sequence[str], rows: Iterable[Any], line: Callable[[Any], Sequence[Any]]
) -> StreamingHttpResponse:
    """Every row as CSV, streamed (``rows`` should be an iterator over the filtered set)."""
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([_cell(v) for v in line(row)])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
    return response


# --- Answers ------------------------------------------------------------------------------------


def is_htmx(request: HttpRequest) -> bool:
    """An htmx request for a fragment (a history restore wants the whole page)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request  # type: ignore[union-attr]


def render_page(
    request: HttpRequest,
    template: str,
    context: Mapping[str, Any],
    *,
    partial: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """The whole page, or (htmx) only its ``partial``; the same URL answers both, so a cache
    must never give one for the other."""
    name = f"{template}#{partial}" if partial and is_htmx(request) else template
    response = render(request, name, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


# --- The audit trail, in words --------------------------------------------------------------------


def _value_text(value: Any) -> str:
    if value is None or value == []:
        return "(none)"
    if isinstance(value, list):
        return ", ".join(_value_text(v) for v in value)
    return str(value)


def _change_text(name: str, change: Any) -> str:
    if isinstance(change, list) and len(change) == 2:
        old, new = change
        if old is None or old == []:
            return f"{name} {_value_text(new)}"
        return f"{name} {_value_text(old)} \u2192 {_value_text(new)}"
    return f"{name} {_value_text(change)}"


def trail_entries(events: Iterable[Any]) -> list[dict[str, Any]]:
    """Audit events as the console's trail shows them: when, who, what, and the changes as
    "field old -> new" (values only: secrets are never in an audit row)."""
    return [
        {
            "at": event.at,
            "actor": event.actor_label,
            "action": event.get_action_display().lower(),
            "what": event.object_repr,
            "changes": "; ".join(
                _change_text(name, change) for name, change in (event.changes or {}).items()
            ),
        }
        for event in events
    ]
