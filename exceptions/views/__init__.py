"""The exception queue pages; exceptions/urls.py says which module serves which."""

from __future__ import annotations

import html

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """A request as django_htmx's middleware leaves it (`request.htmx`), for the type checker."""

    htmx: HtmxDetails


def esc(value: object) -> str:
    """Text escaped for HTML (quotes too), as Django's templates escape it: for the rows the
    pages build in Python (a page of 50 rows through template tags costs more than its SQL)."""
    return html.escape(str(value), quote=True)
