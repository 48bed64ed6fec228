"""PLACEHOLDER (being built this session): the fix-in-place forms."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse


def case_fix(request: HttpRequest, case_id: int) -> HttpResponse:
    raise Http404
