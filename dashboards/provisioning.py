"""The PMO provisioning board (/provisioning/): every sold project on its way from closed-won to
a project dimension in the ERP, one row per provisioning run (integrations/workflows/
provisioning.py, integrations/models/workflows.py), and one run's steps (/provisioning/<id>/).

Each row shows the opportunity, its customer, region and legal entity, the stage it stands at
in words (integrations/workflows/stages.py), how long it has stood there, the run's state, what
stopped it (the current step's detail) with a link to the case that holds it, and when it
started. A run at one step longer than CONCORD_RUN_STUCK_AFTER_MINUTES is stuck: highlighted
here, and a case for integration admins when no other case holds it (integrations/workflows/
checks.py, the same threshold and condition, ``stuck_q``).

Filters (django-filter; a plain GET form whose values stay in the URL) by region, legal entity,
stage, state and stuck; sorts by time at stage (runs under way first, longest first) or start;
keyset pages (integrations/console/tables.py); the filtered set as CSV. The results region
refreshes itself every 15 seconds (htmx polling the same URL, answered with the fragment),
keeping its filters, sort and page. The page costs the same few queries for 5 rows or 50: each
row's customer, step detail and case come from subqueries of the one list query.

PMO and integration admins (``dashboards.view_pmo`` or ``dashboards.view_integration_admin``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import django_filters
from django.core.exceptions import PermissionDenied
from django.db.models import (
    BigIntegerField,
    BooleanField,
    Case,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from exceptions.models import BlockedRecord, ExceptionCase
from exceptions.views.queues import span_words
from integrations.console.tables import (
    Sort,
    csv_response,
    render_page,
    table_page,
    url_with,
)
from integrations.models import (
    Customer,
    LegalEntity,
    Project,
    RunState,
    StepState,
    WorkflowRun,
    WorkflowStep,
)
from integrations.workflows.checks import run_stuck_after, stuck_q
from integrations.workflows.provisioning import PROCESS, PROVISIONING
from integrations.workflows.runs import RUN_RECORD
from integrations.workflows.stages import DONE_WORDS, step_words

BOARD_PERMISSIONS = ("dashboards.view_pmo", "dashboards.view_integration_admin")
NOT_ALLOWED = "The provisioning board is for PMO and integration admins."
# htmx polls the results region this often (the "refreshes itself").
REFRESH = "every 15s"
DONE = "done"
YES_NO = [("yes", "Yes"), ("no", "No")]
SORTS = [
    # Under way before done, then the longest at its stage first.
    Sort("stage_time", "Time at stage", ("finished", "stage_since")),
    Sort("started", "Newest", ("-started_at",)),
    Sort("started_oldest", "Oldest", ("started_at",)),
]
CSV_HEADER = [
    "run",
    "opportunity",
    "customer",
    "region",
    "legal entity",
    "stage",
    "at stage since",
    "state",
    "stuck",
    "failure",
    "case",
    "started",
    "finished",
]


def board_access(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and any(user.has_perm(p) for p in BOARD_PERMISSIONS)
    )


def _allowed(request: HttpRequest) -> None:
    if not board_access(request.user):
        raise PermissionDenied(NOT_ALLOWED)


# --- Selectors ----------------------------------------------------------------------------------


def _stage_choices() -> list[tuple[str, str]]:
    steps = [(name, step_words(PROCESS, name)) for name in PROVISIONING.step_names]
    return [*steps, (DONE, DONE_WORDS.get(PROCESS, "Done"))]


class RunFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_q", label="Opportunity")
    region = django_filters.ChoiceFilter(choices=Project.Region.choices, empty_label="Any")
    legal_entity = django_filters.ModelChoiceFilter(
        queryset=LegalEntity.objects.order_by("code"), label="Legal entity", empty_label="Any"
    )
    stage = django_filters.ChoiceFilter(
        choices=_stage_choices, method="filter_stage", label="Stage", empty_label="Any"
    )
    state = django_filters.ChoiceFilter(choices=RunState.choices, empty_label="Any")
    stuck = django_filters.ChoiceFilter(
        choices=YES_NO, method="filter_stuck", label="Stuck", empty_label="Any"
    )

    class Meta:
        model = WorkflowRun
        fields: list[str] = []

    def filter_q(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        value = value.strip()
        if not value:
            return rows
        return rows.filter(Q(label__icontains=value) | Q(subject_key__icontains=value))

    def filter_stage(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        if value == DONE:
            return rows.filter(state=RunState.DONE)
        return rows.filter(current_step=value).exclude(state=RunState.DONE)

    def filter_stuck(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return rows.filter(stuck=value == "yes")


def board_runs(*, now: datetime | None = None) -> QuerySet[WorkflowRun]:
    """Every provisioning run with what its row shows, in ONE query: the time its stage began
    (``stage_since``: its finish for a run that is done), whether it is stuck, the current
    step's detail, its customer (once validation found one; the CRM account before), and the
    open case holding it (its own blocking case, else a case holding it as a record, such as
    a stuck-run case)."""
    now = now or timezone.now()
    detail = WorkflowStep.objects.filter(run=OuterRef("pk"), name=OuterRef("current_step"))
    customer = Customer.objects.filter(pk=OuterRef("customer_pk")).values("name")[:1]
    holding = BlockedRecord.objects.filter(
        record_type=RUN_RECORD, record_id=OuterRef("pk"), case__status=ExceptionCase.Status.OPEN
    ).order_by("-case_id")
    done = Q(state=RunState.DONE)
    return (
        WorkflowRun.objects.filter(process=PROCESS)
        .select_related("legal_entity")
        .defer("input", "context")
        .annotate(
            finished=Case(When(done, then=Value(1)), default=Value(0), output_field=IntegerField()),
            stage_since=Case(
                When(done, then=Coalesce("finished_at", "updated_at")),
                default=Coalesce("step_started_at", "started_at"),
            ),
            stuck=ExpressionWrapper(stuck_q(now), output_field=BooleanField()),
            failure=Subquery(detail.values("detail")[:1]),
            customer_pk=Cast(KT("context__customer_id"), BigIntegerField()),
            customer_name=Subquery(customer),
            account=KT("context__account"),
            case_id=Coalesce(
                Case(
                    When(
                        exception_case__status=ExceptionCase.Status.OPEN,
                        then=F("exception_case_id"),
                    )
                ),
                Subquery(holding.values("case_id")[:1]),
                output_field=BigIntegerField(),
            ),
        )
    )


def board_filter(params: Any, *, now: datetime | None = None) -> RunFilterSet:
    return RunFilterSet(params, queryset=board_runs(now=now))


@dataclass(frozen=True)
class BoardRow:
    """One run as its row shows it."""

    run: WorkflowRun
    url: str
    customer: str
    stage: str
    at_stage: str  # "3 hours"
    stage_since: datetime
    stuck: bool
    failure: str
    case_url: str  # "" for none


def _case_url(case_id: int | None) -> str:
    return reverse("exceptions:case", args=[case_id]) if case_id else ""


def _customer(run: Any) -> str:
    if run.customer_name:
        return str(run.customer_name)
    return f"CRM account {run.account}" if run.account else ""


def board_rows(runs: list[Any], *, now: datetime | None = None) -> list[BoardRow]:
    now = now or timezone.now()
    prefix = reverse("dashboards:provisioning_run", args=[0])[: -len("0/")]
    return [
        BoardRow(
            run=run,
            url=f"{prefix}{run.pk}/",
            customer=_customer(run),
            stage=step_words(run.process, run.current_step, run.state),
            at_stage=span_words(now - run.stage_since),
            stage_since=run.stage_since,
            stuck=bool(run.stuck),
            failure=(run.failure or "") if run.state != RunState.DONE else "",
            case_url=_case_url(run.case_id),
        )
        for run in runs
    ]


# --- Views --------------------------------------------------------------------------------------


@require_GET
def board(request: HttpRequest) -> HttpResponse:
    _allowed(request)
    now = timezone.now()
    filterset = board_filter(request.GET, now=now)
    path = reverse("dashboards:provisioning")
    context: dict[str, Any] = {
        "filterset": filterset,
        "list_path": path,
        "refresh": REFRESH,
        "refresh_url": url_with(path, request.GET),
        "stuck_after": span_words(run_stuck_after()),
        "filtered": any(v for k, v in request.GET.items() if k not in ("sort", "cursor")),
    }
    status = 200
    if filterset.is_valid():
        export = reverse("dashboards:provisioning_export")
        page = table_page(filterset.qs, path=path, params=request.GET, sorts=SORTS)
        context.update(
            page=page,
            rows=board_rows(page.rows, now=now),
            export_url=url_with(export, request.GET, cursor=None),
        )
    else:
        context["error"] = "These filters are not valid: " + "; ".join(
            f"{name}: {' '.join(errors)}" for name, errors in filterset.errors.items()
        )
        status = 400
    return render_page(
        request, "dashboards/provisioning.html", context, partial="results", status=status
    )


def _csv_line(now: datetime) -> Callable[[Any], list[Any]]:
    def line(run: Any) -> list[Any]:
        return [
            run.pk,
            run.label,
            _customer(run),
            run.region,
            run.legal_entity.code if run.legal_entity else "",
            step_words(run.process, run.current_step, run.state),
            run.stage_since.isoformat(),
            run.state,
            "yes" if run.stuck else "no",
            (run.failure or "") if run.state != RunState.DONE else "",
            run.case_id or "",
            run.started_at.isoformat(),
            run.finished_at.isoformat() if run.finished_at else "",
        ]

    return line


def _ordered(rows: QuerySet[Any], params: Any) -> Iterator[Any]:
    by_key = {s.key: s for s in SORTS}
    sort = by_key.get(params.get("sort") or "", SORTS[0])
    return rows.order_by(*sort.order_by()).iterator(chunk_size=1_000)


@require_GET
def board_export(request: HttpRequest) -> HttpResponseBase:
    """The filtered, sorted runs as CSV (every page), streamed."""
    _allowed(request)
    now = timezone.now()
    filterset = board_filter(request.GET, now=now)
    if not filterset.is_valid():
        return board(request)
    return csv_response(
        name="provisioning",
        header=CSV_HEADER,
        rows=_ordered(filterset.qs, request.GET),
        line=_csv_line(now),
    )


@dataclass(frozen=True)
class StepRow:
    step: WorkflowStep
    words: str
    took: str  # "3 minutes", or "" while it has not finished
    ids: list[tuple[str, str, str]]  # (system, what, id)
    case_url: str


def _steps(run: WorkflowRun, now: datetime) -> list[StepRow]:
    rows = []
    for step in WorkflowStep.objects.filter(run=run).order_by("position"):
        if step.started_at and step.finished_at:
            took = span_words(step.finished_at - step.started_at)
        elif step.started_at and step.state not in (StepState.DONE, StepState.SKIPPED):
            took = f"{span_words(now - step.started_at)} so far"
        else:
            took = ""
        ids = [
            (role.upper(), what, str(value))
            for role, found in sorted((step.external_ids or {}).items())
            for what, value in sorted(found.items())
        ]
        rows.append(
            StepRow(
                step=step,
                words=step_words(run.process, step.name),
                took=took,
                ids=ids,
                case_url=_case_url(step.exception_case_id),
            )
        )
    return rows


@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    """One run: its steps with their timings, tries, ids per system and cases."""
    _allowed(request)
    now = timezone.now()
    run = get_object_or_404(board_runs(now=now), pk=run_id)
    return render_page(
        request,
        "dashboards/provisioning_run.html",
        {
            "run": run,
            "row": board_rows([run], now=now)[0],
            "steps": _steps(run, now),
            "board_url": reverse("dashboards:provisioning"),
            "stuck_after": span_words(run_stuck_after()),
        },
        partial="steps",
    )
