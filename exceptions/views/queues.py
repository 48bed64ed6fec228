"""The queue list (filters, search, sort, keyset pages, totals), its CSV export and bulk actions,
"my work" and the SLA view: thin views over exceptions.selectors and exceptions.actions.

An htmx request (the filter form, the sort and page links, the bulk form) gets the results
region only (the template's "results" partial, django-template-partials); any other request gets
the whole page, so every page works without JavaScript: the filter form is a plain GET, the bulk
form a plain POST answered by a redirect back to the same filtered URL with a message.

Who sees what is exceptions/access.py: a user in no queue is refused (403), like the API.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST

from exceptions import actions, selectors
from exceptions.access import CaseAccess, case_access
from exceptions.catalogue import CATALOGUE
from exceptions.errors import (
    HTTP_STATUS,
    CaseActionError,
    CaseForbidden,
    CaseRefused,
)
from exceptions.models import ExceptionCase, WorkQueue
from exceptions.views import HtmxHttpRequest, esc, options
from integrations import models as m

NO_QUEUE = "You work in no exception queue; ask an integration admin to add you to one."
# The query parameters CaseFilterSet reads; everything else (sort, cursor, ...) is paging.
FILTER_KEYS = (
    "queue",
    "status",
    "process",
    "case_type",
    "legal_entity",
    "region",
    "assignee",
    "sla",
    "amount_min",
    "amount_max",
    "q",
)
MULTI_KEYS = ("queue", "case_type")
SORT_LABELS = {"sla": "SLA due", "amount": "Amount blocked", "age": "Age"}
# The export walks the filtered set in keyset pages of 1,000, so a million cases stream through
# in bounded memory (a page of 1,000 rows is about 1 MB of objects), one index range scan each.
EXPORT_PAGE = 1_000
EXPORT_COLUMNS = [
    "id",
    "queue",
    "case type",
    "process",
    "priority",
    "status",
    "SLA due",
    "SLA state",
    "message",
    "amount",
    "currency",
    "hours",
    "records",
    "assignee",
    "first seen",
    "last seen",
]
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): such cells
# get a leading apostrophe, which shows the text as it is.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SLA_WORDS = {"breached": "Breached", "due_soon": "Due soon", "ok": "On time", "none": "No SLA"}


# --- Shared pieces ------------------------------------------------------------------------------


def _access(request: HttpRequest) -> CaseAccess:
    access = case_access(request.user)
    if access.none:
        raise PermissionDenied(NO_QUEUE)
    return access


def _partial(request: HtmxHttpRequest) -> bool:
    """An htmx request for the results region (a history restore wants the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def _render(
    request: HtmxHttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    if _partial(request):
        template += "#results"
    response = render(request, template, context, status=status)
    # The same URL answers htmx with a fragment and a browser with the page: never cache one
    # for the other.
    patch_vary_headers(response, ["HX-Request"])
    return response


@dataclass(frozen=True)
class Row:
    """One case as its table row shows it, its text made here in plain Python: a page of 200
    rows through template filters (naturaltime, intcomma, truncatechars, url per row) cost
    several times the page's SQL."""

    case: ExceptionCase
    sla: str  # breached, due_soon, ok, none ("" for a closed case)
    sla_words: str
    type_words: str  # "Vendor validation"
    url: str
    message_short: str
    amounts: list[str]  # "GBP 3,150.00", one per currency; [] for none
    hours: str
    records: str
    due_iso: str
    due_words: str  # "due in 3 hours", "due 2 days ago"
    age_iso: str
    age_words: str  # "4 hours"

    def table_row(self) -> SafeString:
        """The row of the queue table (templates/exceptions/_queue_table.html). Built here with
        every value escaped by `esc`: 50 rows of a dozen cells each through template tags (or
        format_html, whose lazy escaping costs as much) cost more than the page's SQL."""
        case = self.case
        pk = case.pk
        if self.sla:
            sla = f'<span class="sla-badge sla-{esc(self.sla)}">{esc(self.sla_words)}</span>'
        else:
            sla = esc(case.get_status_display())
        if self.due_iso:
            sla += f'<br><time datetime="{esc(self.due_iso)}">{esc(self.due_words)}</time>'
        amounts = (
            "<br>".join(esc(a) for a in self.amounts)
            if self.amounts
            else '<span class="muted">none</span>'
        )
        assignee = (
            esc(case.assignee.get_username())
            if case.assignee
            else '<span class="muted">nobody</span>'
        )
        sla_class = f" sla-{esc(self.sla)}" if self.sla else ""
        return mark_safe(  # noqa: S308 - every value above and below goes through esc
            f'<tr id="case-{pk}" class="case-row{sla_class}">'
            f'<td><input type="checkbox" name="case" value="{pk}" aria-label="Select case #{pk}">'
            f'<input type="hidden" name="rev-{pk}" value="{case.revision}"></td>'
            f'<td><span class="priority p{case.priority}">P{case.priority}</span></td>'
            f'<td class="sla">{sla}</td>'
            f"<td>{esc(case.get_queue_display())}</td><td>{esc(self.type_words)}</td>"
            f'<td class="message"><a href="{esc(self.url)}">{esc(self.message_short)}</a> '
            f'<span class="case-id">#{pk}</span></td>'
            f'<td class="num">{amounts}</td><td class="num">{esc(self.hours)}</td>'
            f'<td class="num">{esc(self.records)}</td><td>{assignee}</td>'
            f'<td><time datetime="{esc(self.age_iso)}">{esc(self.age_words)}</time></td></tr>'
        )


# Characters of a case's message in its row (the whole message is its link's title and page).
ROW_MESSAGE = 280


def _rows(
    cases: Sequence[ExceptionCase],
    now: datetime | None = None,
    windows: Mapping[int, timedelta] | None = None,
) -> list[Row]:
    now = now or timezone.now()
    windows = windows if windows is not None else selectors.sla_windows()
    # "/cases/0/" -> "/cases/{pk}/": one reverse for the page, not one per row.
    prefix = reverse("exceptions:case", args=[0])[: -len("0/")]
    rows = []
    for case in cases:
        state = selectors.case_sla_state(case, now=now, windows=windows)
        if case.currency:
            amounts = [f"{case.currency} {case.amount_blocked:,.2f}"]
        else:
            amounts = [f"{cur} {Decimal(str(v)):,.2f}" for cur, v in sorted(case.amounts.items())]
        due = case.sla_due_at
        message = case.message
        rows.append(
            Row(
                case=case,
                sla=state,
                sla_words=SLA_WORDS.get(state, ""),
                type_words=case.case_type.replace("_", " ").capitalize(),
                url=f"{prefix}{case.pk}/",
                message_short=message
                if len(message) <= ROW_MESSAGE
                else message[: ROW_MESSAGE - 1].rstrip() + "\u2026",
                amounts=amounts,
                hours=f"{case.hours_blocked:,.2f}",
                records=f"{case.record_count:,}",
                due_iso=due.isoformat() if due else "",
                due_words=(
                    ""
                    if due is None
                    else f"due in {span_words(due - now)}"
                    if due >= now
                    else f"due {span_words(now - due)} ago"
                ),
                age_iso=case.first_seen_at.isoformat(),
                age_words=span_words(now - case.first_seen_at),
            )
        )
    return rows


_SPANS = (
    ("year", 365 * 86400),
    ("week", 7 * 86400),
    ("day", 86400),
    ("hour", 3600),
    ("minute", 60),
)


def span_words(span: timedelta) -> str:
    """A duration in its largest whole unit: "3 hours", "1 day", "less than a minute"."""
    seconds = abs(span.total_seconds())
    for unit, size in _SPANS:
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}" if n == 1 else f"{n} {unit}s"
    return "less than a minute"


def _url(path: str, params: QueryDict, **changes: str | None) -> str:
    """`path` with `params`, some changed (None: dropped)."""
    query = params.copy()
    for key, value in changes.items():
        query.pop(key, None)
        if value is not None:
            query[key] = value
    encoded = query.urlencode()
    return f"{path}?{encoded}" if encoded else path


def _sorts(path: str, params: QueryDict, current: str) -> list[dict[str, Any]]:
    return [
        {
            "label": label,
            "url": _url(path, params, sort=key, cursor=None),
            "current": key == current,
        }
        for key, label in SORT_LABELS.items()
    ]


def _page_context(path: str, params: QueryDict, page: selectors.CasePage) -> dict[str, Any]:
    """The table, the sort links and the page links of a list at `path` with `params`."""
    cursor = params.get("cursor") or None
    return {
        "rows": _rows(page.cases),
        "sort": page.sort,
        "sorts": _sorts(path, params, page.sort),
        "cursor": cursor,
        "first_url": _url(path, params, cursor=None) if cursor else None,
        "next_url": _url(path, params, cursor=page.next_cursor) if page.next_cursor else None,
        "list_url": _url(path, params),
    }


# --- The queue list -----------------------------------------------------------------------------


@dataclass
class ListQuery:
    filters: dict[str, Any]
    sort: str
    cursor: str | None
    queues: list[str]  # the queues asked for (or defaulted to); [] = every queue one sees
    active: bool  # any filter beyond the defaults


def _list_query(
    request: HttpRequest, params: QueryDict, access: CaseAccess, names: Mapping[str, str]
) -> ListQuery:
    """What the list is asked for. No `queue` parameter: the user's own queues (an integration
    admin, who sees all: the queues they are a member of, else all). A `queue` parameter with
    no value (the form's hidden one, every box unticked): every queue they see."""
    filters: dict[str, Any] = {}
    for key in FILTER_KEYS:
        values = [v for v in params.getlist(key) if v.strip()]
        if values:
            filters[key] = values if key in MULTI_KEYS else values[-1]
    queues: list[str] = filters.get("queue", [])
    refused = [code for code in queues if code in names and not access.allows(code)]
    if refused:
        raise CaseForbidden(
            f"You do not work in the {names[refused[0]]} queue, so you cannot see its cases."
        )
    explicit = "queue" in params
    if not explicit and access.all_queues:
        queues = sorted(access.own)
        if queues:
            filters["queue"] = queues
    active = explicit or any(
        k != "queue" and not (k == "status" and v == ExceptionCase.Status.OPEN)
        for k, v in filters.items()
    )
    return ListQuery(
        filters=filters,
        sort=params.get("sort") or selectors.DEFAULT_SORT,
        cursor=params.get("cursor") or None,
        queues=queues,
        active=active,
    )


def _list_context(request: HttpRequest, params: QueryDict) -> tuple[dict[str, Any], int]:
    """Everything the queue page shows for `params`, and its status (a refusal: 400 or 403,
    shown in words on the page)."""
    access = _access(request)
    path = reverse("exceptions:queue")
    all_queues = list(WorkQueue.objects.order_by("name").values_list("code", "name"))
    names = dict(all_queues)
    visible = [(code, name) for code, name in all_queues if access.allows(code)]
    members = selectors.queue_members(queues=[code for code, _ in visible])
    context: dict[str, Any] = {
        "params": params,
        "list_path": path,
        "sort": params.get("sort") or selectors.DEFAULT_SORT,
        # The filter form's options, made in Python (exceptions/views/__init__.py `options`).
        "status_options": options(
            ExceptionCase.Status.choices, params.get("status") or ExceptionCase.Status.OPEN
        ),
        "case_type_options": options(
            ((n, n.replace("_", " ").capitalize()) for n in sorted(CATALOGUE)),
            params.get("case_type"),
        ),
        "region_options": options(m.Project.Region.choices, params.get("region")),
        "sla_options": options(selectors.SLA_STATES, params.get("sla")),
        "members": members,
        "assignee_options": options(
            ((p.pk, p.get_username()) for p in members), params.get("assignee")
        ),
        "entity_options": options(
            m.LegalEntity.objects.order_by("name").values_list("pk", "name"),
            params.get("legal_entity"),
        ),
        "export_url": _url(reverse("exceptions:export"), params, cursor=None),
        "can_widen": access.all_queues,
    }
    status = 200
    chosen: set[str] = set()
    try:
        query = _list_query(request, params, access, names)
        chosen = set(query.queues) or (
            set() if "queue" in params or access.all_queues else {c for c, _ in visible}
        )
        context["active"] = query.active
        cases = selectors.case_queryset(
            user=request.user, filters=query.filters, queue_choices=all_queues
        )
        page = selectors.case_page(cases=cases, sort=query.sort, cursor=query.cursor)
        context.update(_page_context(path, params, page))
        # On the first page only, like the API: the totals are over the whole filtered set, the
        # same on every page, and a deep page should cost one index range scan.
        context["totals"] = (
            selectors.case_totals(
                cases=cases,
                status=query.filters.get("status") or selectors.OPEN,
                user=request.user,
                filters=query.filters,
            )
            if query.cursor is None
            else None
        )
    except CaseActionError as error:
        context["error"] = str(error)
        status = HTTP_STATUS.get(type(error), 400)
    context["queue_options"] = [
        {"code": code, "name": name, "checked": code in chosen} for code, name in visible
    ]
    return context, status


@require_GET
def case_list(request: HtmxHttpRequest) -> HttpResponse:
    context, status = _list_context(request, request.GET)
    return _render(request, "exceptions/queue.html", context, status)


# --- CSV export ---------------------------------------------------------------------------------


class _Echo:
    """A file-like object whose write returns the line (csv.writer into a streaming response)."""

    def write(self, value: str) -> str:
        return value


def _cell(value: str) -> str:
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def _export_row(case: ExceptionCase, state: str) -> list[str]:
    if case.currency or not case.amounts:
        amount = f"{case.amount_blocked:.2f}" if case.currency else ""
        currency = case.currency
    else:  # several currencies: no single figure adds them up
        amount = ""
        currency = ", ".join(f"{c} {v}" for c, v in sorted(case.amounts.items()))
    return [
        str(case.pk),
        _cell(case.get_queue_display()),
        _cell(case.case_type),
        _cell(case.process),
        f"P{case.priority}",
        case.status,
        case.sla_due_at.isoformat() if case.sla_due_at else "",
        state,
        _cell(case.message),
        amount,
        _cell(currency),
        f"{case.hours_blocked:.2f}",
        str(case.record_count),
        _cell(case.assignee.get_username() if case.assignee else ""),
        case.first_seen_at.isoformat(),
        case.last_seen_at.isoformat(),
    ]


def _export_lines(cases: Any, sort: str) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    now, windows = timezone.now(), selectors.sla_windows()
    cursor = None
    while True:
        page = selectors.case_page(
            cases=cases, sort=sort, cursor=cursor, limit=EXPORT_PAGE, limit_max=EXPORT_PAGE
        )
        for case in page.cases:
            yield writer.writerow(
                _export_row(case, selectors.case_sla_state(case, now=now, windows=windows))
            )
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@require_GET
def case_export(request: HtmxHttpRequest) -> HttpResponseBase:
    """The filtered, sorted cases as CSV, streamed page by page (never all in memory)."""
    access = _access(request)
    names = dict(WorkQueue.objects.values_list("code", "name"))
    try:
        query = _list_query(request, request.GET, access, names)
        if query.sort not in selectors.SORTS:
            raise CaseRefused(f"Sort by {', '.join(selectors.SORTS)}; not {query.sort!r}.")
        cases = selectors.case_queryset(user=request.user, filters=query.filters)
    except CaseActionError as error:
        context, _ = _list_context(request, request.GET)
        context["error"] = str(error)
        return _render(request, "exceptions/queue.html", context, HTTP_STATUS.get(type(error), 400))
    response = StreamingHttpResponse(
        _export_lines(cases, query.sort), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="cases-{stamp}.csv"'
    return response


# --- Bulk actions -------------------------------------------------------------------------------


def _bulk_request(request: HttpRequest) -> tuple[str, dict[int, int], int | None, str]:
    post = request.POST
    revisions: dict[int, int] = {}
    for raw in post.getlist("case"):
        revision = post.get(f"rev-{raw}", "")
        if not raw.isdigit() or not revision.isdigit():
            raise CaseRefused("The selection is not valid; reload the page and select again.")
        revisions[int(raw)] = int(revision)
    assignee = post.get("assignee") or None
    if assignee is not None and not assignee.isdigit():
        raise CaseRefused("Choose whom to assign the cases to from the list.")
    return (
        post.get("action", ""),
        revisions,
        int(assignee) if assignee else None,
        post.get("text", ""),
    )


def _cases_word(n: int) -> str:
    return f"{n} case{'' if n == 1 else 's'}"


def _bulk_message(action: str, revisions: Mapping[int, int], done: list[Any]) -> str:
    selected = len(revisions)
    if action == "retry":
        outcomes = [d for d in done if isinstance(d, actions.RetryOutcome)]
        text = f"Retried {_cases_word(len(outcomes))}: " + "; ".join(
            f"#{o.case_id} {o.summary}" + (" (now resolved)" if o.status != "open" else "")
            for o in outcomes
        )
        idle = sorted(set(revisions) - {o.case_id for o in outcomes})
        if idle:
            text += f". Nothing left to retry on {', '.join(f'#{pk}' for pk in idle)}"
        return text + "."
    if action == "assign":
        case = done[0]
        who = case.assignee.get_username() if case.assignee else "them"
        return f"Assigned {_cases_word(selected)} to {who}."
    words = {
        "take": "You took",
        "unassign": "Unassigned",
        "waive": "Waived",
        "resolve": "Resolved",
    }
    return f"{words.get(action, action.capitalize())} {_cases_word(selected)}."


def _next(request: HttpRequest) -> tuple[str, QueryDict]:
    """The list the bulk form was on (the queue list or my work), with its query."""
    target = urlsplit(request.POST.get("next", ""))
    pages = (reverse("exceptions:queue"), reverse("exceptions:my_work"))
    if target.scheme or target.netloc or target.path not in pages:
        return pages[0], QueryDict()
    return target.path, QueryDict(target.query)


@require_POST
def case_bulk(request: HtmxHttpRequest) -> HttpResponse:
    """One action on the cases selected on a page, all or nothing (exceptions.actions.case_bulk:
    each case revision-checked, so someone who acted first makes it refuse, in words)."""
    _access(request)
    status = 200
    try:
        action, revisions, assignee_id, text = _bulk_request(request)
        done = actions.case_bulk(
            actor=request.user,
            action=action,
            revisions=revisions,
            assignee_id=assignee_id,
            text=text,
        )
        messages.success(request, _bulk_message(action, revisions, done))
    except CaseActionError as error:
        messages.error(request, str(error))
        status = HTTP_STATUS.get(type(error), 400)
    path, params = _next(request)
    if not _partial(request):
        return redirect(_url(path, params))
    if path == reverse("exceptions:my_work"):
        context, _ = _my_work_context(request, params)
        return _render(request, "exceptions/my_work.html", context, status)
    context, list_status = _list_context(request, params)
    return _render(request, "exceptions/queue.html", context, max(status, list_status))


# --- My work ------------------------------------------------------------------------------------


def _my_work_context(request: HttpRequest, params: QueryDict) -> tuple[dict[str, Any], int]:
    access = _access(request)
    path = reverse("exceptions:my_work")
    visible = WorkQueue.objects.order_by("name").values_list("code", "name")
    queues = [(code, name) for code, name in visible if access.allows(code)]
    context: dict[str, Any] = {
        "params": params,
        "sort": params.get("sort") or selectors.DEFAULT_SORT,
        "members": selectors.queue_members(queues=[code for code, _ in queues]),
        "queues": queues,
        "mine": True,
    }
    try:
        page = selectors.case_my_work(
            user=request.user,
            sort=params.get("sort") or selectors.DEFAULT_SORT,
            cursor=params.get("cursor") or None,
        )
        context.update(_page_context(path, params, page))
    except CaseActionError as error:
        context["error"] = str(error)
        return context, HTTP_STATUS.get(type(error), 400)
    return context, 200


@require_GET
def my_work(request: HtmxHttpRequest) -> HttpResponse:
    context, status = _my_work_context(request, request.GET)
    return _render(request, "exceptions/my_work.html", context, status)


# --- The SLA view -------------------------------------------------------------------------------


@require_GET
def sla_overview(request: HtmxHttpRequest) -> HttpResponse:
    """Per queue (or the one `?queue=` names): open, due-soon and breached counts, and the
    breached (longest overdue first) and due-soon cases."""
    access = _access(request)
    queue = request.GET.get("queue") or None
    if queue is not None:
        name = WorkQueue.objects.filter(code=queue).values_list("name", flat=True).first()
        if name is None:
            return render(
                request,
                "exceptions/sla.html",
                {"error": f"There is no queue {queue!r}."},
                status=404,
            )
        if not access.allows(queue):
            raise PermissionDenied(
                f"You do not work in the {name} queue, so you cannot see its cases."
            )
    overview = selectors.queue_sla_overview(user=request.user, queue=queue)
    listed = reverse("exceptions:queue")
    now, windows = timezone.now(), selectors.sla_windows()
    sections = [
        {
            "sla": sla,
            "breached": _rows(sla.breached, now, windows),
            "due_soon": _rows(sla.due_soon, now, windows),
            "breached_url": _url(listed, QueryDict(), queue=sla.queue.code, sla="breached"),
            "due_soon_url": _url(listed, QueryDict(), queue=sla.queue.code, sla="due_soon"),
        }
        for sla in overview
    ]
    return render(
        request,
        "exceptions/sla.html",
        {"sections": sections, "queue": queue, "cap": selectors.COUNT_CAP},
    )
