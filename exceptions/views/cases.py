"""One case's page (/cases/<id>/) and the actions on it (POST /cases/<id>/<action>/).

The page shows what `selectors.case_detail` gathers (a fixed number of queries whatever the case
holds). Each action form carries the case's `revision` as the person saw it; the view calls the
`exceptions.actions` function and shows what happened:

- success: with htmx, the case's main region re-rendered with the result on top; without
  JavaScript, a redirect to the case with a Django message;
- a refusal (exceptions/errors.py) in the action's own words, the case re-rendered at its
  current revision: someone acted first 409, the form lacks what the action needs 400 (the form
  keeps what was typed), not your queue 403, no such case 404.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.apps import apps
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import get_script_prefix, reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince, timeuntil
from django.views.decorators.http import require_GET, require_POST

from exceptions import actions, selectors
from exceptions.errors import (
    HTTP_STATUS,
    CaseActionError,
    CaseForbidden,
    CaseNotFound,
    CaseRefused,
)
from exceptions.models import CaseEvent, ExceptionCase
from exceptions.views import HtmxHttpRequest, esc

OPEN = ExceptionCase.Status.OPEN
TEMPLATE = "exceptions/case.html"
# The region every action re-renders (template_partials' partial in case.html).
MAIN = f"{TEMPLATE}#main"
REFUSED = "exceptions/_case_refused.html"

ACTIONS = (
    "retry",
    "retry-group",
    "waive",
    "assign",
    "reassign",
    "take",
    "unassign",
    "comment",
    "resolve",
)
# What the page shows of a payload or a vendor's answer: 4,000 characters is a screenful; the
# API (/api/v1/cases/<id>/) has the whole of it.
SHOWN_CHARS = 4_000


# --- The page -------------------------------------------------------------------------------------


@require_GET
def case_detail(request: HtmxHttpRequest, case_id: int) -> HttpResponse:
    try:
        detail = selectors.case_detail(user=request.user, case_id=case_id)
    except CaseNotFound as error:
        raise Http404(str(error)) from None
    except CaseForbidden as error:
        raise PermissionDenied(str(error)) from None
    return render(request, TEMPLATE, _context(request, detail))


@require_POST
def case_action(request: HtmxHttpRequest, case_id: int, action: str) -> HttpResponse:
    if action not in ACTIONS:
        raise Http404(f"There is no action {action!r} on a case.")
    try:
        done = _act(request, case_id, action)
    except CaseActionError as error:
        return _refused(request, case_id, action, error)
    if request.htmx:
        detail = selectors.case_detail(user=request.user, case_id=case_id)
        return render(request, MAIN, _context(request, detail, notice=Notice(done, ok=True)))
    messages.success(request, done)
    return redirect("exceptions:case", case_id=case_id)


def _act(request: HttpRequest, case_id: int, action: str) -> str:
    """Run the action; what it did, in words."""
    post, actor = request.POST, request.user
    if action == "comment":
        actions.case_comment(actor=actor, case_id=case_id, text=post.get("text", ""))
        return "Comment added."
    if action == "retry-group":
        return _group_retried(
            actions.case_retry_group(actor=actor, case_id=case_id, revisions=_revisions(post))
        )
    revision = _revision(post.get("revision"))
    if action == "retry":
        outcome = actions.case_retry(actor=actor, case_id=case_id, revision=revision)
        return f"Retried: {outcome.summary}.{_closed_by_retry(outcome.status)}"
    if action == "waive":
        case = actions.case_waive(
            actor=actor, case_id=case_id, revision=revision, reason=post.get("reason", "")
        )
        return f"Waived: {case.resolution_note}"
    if action == "resolve":
        case = actions.case_resolve_by_hand(
            actor=actor, case_id=case_id, revision=revision, note=post.get("note", "")
        )
        return f"Resolved: {case.resolution_note}"
    if action == "take":
        actions.case_take(actor=actor, case_id=case_id, revision=revision)
        return "You took this case."
    if action == "unassign":
        actions.case_unassign(actor=actor, case_id=case_id, revision=revision)
        return "Unassigned: the case is back in the queue for anyone to take."
    give = actions.case_assign if action == "assign" else actions.case_reassign
    case = give(
        actor=actor,
        case_id=case_id,
        assignee_id=_assignee(post.get("assignee")),
        revision=revision,
    )
    verb = "Assigned" if action == "assign" else "Reassigned"
    return f"{verb} to {case.assignee.get_username() if case.assignee else 'nobody'}."


def _refused(
    request: HtmxHttpRequest, case_id: int, action: str, error: CaseActionError
) -> HttpResponse:
    status = HTTP_STATUS.get(type(error), 400)
    if isinstance(error, CaseNotFound | CaseForbidden):
        if not request.htmx:
            raise (Http404 if status == 404 else PermissionDenied)(str(error))
        return render(request, REFUSED, {"message": str(error)}, status=status)
    # Re-read after the refusal: the page shows the case as it stands now (the action's
    # transaction was rolled back; whoever acted first is in the trail).
    try:
        detail = selectors.case_detail(user=request.user, case_id=case_id)
    except (CaseNotFound, CaseForbidden) as gone:
        if not request.htmx:
            raise Http404(str(gone)) from None
        return render(request, REFUSED, {"message": str(gone)}, status=404)
    notice = Notice(str(error), ok=False, action=action)
    # What the person typed stays in the form they typed it in (a waiver's reason, a comment).
    typed = {key: request.POST.get(key, "") for key in ("reason", "note", "text", "assignee")}
    context = _context(request, detail, notice=notice, typed=typed)
    return render(request, MAIN if request.htmx else TEMPLATE, context, status=status)


# --- Parsing the forms ----------------------------------------------------------------------------

_NO_REVISION = (
    "This form did not say which version of the case you saw; reload the case and try again. "
    "Nothing was done."
)


def _revision(value: str | None) -> int:
    if value is None or not value.isdigit():
        raise CaseRefused(_NO_REVISION)
    return int(value)


def _revisions(post: Any) -> dict[int, int]:
    """The group retry's `rev-<case id>` inputs: each case of the group the person saw."""
    seen = {}
    for key, value in post.items():
        if key.startswith("rev-"):
            case_id = key.removeprefix("rev-")
            if not case_id.isdigit():
                raise CaseRefused(_NO_REVISION)
            seen[int(case_id)] = _revision(value)
    if not seen:
        raise CaseRefused(_NO_REVISION)
    return seen


def _assignee(value: str | None) -> int:
    if value is None or not value.isdigit():
        raise CaseRefused("Choose whom to give the case to; nothing was done.")
    return int(value)


def _closed_by_retry(status: str) -> str:
    return " The case is resolved: nothing is blocked any more." if status != OPEN else ""


def _group_retried(result: actions.GroupRetry) -> str:
    done = "; ".join(f"#{r.case_id}: {r.summary}" for r in result.retried)
    n = len(result.retried)
    words = [f"Retried {n} case{'' if n == 1 else 's'} of the group ({done})."]
    if result.nothing_to_retry:
        words.append(f"Nothing left to retry on {_ids(result.nothing_to_retry)}.")
    if result.not_seen:
        words.append(
            f"Left alone, as they opened after you looked: {_ids(result.not_seen)} "
            "(reload to retry them too)."
        )
    return " ".join(words)


def _ids(ids: list[int]) -> str:
    return ", ".join(f"#{pk}" for pk in ids)


# --- What the template shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """The result of an action (or its refusal) at the top of the case's region."""

    text: str
    ok: bool
    # The action refused: its form shows the message too, next to what was typed.
    action: str = ""


@dataclass(frozen=True)
class Sla:
    state: str  # "ok", "due_soon", "breached", "closed", "none"
    words: str


def sla_of(case: ExceptionCase, *, now: datetime, windows: dict[int, timedelta]) -> Sla:
    """The case's SLA in words: "Breached 3 hours ago", "Due soon: in 2 hours", ..."""
    due = case.sla_due_at
    state = selectors.case_sla_state(case, now=now, windows=windows)
    if due is None:
        return Sla("none", "No SLA")
    if not state:
        return Sla("closed", f"Was due {timezone.localtime(due):%d %b %Y %H:%M}")
    if state == "breached":
        return Sla("breached", f"Breached {timesince(due, now)} ago")
    if state == "due_soon":
        return Sla("due_soon", f"Due soon: in {timeuntil(due, now)}")
    return Sla("ok", f"On time: due in {timeuntil(due, now)}")


PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def pretty(value: Any) -> str:
    """A payload as indented JSON, cut at SHOWN_CHARS."""
    # orjson: a page showing 50 outbox rows and 200 vendor answers indents them in C, several
    # times faster than json's pure-Python indenting encoder.
    text = orjson.dumps(value, option=PRETTY, default=str).decode()
    return _cut(text)


def pretty_text(text: str) -> str:
    """A vendor's answer: indented when it is JSON, as it came otherwise; cut at SHOWN_CHARS."""
    try:
        return pretty(orjson.loads(text))
    except ValueError:
        return _cut(text)


def _cut(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}\n... ({len(text) - SHOWN_CHARS:,} more characters)"


def record_kind(record_type: str) -> str:
    """ "timeentry" -> "Time entry" (the model's own name; no query)."""
    try:
        model = apps.get_model("integrations", record_type)
    except LookupError:
        return record_type
    return str(model._meta.verbose_name).capitalize()


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """An audit row's values as (name, before, after) in words; before is None where the row
    had no value before (a comment's text), after is "" where it has none after."""
    out = []
    for key in [*before, *(key for key in after if key not in before)]:
        was = _value(before[key]) if key in before else None
        now = _value(after[key]) if key in after else ""
        out.append((key.replace("_", " "), was, now))
    return out


def _value(value: Any) -> str:
    if value is None or value == "":
        return "(none)"
    if isinstance(value, dict | list):
        return _cut(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))
    return _cut(str(value))


def _link(url: str | None, text: str) -> str:
    return f'<a href="{esc(url)}">{esc(text)}</a>' if url else esc(text)


def _blocked_row(held: selectors.HeldRecord) -> SafeString:
    """One row of "What is blocked" (templates/exceptions/_case_blocked.html), every value
    escaped by `esc`: a case shows 50, and 50 rows through template tags cost more than their
    queries."""
    record = held.record
    amount = f"{esc(record.currency)} {record.amount:,.2f}" if record.currency else ""
    hours = f"{record.hours:.2f}" if record.hours else ""
    vendors = (
        ", ".join(_link(v.url, f"{v.connection}: {v.external_id}") for v in held.vendor)
        or '<span class="empty">not in any connected system yet</span>'
    )
    return mark_safe(  # noqa: S308 - every value goes through esc
        f"<tr><td>{_link(held.url, str(record))}</td>\n"
        f"<td>{esc(record_kind(record.record_type))}</td>\n"
        f'<td class="num">{amount}</td>\n<td class="num">{hours}</td>\n<td>{vendors}</td></tr>'
    )


def _attempt_row(attempt: selectors.AttemptShown) -> SafeString:
    """One attempt of an outbox row (templates/exceptions/_case_payloads.html), with the
    vendor's answer; a huge case shows 40 of them."""
    at = timezone.localtime(attempt.started_at)
    response = pretty_text(attempt.vendor_response)
    status = "no answer" if attempt.status_code is None else attempt.status_code
    return mark_safe(  # noqa: S308 - every value goes through esc
        f'<tr>\n<td><time datetime="{at.isoformat()}">{at.day} {at.strftime("%b %Y %H:%M:%S")}'
        f'</time><br><span class="meta">{esc(attempt.latency_ms)} ms</span></td>\n'
        f'<td class="num">{esc(status)}</td>\n<td>{esc(attempt.get_outcome_display())}</td>\n'
        f"<td>{esc(attempt.error)}</td>\n"
        f"<td>{f'<pre>{esc(response)}</pre>' if response else ''}</td>\n</tr>"
    )


def _outbox_article(parked: selectors.ParkedRow) -> SafeString:
    """One outbox row parked on the case (templates/exceptions/_case_payloads.html): what was
    mapped, and its attempts with the vendor's answers; a case shows up to ten."""
    row = parked.row
    error = f'<p class="error">{esc(row.last_error)}</p>\n' if row.last_error else ""
    if parked.attempts:
        rows = "".join(_attempt_row(attempt) for attempt in parked.attempts)
        attempts = (
            '<table class="attempts">\n<caption>Attempts, oldest first</caption>\n'
            '<thead><tr><th>When</th><th class="num">Status</th><th>Outcome</th><th>Error</th>'
            "<th>The vendor's response</th></tr></thead>\n"
            f"<tbody>{rows}</tbody>\n</table>"
        )
    else:
        attempts = '<p class="empty">Not attempted yet.</p>'
    return mark_safe(  # noqa: S308 - every value goes through esc
        f'<article class="payload outbox-row" id="outbox-{row.pk}">\n'
        f"<h3>Outbox #{row.pk}: {esc(row.operation)} "
        f'<span class="badge">{esc(row.get_state_display())}</span></h3>\n'
        f'<p class="meta">{esc(row.content_type.model)} {esc(row.object_id)} · '
        f"{esc(row.process)} / {esc(row.step)}</p>\n{error}"
        f"<pre>{esc(pretty(row.payload))}</pre>\n{attempts}\n</article>"
    )


def _group_row(other: ExceptionCase) -> SafeString:
    """Another open case of the root-cause group: a link and its message (up to 20 shown)."""
    message = other.message if len(other.message) <= 160 else f"{other.message[:159]}…"
    return mark_safe(  # noqa: S308 - every value goes through esc
        f'<li><a href="{esc(case_path(other.pk))}">#{other.pk}</a> {esc(message)}</li>'
    )


def case_path(case_id: int) -> str:
    """/cases/<id>/ under the script prefix, without a reverse per link."""
    return f"{_case_prefix(get_script_prefix())}{case_id}/"


@functools.lru_cache(maxsize=8)
def _case_prefix(script_prefix: str) -> str:
    return reverse("exceptions:case", args=[0])[: -len("0/")]


def _trail_row(event: CaseEvent) -> SafeString:
    """One row of the audit trail (templates/exceptions/_case_trail.html), escaped by `esc`."""
    at = timezone.localtime(event.at)
    items = "".join(
        f"<li>{esc(name)}: {'' if before is None else esc(before) + ' → '}{esc(after)}</li>\n"
        for name, before, after in changes(event.before, event.after)
    )
    return mark_safe(  # noqa: S308 - every value goes through esc
        f'<tr><td><time datetime="{at.isoformat()}">{at.day} {at.strftime("%b %Y %H:%M:%S")}'
        f"</time></td>\n<td>{esc(event.actor_label)}</td>\n"
        f"<td>{esc(event.get_action_display())}</td>\n"
        f'<td><ul class="changes">{items}</ul></td></tr>'
    )


def _context(
    request: HttpRequest,
    detail: selectors.CaseDetail,
    *,
    notice: Notice | None = None,
    typed: dict[str, str] | None = None,
) -> dict[str, Any]:
    case = detail.case
    is_open = case.status == OPEN
    return {
        "detail": detail,
        "case": case,
        "title": case.case_type.replace("_", " ").capitalize(),
        "fix_label": detail.kind.fix_form.replace("_", " ") if detail.kind else "the cause",
        "is_open": is_open,
        "sla": sla_of(case, now=timezone.now(), windows=selectors.sla_windows()),
        "amounts": sorted(case.amounts.items()),
        "records": [_blocked_row(held) for held in detail.records],
        "inbound": [(message, pretty(message.payload)) for message in detail.inbound],
        "outbox": [_outbox_article(parked) for parked in detail.outbox],
        "others": [_group_row(other) for other in detail.group[1:]],
        # The case's own path, which its action URLs extend (exceptions/urls.py): one reverse
        # for the page, not two per form.
        "case_url": case_path(case.pk),
        "trail": [_trail_row(event) for event in detail.events],
        "members": selectors.queue_members(queues=[case.queue]) if is_open else [],
        "mine": case.assignee_id == request.user.pk,
        "notice": notice,
        "typed": typed or {},
    }
