"""Schedules in the console: every periodic task beat runs (django-celery-beat's rows), with its
last and next run, and an admin's change of its interval and whether it runs.

Each connection is polled by a task of its own (``poll connection <id>``), and each ERP
connection is reconciled by one (``reconcile connection <id>``, hourly by default;
integrations/services/schedules.py); the system's work (the sweepers, the billing run, the
digests, ``poll-all`` for connections without a task of their own) comes from config/celery.py.
The next run is the last run plus the interval, as beat counts it; one in the past means beat
is late or not running. A change takes effect at beat's next tick (it rereads the rows when one
changes) and stays when beat restarts.

A row changes in place (htmx): the answer is the row again, with the result in words; without
JavaScript the same form posts and the list comes back with a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_celery_beat.models import PeriodicTask

from integrations import models as m
from integrations import selectors
from integrations.console.access import admin_required
from integrations.console.filters import ScheduleFilterSet
from integrations.console.tables import (
    Sort,
    csv_response,
    is_htmx,
    render_page,
    table_page,
    trail_entries,
    url_with,
)
from integrations.services.schedules import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    Seen,
    interval_seconds,
    reconciled_connection_id,
    schedule_next_run,
    schedule_update,
    task_connection_id,
)

# What each of the code's tasks does, and what pausing it means (config/celery.py).
WHAT: dict[str, str] = {
    "sweep-outbox": "Sends again what waits in the outbox after a lost message or a stopped "
    "worker. Paused, such work waits until it runs again.",
    "sweep-inbound": "Processes received changes whose wake-up the broker lost.",
    "poll-all": "Polls the enabled connections that have no polling schedule of their own.",
    "check-stale-polls": "Opens a case for a connection whose polls have not succeeded for "
    "three of its intervals, and closes it when they do.",
    "check-expected-work": "Opens a case for expected work that did not happen: approved time "
    "not in the ERP within its SLA, a workflow run stuck at a step, a poll beat has not sent; "
    "closes each once it is no longer so.",
    "billing-run": "Turns approved time into draft invoices for the ERP.",
    "case-digests": "Sends each queue its digest of SLA breaches and new high-impact cases.",
    "celery.backend_cleanup": "Celery's clean-up of stored task results (Concord keeps none).",
}
SORTS = [
    Sort("name", "Name", ("name",)),
    Sort("task", "Task", ("task", "name")),
    Sort("last_run", "Last run", ("-last_run_sort",)),
]
CSV_HEADER = [
    "id",
    "name",
    "task",
    "connection",
    "interval_s",
    "schedule",
    "enabled",
    "last_run_at",
    "next_run_at",
    "total_run_count",
]
# A sort value for "never ran" that sorts after every real run in "-last run" order.
NEVER = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleForm(forms.Form):
    interval_s = forms.IntegerField(
        required=False, min_value=1, label="Every (seconds)", help_text="At least 10 seconds."
    )
    enabled = forms.BooleanField(required=False, label="Running")
    # What the person saw: a change someone made meanwhile is refused, not overwritten.
    seen_interval_s = forms.FloatField(required=False, widget=forms.HiddenInput)
    seen_enabled = forms.CharField(required=False, widget=forms.HiddenInput)


@dataclass
class ScheduleRow:
    task: PeriodicTask
    kind: str  # "polling" or "system"
    connection: m.Connection | None
    interval_s: float | None
    schedule_words: str
    next_run: datetime | None
    next_words: str
    late: bool
    what: str
    error: str = ""
    interval_value: Any = None  # what the interval box shows (the person's entry after an error)


def _span(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _rows(tasks: list[PeriodicTask], now: datetime) -> list[ScheduleRow]:
    ids = [pk for pk in (task_connection_id(t.name) for t in tasks) if pk is not None]
    connections = m.Connection.objects.in_bulk(ids)
    rows = []
    for task in tasks:
        connection_id = task_connection_id(task.name)
        reconciles = reconciled_connection_id(task.name) is not None
        connection = connections.get(connection_id) if connection_id else None
        seconds = interval_seconds(task)
        schedule_words = (
            f"every {seconds:g} s" if seconds is not None else str(task.scheduler or "none")
        )
        next_run = schedule_next_run(task, now=now)
        late = next_run is not None and next_run < now - timedelta(seconds=5)
        if not task.enabled:
            next_words = "paused"
        elif next_run is None:
            next_words = "not known"
        elif late:
            next_words = f"due {_span(now - next_run)} ago: is beat running?"
        else:
            next_words = f"in {_span(next_run - now)}"
        if reconciles:
            what = (
                f"Reconciles {connection.name} ({connection.get_vendor_display()}) with the PSA "
                "and Concord's billing, per project and month; each gap becomes a case"
                + (
                    ""
                    if connection.enabled
                    else " (the connection is disabled; its records are still compared)"
                )
                + "."
                if connection
                else f"Reconciles connection {connection_id}, which no longer exists."
            )
        elif connection_id is not None:
            what = (
                f"Polls {connection.name} ({connection.get_vendor_display()})"
                + (
                    ""
                    if connection.enabled
                    else "; the connection is disabled, so it reads nothing"
                )
                + "."
                if connection
                else f"Polls connection {connection_id}, which no longer exists."
            )
        else:
            what = WHAT.get(task.name) or task.description or ""
        rows.append(
            ScheduleRow(
                task=task,
                kind="reconciliation"
                if reconciles
                else "polling"
                if connection_id is not None
                else "system",
                connection=connection,
                interval_s=seconds,
                schedule_words=schedule_words,
                next_run=next_run,
                next_words=next_words,
                late=late,
                what=what,
                interval_value=int(seconds) if seconds is not None else None,
            )
        )
    return rows


def _tasks() -> Any:
    return selectors.periodic_task_list().annotate(
        last_run_sort=Coalesce("last_run_at", Value(NEVER))
    )


def _csv_line(row: ScheduleRow) -> list[Any]:
    t = row.task
    return [
        t.pk,
        t.name,
        t.task,
        row.connection.name if row.connection else "",
        f"{row.interval_s:g}" if row.interval_s is not None else "",
        row.schedule_words,
        "yes" if t.enabled else "no",
        t.last_run_at.isoformat() if t.last_run_at else "",
        row.next_run.isoformat() if row.next_run else "",
        t.total_run_count,
    ]


def _csv_rows(tasks: Any) -> Any:
    now = timezone.now()
    for task in tasks.iterator(chunk_size=200):
        yield from _rows([task], now)


@require_GET
@admin_required
def schedule_list(request: HttpRequest) -> HttpResponseBase:
    params = request.GET.copy()
    download = params.pop("format", [""])[-1]
    filterset = ScheduleFilterSet(params, queryset=_tasks())
    list_path = reverse("console:schedules")
    context: dict[str, Any] = {
        "filterset": filterset,
        "list_path": list_path,
        "min_interval_s": MIN_INTERVAL_S,
        "max_interval_s": MAX_INTERVAL_S,
        "trail": trail_entries(selectors.audit_trail(object_type="periodictask", limit=10)),
    }
    if not filterset.is_valid():
        context["error"] = "These filters are not valid: see the form above."
        return render_page(
            request, "console/schedules.html", context, partial="results", status=400
        )
    if download == "csv":
        return csv_response(
            name="schedules",
            header=CSV_HEADER,
            rows=_csv_rows(filterset.qs.order_by("name", "pk")),
            line=_csv_line,
        )
    page = table_page(filterset.qs, path=list_path, params=params, sorts=SORTS)
    export = params.copy()
    export.pop("cursor", None)
    context.update(
        {
            "page": page,
            "rows": _rows(page.rows, timezone.now()),
            "export_url": url_with(list_path, export, format="csv"),
            "filtered": any(v for k, v in params.items() if k in filterset.filters),
            "next": url_with(list_path, params),
        }
    )
    return render_page(request, "console/schedules.html", context, partial="results")


def _seen(form: ScheduleForm) -> Seen | None:
    data = form.cleaned_data
    if data.get("seen_enabled") not in ("True", "False"):
        return None
    return Seen(interval_s=data.get("seen_interval_s"), enabled=data["seen_enabled"] == "True")


def _notice(row: ScheduleRow, before: PeriodicTask) -> str:
    task = row.task
    parts = []
    before_s = interval_seconds(before)
    if row.interval_s != before_s:
        parts.append(f"now runs every {row.interval_s:g} s (was {before_s:g} s)")
    if task.enabled != before.enabled:
        parts.append("is running again" if task.enabled else "is paused")
    if not parts:
        return f"Nothing changed: {task.name} is as it was."
    return f"{task.name} {' and '.join(parts)}; beat takes it up at its next tick."


def _back(request: HttpRequest) -> str:
    """The list the form was on (its filters and page), never another site."""
    target = request.POST.get("next", "")
    list_path = reverse("console:schedules")
    return target if target.startswith(list_path) else list_path


@require_POST
@admin_required
def schedule_edit(request: HttpRequest, pk: int) -> HttpResponse:
    task = get_object_or_404(PeriodicTask.objects.select_related("interval"), pk=pk)
    before = PeriodicTask.objects.select_related("interval").get(pk=pk)
    form = ScheduleForm(request.POST)
    error = ""
    if not form.is_valid():
        error = " ".join(str(e) for v in form.errors.values() for e in v)
    else:
        interval = form.cleaned_data.get("interval_s")
        try:
            task = schedule_update(
                task=task,
                actor=request.user,
                interval_s=interval,
                enabled=form.cleaned_data["enabled"],
                seen=_seen(form),
            )
        except ValidationError as refusal:
            error = " ".join(refusal.messages)
    now = timezone.now()
    fresh = _tasks().get(pk=pk)
    (row,) = _rows([fresh], now)
    if error:
        row.error = error
        row.interval_value = request.POST.get("interval_s", row.interval_value)
        notice, ok, status = f"{fresh.name} was not changed: {error}", False, 400
    else:
        notice, ok, status = _notice(row, before), True, 200
    if not is_htmx(request):
        (messages.success if ok else messages.error)(request, notice)
        return redirect(_back(request))
    return render_page(
        request,
        "console/_schedule_row.html",
        {
            "row": row,
            "notice": notice,
            "notice_ok": ok,
            "oob": True,
            "trail": trail_entries(selectors.audit_trail(object_type="periodictask", limit=10)),
            "trail_oob": True,
            "next": _back(request),
            "min_interval_s": MIN_INTERVAL_S,
            "max_interval_s": MAX_INTERVAL_S,
        },
        status=status,
    )


urlpatterns = [
    path("schedules/", schedule_list, name="schedules"),
    path("schedules/<int:pk>/", schedule_edit, name="schedule"),
]
