"""PLACEHOLDER (being built this session): queue list, CSV export, bulk actions, my work, SLA."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse


def case_list(request: HttpRequest) -> HttpResponse:
    raise Http404


case_export = case_bulk = my_work = sla_overview = case_list
