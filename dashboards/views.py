from __future__ import annotations

from django.contrib.auth.decorators import login_not_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from dashboards import selectors
from dashboards.health import health_report

PAGE_SIZE = 25


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboards/home.html", {"health": health_report()})


@require_GET
@permission_required("dashboards.view_finance", raise_exception=True)
def finance(request: HttpRequest) -> HttpResponse:
    unbilled = selectors.unbilled_approved_time()
    missing_tax = Paginator(selectors.customers_missing_tax_number(), PAGE_SIZE)
    return render(
        request,
        "dashboards/finance.html",
        {
            "invoices": selectors.invoices_by_entity_and_status(),
            "unbilled": unbilled,
            "unbilled_hours": selectors.total_hours(unbilled),
            "missing_tax": missing_tax.get_page(request.GET.get("page")),
        },
    )


@require_GET
@permission_required("dashboards.view_pmo", raise_exception=True)
def pmo(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboards/pmo.html",
        {
            "projects": selectors.projects_by_region_and_status(),
            "closed_time": selectors.time_on_closed_projects(),
        },
    )


@require_GET
@permission_required("dashboards.view_sales_ops", raise_exception=True)
def sales_ops(request: HttpRequest) -> HttpResponse:
    gaps = selectors.commercial_data_gaps()
    return render(
        request,
        "dashboards/sales_ops.html",
        {
            "customers": Paginator(gaps["customers_without_entity"], PAGE_SIZE).get_page(
                request.GET.get("customers_page")
            ),
            "contracts": Paginator(gaps["contracts_incomplete"], PAGE_SIZE).get_page(
                request.GET.get("contracts_page")
            ),
        },
    )


@require_GET
@permission_required("dashboards.view_integration_admin", raise_exception=True)
def integration_admin(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboards/integration_admin.html",
        {
            "connections": selectors.connections_overview(),
            "rules": selectors.ownership_rules(),
            "heartbeats": selectors.heartbeats(),
        },
    )
