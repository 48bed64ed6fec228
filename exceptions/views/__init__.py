"""The exception queue pages; exceptions/urls.py says which module serves which."""

from __future__ import annotations

import html
from collections.abc import Iterable

from django.http import HttpRequest
from django.utils.safestring import SafeString, mark_safe
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """A request as django_htmx's middleware leaves it (`request.htmx`), for the type checker."""

    htmx: HtmxDetails


def esc(value: object) -> str:
    """Text escaped for HTML (quotes too), as Django's templates escape it: for the rows the
    pages build in Python (a page of 50 rows through template tags costs more than its SQL)."""
    return html.escape(str(value), quote=True)


def options(choices: Iterable[tuple[object, object]], selected: object = None) -> SafeString:
    """A select's <option>s, the one whose value is `selected` (compared as text) selected: a
    filter form offers some hundred options, each costing several template lookups."""
    chosen = None if selected is None else str(selected)
    return mark_safe(  # noqa: S308 - every value goes through esc
        "".join(
            f'<option value="{esc(value)}"{" selected" if str(value) == chosen else ""}>'
            f"{esc(label)}</option>"
            for value, label in choices
        )
    )
