"""The console's front page: where each area of configuration is edited."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path, reverse
from django.views.decorators.http import require_GET

from integrations.console.access import admin_required

# (label, url name, what is edited there). An area's module adds its line when it lands.
AREAS: list[tuple[str, str, str]] = []


@require_GET
@admin_required
def index(request: HttpRequest) -> HttpResponse:
    areas = [{"label": label, "url": reverse(name), "help": help} for label, name, help in AREAS]
    return render(request, "console/index.html", {"console_areas": areas})


urlpatterns = [path("", index, name="index")]
