"""Fix in place (/cases/<id>/fix/): the form the catalogue names for the case's type.

The case page loads it with htmx into its ``<section id="fix">`` (``hx-trigger="load"``) and links
to it as the way there without JavaScript, so GET serves the fragment to htmx and a whole page
(with a link back to the case) otherwise. POST applies the fix through
`integrations.workflows.fixes.fix_apply` and shows the result in words and the case's state:
htmx gets the fragment again, a plain form post is redirected here with a Django message.
What was typed and is wrong comes back with the errors (400); a refusal comes back in its own
words with its status (not found 404, not your queue or not your permission 403, changed since
409, nothing to do 400). A closed case says so instead of showing a form.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from exceptions.catalogue import CaseType
from exceptions.errors import (
    HTTP_STATUS,
    CaseActionError,
    CaseForbidden,
)
from exceptions.forms import FIX_FORMS, LINK_FORMS, FixForm, fix_admin_path
from exceptions.models import ExceptionCase
from exceptions.views import HtmxHttpRequest
from integrations.workflows.fixes import (
    FixTarget,
    fix_actions,
    fix_apply,
    fix_case_get,
    fix_target,
)

TEMPLATE = "exceptions/fix/page.html"
FRAGMENT = f"{TEMPLATE}#fix"


@require_http_methods(["GET", "POST"])
def case_fix(request: HtmxHttpRequest, case_id: int) -> HttpResponse:
    try:
        case, kind, not_permitted = fix_case_get(actor=request.user, case_id=case_id)
    except CaseActionError as error:
        return _refused(request, error)
    if not_permitted:
        # Seen, not theirs to fix: said in words on the case page (a POST is refused 403).
        if request.method == "POST":
            return _refused(request, CaseForbidden(not_permitted))
        template = FRAGMENT if request.htmx else TEMPLATE
        context = {
            "case": case,
            "kind": kind,
            "form_title": kind.fix_form.replace("_", " "),
            "note": not_permitted,
        }
        return render(request, template, context)
    form_class = FIX_FORMS.get(kind.fix_form)
    target = fix_target(case=case)
    if kind.fix_form in LINK_FORMS and case.status == ExceptionCase.Status.OPEN:
        return _links(request, case, kind)
    if case.status != ExceptionCase.Status.OPEN or form_class is None or target is None:
        # A fix posted to a case closed meanwhile: someone got there first (409).
        late = request.method == "POST" and case.status != ExceptionCase.Status.OPEN
        return _render(request, case, kind, target, form=None, status=409 if late else 200)
    if request.method == "GET":
        form = form_class(
            initial=form_class.initial_of(target, case.revision), target=target, auto_id=_ids()
        )
        return _render(request, case, kind, target, form=form)

    form = form_class(request.POST, target=target, auto_id=_ids())
    if not form.is_valid():
        return _render(request, case, kind, target, form=form, status=400)
    try:
        result = fix_apply(
            actor=request.user,
            case_id=case.pk,
            revision=form.cleaned_data["revision"],
            values=form.values(),
        )
    except ValidationError as invalid:
        _errors_onto(form, invalid)
        return _render(request, case, kind, target, form=form, status=400)
    except CaseActionError as error:
        status = HTTP_STATUS.get(type(error), 400)
        if status in (403, 404):
            return _refused(request, error)
        notice = {"ok": False, "text": str(error)}
        case.refresh_from_db()
        if case.status == ExceptionCase.Status.OPEN and status == 409:
            # Changed since: the form again at the current revision, keeping what was typed.
            data = request.POST.copy()
            data["revision"] = str(case.revision)
            form = form_class(data, target=target, auto_id=_ids())
            form.is_valid()
        return _render(request, case, kind, target, form=form, notice=notice, status=status)

    if not request.htmx:
        messages.success(request, result.summary)
        return redirect("exceptions:fix", case_id=case.pk)
    case.refresh_from_db()
    target = fix_target(case=case)
    fresh = (
        form_class(
            initial=form_class.initial_of(target, case.revision), target=target, auto_id=_ids()
        )
        if target is not None
        else None
    )
    return _render(
        request, case, kind, target, form=fresh, notice={"ok": True, "text": result.summary}
    )


def _links(request: HtmxHttpRequest, case: ExceptionCase, kind: CaseType) -> HttpResponse:
    """The forms that are a way to where the cause is fixed, plus Retry (its action posts to
    the case's retry with the revision seen)."""
    found = fix_actions(case=case)
    admin_url = fix_admin_path(kind, found) or ""
    context = {
        "case": case,
        "kind": kind,
        "form_title": kind.fix_form.replace("_", " "),
        "links": {"retry": found.retry, "admin_url": admin_url},
        "built": True,
        "target": None,
        "form": None,
    }
    return render(request, FRAGMENT if request.htmx else TEMPLATE, context)


def _ids() -> str:
    """Fresh element ids for each rendering of a form. htmx "settles" an element of the new
    content whose id the old content had by copying its old attributes over first, style
    included; the browser had given the old inputs an empty style attribute, and writing one is
    refused by the Content-Security-Policy (a violation per field). New ids: nothing to copy."""
    return f"fix-{secrets.token_hex(3)}-%s"


def _render(
    request: HtmxHttpRequest,
    case: ExceptionCase,
    kind: CaseType,
    target: FixTarget | None,
    *,
    form: FixForm | None,
    notice: dict[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "case": case,
        "kind": kind,
        "target": target,
        "form": form,
        "form_title": kind.fix_form.replace("_", " "),
        "built": kind.fix_form in FIX_FORMS,
        "notice": notice,
    }
    return render(request, FRAGMENT if request.htmx else TEMPLATE, context, status=status)


def _refused(request: HtmxHttpRequest, error: CaseActionError) -> HttpResponse:
    status = HTTP_STATUS.get(type(error), 400)
    if not request.htmx:
        if status == 404:
            raise Http404(str(error))
        if status == 403:
            raise PermissionDenied(str(error))
    template = FRAGMENT if request.htmx else TEMPLATE
    return render(request, template, {"refusal": str(error)}, status=status)


def _errors_onto(form: FixForm, invalid: ValidationError) -> None:
    """The write path's refusal (Django's words per field) onto the form's fields."""
    if not hasattr(invalid, "error_dict"):
        form.add_error(None, invalid)
        return
    for name, errors in invalid.message_dict.items():
        form.add_error(name if name in form.fields else None, errors)
