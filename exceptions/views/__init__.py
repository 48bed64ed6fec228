"""The exception queue pages; exceptions/urls.py says which module serves which."""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """A request as django_htmx's middleware leaves it (`request.htmx`), for the type checker."""

    htmx: HtmxDetails
