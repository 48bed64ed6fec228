"""Rules in the console: three editable tables that decide where data and work go.

- **Ownership rules** (integrations.OwnershipRule): which system owns an object, or one of its
  fields; an inbound change from another system is not applied but becomes a conflict case.
  Checked against the canonical models (integrations/mapping/ownership_rules.py).
- **Case routing** (exceptions.CaseRoute, and the SLA per priority, exceptions.SlaPolicy):
  which queue and priority a case gets by case type, process, legal entity and region (the
  most specific rule wins), and how long each priority has. Checked against the catalogue
  (exceptions/routes.py).
- **ERP routing** (integrations.RoutingRule, role ERP): which ERP connection serves each legal
  entity; the rule without one is the default. Moving an entity from one ERP to another (a
  legacy ERP to the new one) is its own action on the page, a switch with an effective time
  (integrations/services/route_switches.py): the work already under way finishes on the ERP it
  started on, and the page shows what is still in flight on each side until it drains.

Each table: filters, sorts, keyset pages, CSV, an empty state; a row is edited or deleted in
place (htmx: the answer is the row, with the result in words in the page's status line), and
without JavaScript each action is a plain form and a redirect with a message. Every write goes
through its audited service; the page lists the latest changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import django_filters
from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import reswap, retarget

from exceptions.catalogue import CATALOGUE
from exceptions.models import CaseRoute, ExceptionCase, SlaPolicy, WorkQueue
from exceptions.routes import (
    case_route_create,
    case_route_delete,
    case_route_list,
    case_route_update,
    process_choices,
    sla_policy_list,
    sla_policy_update,
)
from integrations import models as m
from integrations import selectors
from integrations.console.access import admin_required
from integrations.console.filters import (
    CaseRouteFilterSet,
    OwnershipRuleFilterSet,
    RoutingRuleFilterSet,
)
from integrations.console.tables import (
    Sort,
    csv_response,
    is_htmx,
    render_page,
    table_page,
    trail_entries,
    url_with,
)
from integrations.mapping.canonical import canonical_model_names
from integrations.mapping.ownership_rules import (
    ownership_fields,
    ownership_rule_create,
    ownership_rule_delete,
    ownership_rule_update,
)
from integrations.services.config_rows import (
    config_row_create,
    config_row_delete,
    config_row_update,
)
from integrations.services.route_switches import (
    route_switch_create,
    route_switch_in_flight,
    route_switch_list,
)

Actor = Any

# --- Forms --------------------------------------------------------------------------------------


class OwnershipRuleForm(forms.Form):
    object_type = forms.ChoiceField(label="Object")
    field = forms.CharField(
        required=False,
        max_length=64,
        label="Field",
        help_text="Empty: the whole object. A field rule overrides the object's.",
    )
    owner_role = forms.ChoiceField(choices=m.SystemRole.choices, label="Owner")
    note = forms.CharField(required=False, max_length=200, label="Note")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["object_type"]).choices = [
            (n, n) for n in canonical_model_names()
        ]
        self.fields["field"].widget.attrs["list"] = "ownership-fields"


def _blank(choices: Sequence[tuple[Any, str]], label: str = "Any") -> list[tuple[Any, str]]:
    return [("", label), *choices]


class CaseRouteForm(forms.Form):
    case_type = forms.ChoiceField(required=False, label="Case type")
    process = forms.ChoiceField(required=False, label="Process")
    legal_entity = forms.ModelChoiceField(
        queryset=m.LegalEntity.objects.order_by("code"),
        required=False,
        label="Legal entity",
        empty_label="Any",
    )
    region = forms.ChoiceField(
        required=False, label="Region", choices=_blank(m.Project.Region.choices)
    )
    queue = forms.ModelChoiceField(
        queryset=WorkQueue.objects.order_by("name"),
        required=False,
        label="Queue",
        empty_label="The catalogue's",
        to_field_name="code",
    )
    priority = forms.TypedChoiceField(
        required=False,
        label="Priority",
        coerce=int,
        empty_value=None,
        choices=_blank(ExceptionCase.Priority.choices, "The catalogue's"),
    )
    note = forms.CharField(required=False, max_length=200, label="Note")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["case_type"]).choices = _blank(
            [(n, n.replace("_", " ")) for n in sorted(CATALOGUE)]
        )
        cast(forms.ChoiceField, self.fields["process"]).choices = _blank(process_choices())


class ErpRouteForm(forms.Form):
    legal_entity = forms.ModelChoiceField(
        queryset=m.LegalEntity.objects.order_by("code"),
        required=False,
        label="Legal entity",
        empty_label="Every other legal entity (the default)",
    )
    connection = forms.ModelChoiceField(
        queryset=m.Connection.objects.filter(role=m.SystemRole.ERP).order_by("name"),
        label="ERP connection",
        empty_label=None,
    )


class RouteSwitchForm(forms.Form):
    legal_entity = forms.ModelChoiceField(
        queryset=m.LegalEntity.objects.order_by("code"),
        required=False,
        label="Legal entity",
        empty_label="The default route (every legal entity without its own)",
    )
    to_connection = forms.ModelChoiceField(
        queryset=m.Connection.objects.filter(role=m.SystemRole.ERP, enabled=True).order_by("name"),
        label="Move to",
        empty_label=None,
    )
    effective_at = forms.DateTimeField(
        required=False,
        label="From",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: now. A later time takes effect at the first billing run after it.",
    )
    note = forms.CharField(required=False, max_length=200, label="Why")


def _hours(value: timedelta) -> Decimal:
    return (Decimal(value.total_seconds()) / 3600).quantize(Decimal("0.01")).normalize()


class SlaPolicyForm(forms.Form):
    resolve_within_hours = forms.DecimalField(
        min_value=Decimal("0.01"), max_digits=8, decimal_places=2, label="Resolve within (hours)"
    )
    due_soon_hours = forms.DecimalField(
        min_value=Decimal("0"), max_digits=8, decimal_places=2, label="Due soon within (hours)"
    )


# --- One table, described once ------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTable:
    """Everything the generic views need to serve one editable table."""

    key: str  # url names: console:<key>s, console:<key>_add, ...
    area: str  # the console nav's
    title: str
    noun: str  # "ownership rule"
    intro: str
    empty: str
    model: type[models.Model]
    rows: Callable[[], Any]  # the queryset, with sort annotations
    filterset: type[django_filters.FilterSet]
    sorts: Sequence[Sort]
    form: type[forms.Form]
    initial: Callable[[Any], dict[str, Any]]
    create: Callable[[Mapping[str, Any], Actor], Any]
    update: Callable[[Any, Mapping[str, Any], Actor], Any]
    delete: Callable[[Any, Actor], None]
    row_template: str
    csv_header: Sequence[str]
    csv_line: Callable[[Any], Sequence[Any]]
    audit_type: str  # AuditEvent.object_type of its rows
    extra: Callable[[], dict[str, Any]] = field(default=lambda: {})
    # What the whole page shows besides the table (not read for one row's answer).
    page: Callable[[], dict[str, Any]] = field(default=lambda: {})

    def url(self, name: str, *args: Any) -> str:
        return reverse(f"console:{self.key}_{name}", args=args)

    @property
    def list_url(self) -> str:
        return reverse(f"console:{self.key}s")

    def links(self, pk: int) -> dict[str, str]:
        return {
            "show": self.url("row", pk),
            "edit": self.url("edit", pk),
            "delete": self.url("delete", pk),
        }


def _ownership_initial(rule: m.OwnershipRule) -> dict[str, Any]:
    return {
        "object_type": rule.object_type,
        "field": rule.field,
        "owner_role": rule.owner_role,
        "note": rule.note,
    }


def _route_initial(route: CaseRoute) -> dict[str, Any]:
    return {
        "case_type": route.case_type,
        "process": route.process,
        "legal_entity": route.legal_entity_id,
        "region": route.region,
        "queue": route.queue_id,
        "priority": route.priority,
        "note": route.note,
    }


def _erp_initial(rule: m.RoutingRule) -> dict[str, Any]:
    return {"legal_entity": rule.legal_entity_id, "connection": rule.connection_id}


def _erp_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "role": m.SystemRole.ERP,
        "legal_entity": data.get("legal_entity"),
        "connection": data["connection"],
    }


def _ownership_extra() -> dict[str, Any]:
    return {
        "field_names": sorted(
            {name for model in canonical_model_names() for name in ownership_fields(model)}
        )
    }


def _case_route_extra() -> dict[str, Any]:
    return {
        "sla_rows": [
            {
                "policy": p,
                "resolve_hours": _hours(p.resolve_within),
                "due_hours": _hours(p.due_soon_within),
            }
            for p in sla_policy_list()
        ],
        "sla_trail": trail_entries(selectors.audit_trail(object_type="slapolicy", limit=5)),
    }


def _erp_extra() -> dict[str, Any]:
    default = (
        m.RoutingRule.objects.filter(role=m.SystemRole.ERP, legal_entity__isnull=True)
        .select_related("connection")
        .first()
    )
    routed = m.RoutingRule.objects.filter(role=m.SystemRole.ERP, legal_entity__isnull=False)
    return {
        "default_route": default,
        "unrouted_entities": m.LegalEntity.objects.exclude(
            pk__in=routed.values("legal_entity")
        ).count(),
        "erp_connections": m.Connection.objects.filter(role=m.SystemRole.ERP).count(),
    }


def _erp_page() -> dict[str, Any]:
    """The switches between ERPs, newest first, with the work still in flight on each side."""
    switches = route_switch_list(limit=10)
    flights = route_switch_in_flight(switches)
    return {
        "switch_form": RouteSwitchForm(),
        "switch_url": reverse("console:erp_route_switch"),
        "switches": [{"switch": s, **flights[s.pk]} for s in switches],
        "switch_trail": trail_entries(selectors.audit_trail(object_type="routeswitch", limit=5)),
    }


OWNERSHIP = RuleTable(
    key="ownership_rule",
    area="ownership",
    title="Ownership rules",
    noun="ownership rule",
    intro="Which system owns each object, or one field of it. A change another system sends "
    "to an owned value is not applied: it opens an ownership conflict case instead. A field "
    "rule overrides its object's; an object with no rule may be changed by any system.",
    empty="No ownership rules: every system's changes are applied to every field.",
    model=m.OwnershipRule,
    rows=lambda: m.OwnershipRule.objects.all(),
    filterset=OwnershipRuleFilterSet,
    sorts=[
        Sort("object", "Object and field", ("object_type", "field")),
        Sort("owner", "Owner", ("owner_role", "object_type", "field")),
        Sort("changed", "Last changed", ("-updated_at",)),
    ],
    form=OwnershipRuleForm,
    initial=_ownership_initial,
    create=lambda data, actor: ownership_rule_create(data=data, actor=actor),
    update=lambda row, data, actor: ownership_rule_update(rule=row, data=data, actor=actor),
    delete=lambda row, actor: ownership_rule_delete(rule=row, actor=actor),
    row_template="console/_ownership_row.html",
    csv_header=["id", "object", "field", "owner", "note", "updated_at"],
    csv_line=lambda r: [
        r.pk,
        r.object_type,
        r.field,
        r.owner_role,
        r.note,
        r.updated_at.isoformat(),
    ],
    audit_type="ownershiprule",
    extra=_ownership_extra,
)

CASE_ROUTES = RuleTable(
    key="case_route",
    area="case_routes",
    title="Case routing",
    noun="routing rule",
    intro="Which queue and priority a new case gets. The most specific matching rule wins "
    "(the most conditions set; on a tie case type, then process, legal entity, region); an "
    "empty queue or priority keeps the catalogue's. Open cases stay where they are.",
    empty="No routing rules: every case goes to the queue and priority its case type names in "
    "the catalogue.",
    model=CaseRoute,
    rows=case_route_list,
    filterset=CaseRouteFilterSet,
    sorts=[
        Sort("scope", "Case type and process", ("case_type", "process", "entity_code", "region")),
        Sort("queue", "Queue", ("queue_code", "priority_sort")),
        Sort("priority", "Priority", ("priority_sort", "queue_code")),
    ],
    form=CaseRouteForm,
    initial=_route_initial,
    create=lambda data, actor: case_route_create(data=data, actor=actor),
    update=lambda row, data, actor: case_route_update(route=row, data=data, actor=actor),
    delete=lambda row, actor: case_route_delete(route=row, actor=actor),
    row_template="console/_case_route_row.html",
    csv_header=[
        "id",
        "case_type",
        "process",
        "legal_entity",
        "region",
        "queue",
        "priority",
        "note",
    ],
    csv_line=lambda r: [
        r.pk,
        r.case_type,
        r.process,
        r.legal_entity.code if r.legal_entity else "",
        r.region,
        r.queue_id or "",
        f"P{r.priority}" if r.priority else "",
        r.note,
    ],
    audit_type="caseroute",
    extra=_case_route_extra,
)

ERP_ROUTES = RuleTable(
    key="erp_route",
    area="erp_routes",
    title="ERP routing",
    noun="ERP route",
    intro="Which ERP connection gets each legal entity's invoices (a legacy and a new ERP side "
    "by side). The route without a legal entity is the default for every other one; a route "
    "to a disabled connection is skipped.",
    empty="No ERP routes: no invoice can be sent, because no ERP connection is chosen for any "
    "legal entity.",
    model=m.RoutingRule,
    rows=selectors.routing_rule_list,
    filterset=RoutingRuleFilterSet,
    sorts=[
        Sort("entity", "Legal entity", ("entity_code",)),
        Sort("connection", "Connection", ("connection_name", "entity_code")),
    ],
    form=ErpRouteForm,
    initial=_erp_initial,
    create=lambda data, actor: config_row_create(
        model=m.RoutingRule, data=_erp_data(data), actor=actor
    ),
    update=lambda row, data, actor: config_row_update(row=row, data=_erp_data(data), actor=actor),
    delete=lambda row, actor: config_row_delete(row=row, actor=actor),
    row_template="console/_erp_route_row.html",
    csv_header=["id", "legal_entity", "legal_entity_name", "connection", "connection_enabled"],
    csv_line=lambda r: [
        r.pk,
        r.legal_entity.code if r.legal_entity else "(default)",
        r.legal_entity.name if r.legal_entity else "",
        r.connection.name,
        "yes" if r.connection.enabled else "no",
    ],
    audit_type="routingrule",
    extra=_erp_extra,
    page=_erp_page,
)

TABLES = (OWNERSHIP, CASE_ROUTES, ERP_ROUTES)


# --- The views, once for every table ------------------------------------------------------------


def _get(table: RuleTable, pk: int) -> Any:
    row = table.rows().filter(pk=pk).first()
    if row is None:
        raise Http404(f"There is no {table.noun} {pk}: someone may have deleted it.")
    return row


def _describe(table: RuleTable, row: Any) -> str:
    return f"{table.noun} #{row.pk} ({row})"


def _service_errors(form: forms.Form, error: ValidationError) -> None:
    if not hasattr(error, "error_dict"):
        form.add_error(None, error.messages)
        return
    for name, texts in error.message_dict.items():
        form.add_error(name if name in form.fields else None, texts)


def _list_context(table: RuleTable, request: HttpRequest, params: Any) -> dict[str, Any]:
    filterset = table.filterset(params, queryset=table.rows())
    context: dict[str, Any] = {
        "table": table,
        "filterset": filterset,
        "list_path": table.list_url,
        "add_url": table.url("add"),
        "trail": _trail(table),
        **table.extra(),
        **table.page(),
    }
    if not filterset.is_valid():
        context["error"] = "These filters are not valid: see the form above."
        return context
    page = table_page(filterset.qs, path=table.list_url, params=params, sorts=table.sorts)
    export = params.copy()
    export.pop("cursor", None)
    context.update(
        {
            "page": page,
            "rows": [{"row": r, "links": table.links(r.pk)} for r in page.rows],
            "export_url": url_with(table.list_url, export, format="csv"),
            "filtered": any(v for k, v in params.items() if k in filterset.filters),
            "next": url_with(table.list_url, params),
        }
    )
    return context


def _trail(table: RuleTable) -> list[dict[str, Any]]:
    return trail_entries(selectors.audit_trail(object_type=table.audit_type, limit=10))


def _rows_iter(rows: Any) -> Iterator[Any]:
    yield from rows.iterator(chunk_size=500)


def _list_view(table: RuleTable) -> Callable[[HttpRequest], HttpResponseBase]:
    @require_http_methods(["GET"])
    @admin_required
    def view(request: HttpRequest) -> HttpResponseBase:
        params = request.GET.copy()
        download = params.pop("format", [""])[-1]
        context = _list_context(table, request, params)
        if "error" in context:
            return render_page(
                request, "console/rules.html", context, partial="results", status=400
            )
        if download == "csv":
            filterset = context["filterset"]
            return csv_response(
                name=table.key.replace("_", "-") + "s",
                header=table.csv_header,
                rows=_rows_iter(filterset.qs.order_by(*table.sorts[0].order_by())),
                line=table.csv_line,
            )
        context["add_form"] = table.form()
        return render_page(request, "console/rules.html", context, partial="results")

    return view


def _back(request: HttpRequest, table: RuleTable) -> str:
    target = request.POST.get("next", "")
    return target if target.startswith(table.list_url) else table.list_url


def _add_view(table: RuleTable) -> Callable[[HttpRequest], HttpResponse]:
    @require_POST
    @admin_required
    def view(request: HttpRequest) -> HttpResponse:
        form = table.form(request.POST)
        row = None
        if form.is_valid():
            try:
                row = table.create(form.cleaned_data, request.user)
            except ValidationError as error:
                _service_errors(form, error)
            except IntegrityError:
                form.add_error(None, "Someone added the same rule meanwhile: look again.")
        if row is None:
            notice = f"The {table.noun} was not added: see the form."
            if not is_htmx(request):
                context = _list_context(table, request, request.GET.copy())
                context.update({"add_form": form, "notice": notice, "notice_ok": False})
                return render_page(request, "console/rules.html", context, status=400)
            response = render_page(
                request,
                "console/_rule_add.html",
                {
                    "table": table,
                    "add_form": form,
                    "add_url": table.url("add"),
                    "notice": notice,
                    "notice_ok": False,
                    "oob": True,
                    "next": _back(request, table),
                    **table.extra(),
                },
                status=400,
            )
            return reswap(retarget(response, "#rule-add"), "outerHTML")
        notice = f"Added {_describe(table, row)}."
        if not is_htmx(request):
            messages.success(request, notice)
            return redirect(_back(request, table))
        # The table again (the new row where the sort puts it), the add form empty again.
        params = _back(request, table).partition("?")[2]
        context = _list_context(table, request, _query(params))
        context.update(
            {
                # The template puts the notice and the trail out of band itself; the rows
                # in between must not.
                "add_form": table.form(),
                "notice": notice,
                "notice_ok": True,
                "highlight": row.pk,
            }
        )
        return render_page(request, "console/_rule_results_after_add.html", context)

    return view


def _query(query: str) -> QueryDict:
    return QueryDict(query, mutable=True)


def _row_view(table: RuleTable) -> Callable[[HttpRequest, int], HttpResponse]:
    @require_http_methods(["GET"])
    @admin_required
    def view(request: HttpRequest, pk: int) -> HttpResponse:
        if not is_htmx(request):
            return redirect(table.list_url)
        row = _get(table, pk)
        return render_page(
            request,
            table.row_template,
            {"table": table, "item": {"row": row, "links": table.links(pk)}, **table.extra()},
        )

    return view


def _edit_view(table: RuleTable) -> Callable[[HttpRequest, int], HttpResponse]:
    @require_http_methods(["GET", "POST"])
    @admin_required
    def view(request: HttpRequest, pk: int) -> HttpResponse:
        row = _get(table, pk)
        next_url = request.POST.get("next") or request.GET.get("next") or table.list_url
        if request.method == "GET":
            form = table.form(initial=table.initial(row), prefix=f"r{pk}")
            return _edit_answer(request, table, row, form, next_url)
        form = table.form(request.POST, prefix=f"r{pk}")
        saved = None
        if form.is_valid():
            try:
                saved = table.update(row, form.cleaned_data, request.user)
            except ValidationError as error:
                _service_errors(form, error)
            except IntegrityError:
                form.add_error(None, "Someone changed a rule meanwhile: look again.")
        if saved is None:
            return _edit_answer(
                request,
                table,
                _get(table, pk),
                form,
                next_url,
                notice=f"The {table.noun} #{pk} was not changed: see its row.",
                status=400,
            )
        notice = f"Saved {_describe(table, saved)}."
        if not is_htmx(request):
            messages.success(request, notice)
            return redirect(_back(request, table))
        fresh = _get(table, pk)
        return render_page(
            request,
            table.row_template,
            {
                "table": table,
                "item": {"row": fresh, "links": table.links(pk)},
                "notice": notice,
                "notice_ok": True,
                "oob": True,
                "trail": _trail(table),
                "trail_oob": True,
                **table.extra(),
            },
        )

    return view


def _edit_answer(
    request: HttpRequest,
    table: RuleTable,
    row: Any,
    form: forms.Form,
    next_url: str,
    *,
    notice: str = "",
    status: int = 200,
) -> HttpResponse:
    form_id = f"edit-{table.key}-{row.pk}"
    for bound in form:
        bound.field.widget.attrs["form"] = form_id
    context = {
        "table": table,
        "item": {"row": row, "links": table.links(row.pk)},
        "form": form,
        "form_id": form_id,
        "editing": True,
        "next": next_url,
        "notice": notice,
        "notice_ok": False,
        "oob": bool(notice),
        **table.extra(),
    }
    if is_htmx(request):
        return render_page(request, table.row_template, context, status=status)
    return render_page(request, "console/rule_edit.html", context, status=status)


def _delete_view(table: RuleTable) -> Callable[[HttpRequest, int], HttpResponse]:
    @require_POST
    @admin_required
    def view(request: HttpRequest, pk: int) -> HttpResponse:
        row = _get(table, pk)
        words = _describe(table, row)
        table.delete(row, request.user)
        notice = f"Deleted {words}."
        if not is_htmx(request):
            messages.success(request, notice)
            return redirect(_back(request, table))
        return render_page(
            request,
            "console/_deleted.html",
            {"notice": notice, "notice_ok": True, "trail": _trail(table)},
        )

    return view


# --- SLA per priority (four rows, edited in place) ----------------------------------------------


@require_POST
@admin_required
def sla_policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    policy = SlaPolicy.objects.filter(pk=pk).first()
    if policy is None:
        raise Http404("There is no such SLA policy.")
    form = SlaPolicyForm(request.POST, prefix=f"sla{pk}")
    notice, ok, status = "", False, 400
    if form.is_valid():
        try:
            policy = sla_policy_update(
                policy=policy,
                resolve_within=timedelta(hours=float(form.cleaned_data["resolve_within_hours"])),
                due_soon_within=timedelta(hours=float(form.cleaned_data["due_soon_hours"])),
                actor=request.user,
            )
        except ValidationError as error:
            _service_errors_sla(form, error)
        else:
            notice, ok, status = (
                f"P{policy.priority} cases are now to be resolved within "
                f"{_hours(policy.resolve_within)} h (due soon in the last "
                f"{_hours(policy.due_soon_within)} h).",
                True,
                200,
            )
    if not ok:
        errors = " ".join(str(e) for v in form.errors.values() for e in v)
        notice = f"The P{policy.priority} SLA was not changed: {errors}"
    if not is_htmx(request):
        (messages.success if ok else messages.error)(request, notice)
        return redirect(CASE_ROUTES.list_url)
    policy.refresh_from_db()
    return render_page(
        request,
        "console/_sla_row.html",
        {
            "sla": {
                "policy": policy,
                "resolve_hours": _hours(policy.resolve_within),
                "due_hours": _hours(policy.due_soon_within),
                "form": None if ok else form,
            },
            "notice": notice,
            "notice_ok": ok,
            "oob": True,
            "trail": trail_entries(selectors.audit_trail(object_type="slapolicy", limit=5)),
            "trail_oob": True,
        },
        status=status,
    )


def _service_errors_sla(form: SlaPolicyForm, error: ValidationError) -> None:
    names = {"resolve_within": "resolve_within_hours", "due_soon_within": "due_soon_hours"}
    for name, texts in getattr(error, "message_dict", {"__all__": error.messages}).items():
        form.add_error(names.get(name), texts)


# --- Switching a legal entity to another ERP ----------------------------------------------------


@require_POST
@admin_required
def erp_route_switch(request: HttpRequest) -> HttpResponse:
    """Record a switch (audited) and go back to the ERP routing page, which shows it with the
    work in flight on each side; a refused switch is shown with its form and the reason."""
    form = RouteSwitchForm(request.POST)
    switch = None
    if form.is_valid():
        try:
            switch = route_switch_create(
                legal_entity=form.cleaned_data["legal_entity"],
                to_connection=form.cleaned_data["to_connection"],
                effective_at=form.cleaned_data["effective_at"],
                note=form.cleaned_data["note"],
                actor=request.user,
            )
        except ValidationError as error:
            _service_errors(form, error)
    if switch is None:
        context = _list_context(ERP_ROUTES, request, QueryDict(mutable=True))
        context.update(
            {
                "add_form": ERP_ROUTES.form(),
                "switch_form": form,
                "notice": "The switch was not recorded: see its form.",
                "notice_ok": False,
            }
        )
        return render_page(request, "console/rules.html", context, status=400)
    where = switch.legal_entity.code if switch.legal_entity else "The default route"
    source = switch.from_connection.name if switch.from_connection else "no ERP"
    when = "now" if switch.applied_at else f"from {switch.effective_at:%Y-%m-%d %H:%M}"
    messages.success(
        request,
        f"{where} moves from {source} to {switch.to_connection.name} {when}. Work already "
        f"under way finishes on {source}; new work goes to {switch.to_connection.name}.",
    )
    return redirect(ERP_ROUTES.list_url + "#route-switches")


def _patterns(table: RuleTable, prefix: str) -> list[URLPattern]:
    return [
        path(f"{prefix}/", _list_view(table), name=f"{table.key}s"),
        path(f"{prefix}/add/", _add_view(table), name=f"{table.key}_add"),
        path(f"{prefix}/<int:pk>/", _row_view(table), name=f"{table.key}_row"),
        path(f"{prefix}/<int:pk>/edit/", _edit_view(table), name=f"{table.key}_edit"),
        path(f"{prefix}/<int:pk>/delete/", _delete_view(table), name=f"{table.key}_delete"),
    ]


urlpatterns = [
    *_patterns(OWNERSHIP, "rules/ownership"),
    *_patterns(CASE_ROUTES, "rules/case-routing"),
    *_patterns(ERP_ROUTES, "rules/erp-routing"),
    path("rules/erp-routing/switch/", erp_route_switch, name="erp_route_switch"),
    path("rules/sla/<int:pk>/", sla_policy_edit, name="sla_policy"),
]
