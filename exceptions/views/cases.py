"""PLACEHOLDER (being built this session): one case's page and its actions."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse


def case_detail(request: HttpRequest, case_id: int) -> HttpResponse:
    raise Http404


def case_action(request: HttpRequest, case_id: int, action: str) -> HttpResponse:
    raise Http404
