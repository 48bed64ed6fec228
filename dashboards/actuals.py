"""/actuals/: actuals for forecasting (integrations/actuals.py) for Finance, PMO and integration
admins: the filter form, a table with totals, and the same report as CSV or JSON downloads
(`?format=csv|json` with the filters), the files GET /api/v1/actuals/ serves.

The filter form is a plain GET; htmx swaps only the results region (the template's "results"
partial) and pushes the URL, so the page works without JavaScript too.
"""

from __future__ import annotations

import json

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from integrations.actuals import (
    ActualsFilterSet,
    actuals_access,
    actuals_csv_lines,
    actuals_data,
    actuals_filename,
    actuals_report,
)
from integrations.models import Project

# Rows per page: one project-period each. The totals cover every page.
PAGE_SIZE = 100
NOT_ALLOWED = "Actuals are for Finance, PMO and integration admins."


@require_GET
def actuals(request: HttpRequest) -> HttpResponseBase:
    if not actuals_access(request.user):
        raise PermissionDenied(NOT_ALLOWED)
    params = request.GET.copy()
    download = params.pop("format", [""])[-1]
    params.pop("page", None)
    filterset = ActualsFilterSet(params, queryset=Project.objects.all())
    valid = filterset.is_valid()
    report = actuals_report(filterset=filterset) if valid else None
    if report is not None and download == "csv":
        response: HttpResponseBase = StreamingHttpResponse(
            actuals_csv_lines(report), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="{actuals_filename(report, "csv")}"'
        )
        return response
    if report is not None and download == "json":
        response = HttpResponse(
            json.dumps(actuals_data(report), indent=1), content_type="application/json"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="{actuals_filename(report, "json")}"'
        )
        return response
    query = params.urlencode()
    context = {
        "filterset": filterset,
        "report": report,
        "page": Paginator(report.rows if report else [], PAGE_SIZE).get_page(
            request.GET.get("page")
        ),
        "query": query,
        "query_amp": f"{query}&" if query else "",
    }
    htmx = getattr(request, "htmx", None)
    partial = bool(htmx) and not htmx.history_restore_request  # type: ignore[union-attr]
    template = "dashboards/actuals.html" + ("#results" if partial else "")
    result = render(request, template, context, status=200 if valid else 400)
    # One URL answers htmx with a fragment and a browser with the page: never cache one for both.
    patch_vary_headers(result, ["HX-Request"])
    return result
