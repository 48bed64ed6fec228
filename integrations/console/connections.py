"""Connections in the console: the list with each one's health, a page per connection to change
its base URL, limits, credentials and whether it runs, the test button, and a page to add one.

Credentials are write-only here as everywhere: an input never shows a stored value, only a
"stored" badge per key; an empty input keeps the stored value, a new one replaces it, "clear"
removes it. Every write goes through integrations/services/connections.py (encrypted, bound to
the origins they were entered for, audited); its refusal of a URL change that would carry the
stored credentials to another host is shown on the form, with what to do about it.

The test button (htmx POST) makes one real authenticated read through the connector and shows
the vendor's answer (integrations/vendors/connection_test.py), audited; without JavaScript the
same form posts and the page comes back with the answer as a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django_celery_beat.models import PeriodicTask

from integrations import models as m
from integrations import selectors
from integrations.console.access import admin_required
from integrations.console.filters import ConnectionFilterSet
from integrations.console.tables import (
    Sort,
    csv_response,
    is_htmx,
    render_page,
    table_page,
    trail_entries,
)
from integrations.services.connections import connection_create, connection_update
from integrations.services.schedules import (
    interval_seconds,
    poll_staleness,
    poll_task_name,
    schedule_next_run,
)
from integrations.vendors.connection_test import connection_test

# --- What each vendor's connector reads from the credentials -----------------------------------


@dataclass(frozen=True)
class CredentialField:
    key: str
    label: str
    help: str
    url: bool = False  # an address the credentials are sent to (part of their binding)


_WEBHOOK = CredentialField(
    "webhook_secret",
    "Webhook secret",
    "Verifies the signed changes the vendor sends to this connection's webhook address.",
)
# The keys each connector reads (integrations/vendors/<vendor>/connector.py `credential(...)`
# and `credentials.get(...)`, integrations/sync/webhooks.py for the webhook secret).
CREDENTIAL_FIELDS: dict[str, tuple[CredentialField, ...]] = {
    m.Vendor.HARVEST: (
        CredentialField(
            "access_token", "Personal access token", "Harvest ID, Developers: a token."
        ),
        CredentialField("account_id", "Account id", "The Harvest account the token works in."),
        _WEBHOOK,
        CredentialField(
            "user_agent", "User-Agent", "Optional: the app name and a contact Harvest asks for."
        ),
    ),
    m.Vendor.XERO: (
        CredentialField("client_id", "Client id", "Of the Xero custom connection."),
        CredentialField("client_secret", "Client secret", "Of the Xero custom connection."),
        CredentialField(
            "tenant_id",
            "Tenant id",
            "Optional: the organisation. Without it (and a tenant name) the one connected "
            "organisation is used.",
        ),
        CredentialField(
            "tenant_name", "Tenant name", "Optional: the organisation by name, if several."
        ),
        CredentialField(
            "token_url",
            "Token URL",
            "Optional: Xero's identity server (https://identity.xero.com) by default.",
            url=True,
        ),
        CredentialField(
            "connections_url",
            "Connections URL",
            "Optional: where the connected organisations are listed.",
            url=True,
        ),
        CredentialField("scope", "Scopes", "Optional: the scopes to ask the token for."),
        _WEBHOOK,
    ),
    m.Vendor.SALESFORCE: (
        CredentialField("client_id", "Consumer key", "Of the connected app."),
        CredentialField("client_secret", "Consumer secret", "Of the connected app."),
        CredentialField(
            "token_url",
            "Token URL",
            "Optional: the base URL's /services/oauth2/token by default.",
            url=True,
        ),
        _WEBHOOK,
    ),
}
# What a new connection of each vendor starts with: its API root as the connector expects it,
# and the vendor's published limits (Xero 60 calls a minute and 5 at once per organisation;
# Harvest 100 requests per 15 s; Salesforce's are per day, so a polite per-minute cap).
VENDOR_DEFAULTS: dict[str, dict[str, Any]] = {
    m.Vendor.HARVEST: {
        "base_url": "https://api.harvestapp.com/v2",
        "rate_limit_per_minute": 400,
        "max_concurrency": 5,
    },
    m.Vendor.XERO: {
        "base_url": "https://api.xero.com/api.xro/2.0",
        "rate_limit_per_minute": 60,
        "max_concurrency": 5,
    },
    m.Vendor.SALESFORCE: {
        "base_url": "https://example.my.salesforce.com",
        "rate_limit_per_minute": 1000,
        "max_concurrency": 10,
    },
}
SETTINGS = ("name", "base_url", "rate_limit_per_minute", "max_concurrency", "enabled")
LABELS = {
    "name": "name",
    "base_url": "base URL",
    "rate_limit_per_minute": "rate limit",
    "max_concurrency": "concurrency",
    "enabled": "enabled",
}


class ConnectionForm(forms.Form):
    """A connection's settings and its credentials, write-only: ``cred_<key>`` replaces a key
    when given, ``clear_<key>`` removes it; neither keeps it. ``cleaned_data["credentials"]`` is
    the change for the service (a value, or None to remove)."""

    name = forms.CharField(max_length=120)
    base_url = forms.URLField(max_length=500, assume_scheme="https", label="Base URL")
    rate_limit_per_minute = forms.IntegerField(
        min_value=1, max_value=100_000, label="Calls per minute"
    )
    max_concurrency = forms.IntegerField(min_value=1, max_value=1_000, label="Calls at once")
    enabled = forms.BooleanField(required=False)

    def __init__(self, *args: Any, vendor: str, stored: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vendor = vendor
        self.stored = set(stored)
        known = CREDENTIAL_FIELDS.get(vendor, ())
        other = [
            CredentialField(key, key, "Stored earlier; this vendor's connector does not read it.")
            for key in sorted(self.stored - {f.key for f in known})
        ]
        self.credential_fields = [*known, *other]
        self.credential_errors: list[str] = []
        for item in self.credential_fields:
            self.fields[f"cred_{item.key}"] = forms.CharField(
                required=False,
                max_length=4000,
                label=item.label,
                help_text=item.help,
                # Never rendered with a value: not a stored one, not even one just typed.
                widget=forms.PasswordInput(
                    render_value=False, attrs={"autocomplete": "new-password"}
                ),
            )
            if item.key in self.stored:
                self.fields[f"clear_{item.key}"] = forms.BooleanField(
                    required=False, label=f"Clear {item.label}"
                )

    def credential_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "field": item,
                "input": self[f"cred_{item.key}"],
                "clear": self[f"clear_{item.key}"] if item.key in self.stored else None,
                "stored": item.key in self.stored,
            }
            for item in self.credential_fields
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        credentials: dict[str, str | None] = {}
        for item in self.credential_fields:
            value = (cleaned.get(f"cred_{item.key}") or "").strip()
            clear = bool(cleaned.get(f"clear_{item.key}"))
            if clear and value:
                self.add_error(f"cred_{item.key}", "Enter a new value or clear it, not both.")
                continue
            if clear:
                credentials[item.key] = None
            elif value:
                if item.url:
                    try:
                        URLValidator(schemes=["http", "https"])(value)
                    except ValidationError:
                        self.add_error(f"cred_{item.key}", "Enter a full http(s) address.")
                        continue
                credentials[item.key] = value
        cleaned["credentials"] = credentials
        return cleaned

    def add_service_errors(self, error: ValidationError) -> None:
        """A refusal of the service, on the field it names (credentials: on their section)."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error.messages)
            return
        for name, texts in error.message_dict.items():
            if name == "credentials":
                self.credential_errors.extend(texts)
            elif name in self.fields:
                self.add_error(name, texts)
            else:
                self.add_error(None, texts)


# --- The list -----------------------------------------------------------------------------------

SORTS = [
    Sort("name", "Name", ("name",)),
    Sort("vendor", "Vendor", ("vendor", "name")),
    Sort("changed", "Last changed", ("-updated_at",)),
]
CSV_HEADER = [
    "id",
    "name",
    "vendor",
    "role",
    "base_url",
    "enabled",
    "rate_limit_per_minute",
    "max_concurrency",
    "credential_keys",
    "circuit",
    "calls_ok_last_hour",
    "calls_failed_last_hour",
    "calls_429_last_hour",
    "polling",
    "last_test_at",
    "last_test",
]


@dataclass(frozen=True)
class ScheduleView:
    """A connection's polling schedule as its row shows it."""

    task: PeriodicTask | None
    words: str  # "every 120 s", "paused", "by poll-all"
    next_run: datetime | None


def _schedules(connection_ids: list[int], now: datetime) -> dict[int, ScheduleView]:
    names = {poll_task_name(pk): pk for pk in connection_ids}
    found = {
        names[t.name]: t
        for t in PeriodicTask.objects.filter(name__in=list(names)).select_related(
            "interval", "crontab"
        )
    }
    views = {}
    for pk in connection_ids:
        task = found.get(pk)
        if task is None:
            views[pk] = ScheduleView(None, "polled by poll-all", None)
            continue
        seconds = interval_seconds(task)
        words = f"every {seconds:g} s" if seconds is not None else "on a calendar"
        if not task.enabled:
            words = f"paused ({words})"
        views[pk] = ScheduleView(task, words, schedule_next_run(task, now=now))
    return views


def _rows(connections: list[m.Connection]) -> list[dict[str, Any]]:
    now = timezone.now()
    staleness = poll_staleness()
    schedules = _schedules([c.pk for c in connections], now)
    return [
        {
            "connection": c,
            "health": getattr(c, "health", None),
            "poll": selectors.poll_health(c.cursors.all(), now=now, staleness=staleness),
            "schedule": schedules[c.pk],
            "url": reverse("console:connection", args=[c.pk]),
        }
        for c in connections
    ]


def _csv_line(row: dict[str, Any]) -> list[Any]:
    c = row["connection"]
    health = row["health"]
    return [
        c.pk,
        c.name,
        c.vendor,
        c.role,
        c.base_url,
        "yes" if c.enabled else "no",
        c.rate_limit_per_minute,
        c.max_concurrency,
        " ".join(c.credential_keys),
        health.circuit_state if health else "",
        c.calls_ok,
        c.calls_failed,
        c.calls_throttled,
        row["poll"].state,
        c.last_test_at.isoformat() if c.last_test_at else "",
        c.last_test_outcome or "",
    ]


def _csv_rows(connections: Any) -> Any:
    batch: list[m.Connection] = []
    for connection in connections.iterator(chunk_size=200):
        batch.append(connection)
        if len(batch) == 200:
            yield from _rows(batch)
            batch = []
    yield from _rows(batch)


@require_http_methods(["GET"])
@admin_required
def connection_list(request: HttpRequest) -> HttpResponseBase:
    params = request.GET.copy()
    download = params.pop("format", [""])[-1]
    filterset = ConnectionFilterSet(params, queryset=selectors.connection_console_list())
    list_path = reverse("console:connections")
    context: dict[str, Any] = {"filterset": filterset, "list_path": list_path}
    if not filterset.is_valid():
        context["error"] = "These filters are not valid: see the form above."
        return render_page(
            request, "console/connections.html", context, partial="results", status=400
        )
    rows = filterset.qs
    if download == "csv":
        return csv_response(
            name="connections",
            header=CSV_HEADER,
            rows=_csv_rows(rows.order_by("name", "pk").prefetch_related("cursors")),
            line=_csv_line,
        )
    page = table_page(rows, path=list_path, params=params, sorts=SORTS)
    context.update(
        {
            "page": page,
            "rows": _rows(page.rows),
            "export_url": f"{list_path}?{_with_format(params)}",
            "filtered": any(v for k, v in params.items() if k in filterset.filters),
        }
    )
    return render_page(request, "console/connections.html", context, partial="results")


def _with_format(params: QueryDict) -> str:
    query = params.copy()
    query.pop("cursor", None)
    query["format"] = "csv"
    return query.urlencode()


# --- Add ----------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@admin_required
def connection_new(request: HttpRequest) -> HttpResponse:
    vendor = (request.POST.get("vendor") or request.GET.get("vendor") or "").strip()
    context: dict[str, Any] = {
        "vendors": m.Vendor.choices,
        "vendor": vendor if vendor in m.Vendor.values else "",
    }
    if not context["vendor"]:
        status = 400 if vendor else 200
        if vendor:
            context["vendor_error"] = f"'{vendor}' is not a vendor Concord connects to."
        return render_page(
            request, "console/connection_new.html", context, partial="form", status=status
        )
    defaults = VENDOR_DEFAULTS[vendor]
    context["vendor_label"] = m.Vendor(vendor).label
    context["role_label"] = m.SystemRole(m.VENDOR_ROLES[vendor]).label
    if request.method == "POST":
        form = ConnectionForm(request.POST, vendor=vendor, stored=[])
        if form.is_valid():
            data = form.cleaned_data
            try:
                connection = connection_create(
                    vendor=vendor,
                    role=m.VENDOR_ROLES[vendor],
                    credentials={k: v for k, v in data["credentials"].items() if v is not None},
                    actor=request.user,
                    **{name: data[name] for name in SETTINGS},
                )
            except ValidationError as error:
                form.add_service_errors(error)
            else:
                messages.success(
                    request,
                    f"Connection {connection.name} added, with its own polling schedule "
                    f"(every 120 s). Test it below.",
                )
                return redirect("console:connection", pk=connection.pk)
        context["form"] = form
        return render_page(
            request, "console/connection_new.html", context, partial="form", status=400
        )
    context["form"] = ConnectionForm(
        vendor=vendor, stored=[], initial={**defaults, "enabled": True, "name": ""}
    )
    return render_page(request, "console/connection_new.html", context, partial="form")


# --- One connection -----------------------------------------------------------------------------


def _detail_context(connection: m.Connection, form: ConnectionForm) -> dict[str, Any]:
    now = timezone.now()
    connection = (
        m.Connection.objects.select_related("health")
        .prefetch_related("cursors")
        .get(pk=connection.pk)
    )
    schedule = _schedules([connection.pk], now)[connection.pk]
    return {
        "connection": connection,
        "form": form,
        "origins": list(connection.credential_origins or ()) if connection.credentials else [],
        "health": getattr(connection, "health", None),
        "poll": selectors.poll_health(
            connection.cursors.all(), now=now, staleness=poll_staleness()
        ),
        "schedule": schedule,
        "tests": selectors.connection_tests(connection_id=connection.pk),
        "trail": trail_entries(
            [
                e
                for e in selectors.audit_trail(
                    object_type="connection", object_ids=[connection.pk], limit=20
                )
                if e.action != m.AuditEvent.Action.TEST
            ][:10]
        ),
        "role": connection.get_role_display(),
    }


def _initial(connection: m.Connection) -> dict[str, Any]:
    return {name: getattr(connection, name) for name in SETTINGS}


def _saved_words(connection: m.Connection, before: dict[str, Any], data: dict[str, Any]) -> str:
    changed = [LABELS[name] for name in SETTINGS if before[name] != data[name]]
    credentials = data["credentials"]
    replaced = sorted(k for k, v in credentials.items() if v is not None)
    cleared = sorted(k for k, v in credentials.items() if v is None)
    parts = []
    if changed:
        parts.append("changed " + ", ".join(changed))
    if replaced:
        parts.append("credentials replaced: " + ", ".join(replaced))
    if cleared:
        parts.append("credentials cleared: " + ", ".join(cleared))
    if not parts:
        return f"Nothing to save: {connection.name} is as it was."
    return f"Saved {connection.name}: {'; '.join(parts)}."


@require_http_methods(["GET", "POST"])
@admin_required
def connection_detail(request: HttpRequest, pk: int) -> HttpResponse:
    connection = get_object_or_404(m.Connection, pk=pk)
    stored = connection.credential_keys
    if request.method == "POST":
        form = ConnectionForm(request.POST, vendor=connection.vendor, stored=stored)
        if form.is_valid():
            before = _initial(connection)
            data = form.cleaned_data
            try:
                connection_update(
                    connection=connection,
                    credentials=data["credentials"],
                    actor=request.user,
                    **{name: data[name] for name in SETTINGS},
                )
            except ValidationError as error:
                form.add_service_errors(error)
                connection.refresh_from_db()
            else:
                messages.success(request, _saved_words(connection, before, data))
                return redirect("console:connection", pk=connection.pk)
        context = _detail_context(connection, form)
        context["refused"] = True
        return render_page(request, "console/connection.html", context, status=400)
    form = ConnectionForm(vendor=connection.vendor, stored=stored, initial=_initial(connection))
    return render_page(request, "console/connection.html", _detail_context(connection, form))


@require_POST
@admin_required
def connection_test_view(request: HttpRequest, pk: int) -> HttpResponse:
    connection = get_object_or_404(m.Connection, pk=pk)
    result = connection_test(connection=connection, actor=request.user)
    if not is_htmx(request):
        (messages.success if result.ok else messages.error)(
            request, f"Test of {connection.name}: {result.summary}"
        )
        return redirect("console:connection", pk=connection.pk)
    return render_page(
        request,
        "console/_connection_test.html",
        {
            "connection": connection,
            "result": result,
            "tests": selectors.connection_tests(connection_id=connection.pk),
        },
    )


urlpatterns = [
    path("connections/", connection_list, name="connections"),
    path("connections/new/", connection_new, name="connection_new"),
    path("connections/<int:pk>/", connection_detail, name="connection"),
    path("connections/<int:pk>/test/", connection_test_view, name="connection_test"),
]
