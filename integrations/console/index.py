"""The console's front page: where each area of configuration is edited."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.views.decorators.http import require_GET

from integrations.console.access import admin_required

# (label, url name, what is edited there). An area's module adds its line when it lands.
AREAS: list[tuple[str, str, str]] = [
    (
        "Mappings",
        "console:mappings",
        "How each connection's payloads become Concord's records and back: drafts, value maps, "
        "checks, preview against real payloads and open cases, versions, four eyes.",
    ),
    (
        "Connections",
        "console:connections",
        "Each system's base URL, credentials (write-only), rate limits and health; test one "
        "with a real call.",
    ),
    (
        "Schedules",
        "console:schedules",
        "How often each connection is polled and the system's own periodic work runs; last "
        "and next runs; pause or change them.",
    ),
    (
        "Ownership rules",
        "console:ownership_rules",
        "Which system owns each object and field.",
    ),
    (
        "Case routing",
        "console:case_routes",
        "Which queue and priority cases get, by case type, process, legal entity and region; "
        "the SLA per priority.",
    ),
    (
        "ERP routing",
        "console:erp_routes",
        "Which ERP connection serves each legal entity.",
    ),
    (
        "Configuration as files",
        "console:files",
        "Download mappings, value maps, rules and connections (never credentials) as one JSON "
        "file; upload one from another installation, preview what it changes, then apply it.",
    ),
]


@require_GET
@admin_required
def index(request: HttpRequest) -> HttpResponse:
    areas = [{"label": label, "url": reverse(name), "help": help} for label, name, help in AREAS]
    return render(request, "console/index.html", {"console_areas": areas})


urlpatterns = [path("", index, name="index")]
