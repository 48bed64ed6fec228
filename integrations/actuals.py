"""Actuals for forecasting (issue 11, item 8): per project and period, approved hours, revenue,
cost and margin, read by the page /actuals/, its CSV and JSON downloads and GET /api/v1/actuals/.

The rules, decided from what the canonical records hold:

- **Periods** are calendar months (default), quarters, or ISO weeks (Monday to Sunday). `from`
  and `to` are widened to whole periods, so a row always covers its whole period. With neither,
  the last 12 months (4 quarters, 13 weeks) up to today. At most three years at a time.
- **Hours** are approved time entries (TimeEntry.approval_state approved), split billable and
  non-billable by the entry's own `billable` flag.
- **Revenue** in the project's currency is the sum of
  - *time*: approved billable time on a time-and-materials or retainer contract
    (Contract.HOURLY_MODELS, the billing run's rule). Time a billing run has taken counts at the
    amount it was billed (its BillingEvent; a waived one counts nothing), time not billed yet at
    the bill rate the billing run would use: the contract's rate card for the worker's role in
    the project's currency, else the firm default for that role and currency. Fixed-fee time
    earns nothing by the hour (its milestones do). Billable time with no contract, or whose role
    has no rate, is counted in `unpriced_hours` and not in revenue: its amount is unknown, and
    it is shown as unknown, never as 0;
  - *milestones* complete or invoiced, at their billed amount (else their amount), in the period
    of their completion (else their due date); a waived billing event counts nothing;
  - *expenses* approved and billable, at their amount (re-billed at cost); waived ones excluded.
- **Cost** is approved hours (billable or not) times the worker's current cost rate in their
  cost currency, plus approved expenses (billable or not) at their amount. A billable expense
  is revenue and cost alike, so it moves revenue but not margin.
- **Margin** is revenue minus cost; margin % is margin over revenue (none when revenue is 0).
- **Currencies**: each part is converted to the project's currency and, separately, to the base
  currency of the project's legal entity, with the rate the billing run accepts
  (integrations/workflows/time_to_erp.py): an ExchangeRate row for the pair in either direction
  (an inverse row divides) dated within FX_RECENT_DAYS. For a period, the latest such rate on or
  before the period's last day (today for the current period): its closing rate. A figure that
  needs a rate that does not exist is None (shown as missing, never as 0) and the row names the
  pair in `missing_rates`; a project with no legal entity has no base currency figures.

All of it is computed in the database: three GROUP BY queries (time by project, period, role
and cost currency; milestones and expenses by project, period and currency) with Trunc
(date_trunc on PostgreSQL), then the projects, rate cards and exchange rates those groups need:
six queries whatever the number of entries. Python prices and converts the groups (a few per
project and period), never single entries.
"""

from __future__ import annotations

import bisect
import csv
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import django_filters
from django import forms
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, PermissionsMixin
from django.db.models import DateField, F, Q, QuerySet, Sum
from django.db.models.functions import Cast, Coalesce, Trunc, TruncDate
from django.utils import timezone

from integrations.models import (
    ApprovalState,
    BillingEvent,
    Contract,
    Customer,
    ExchangeRate,
    Expense,
    LegalEntity,
    Milestone,
    Project,
    RateCard,
    TimeEntry,
)

# Who may read actuals (any one of these): Finance and PMO by their page permission, integration
# admins by theirs (they run the planning tools' feed). Existing permissions rather than a new
# one: the three roles the issue names hold exactly these, Sales ops and Viewers hold none.
ACTUALS_PERMISSIONS = (
    "dashboards.view_finance",
    "dashboards.view_pmo",
    "dashboards.view_integration_admin",
)
# The billing run's window for an exchange rate (time_to_erp.FX_RECENT_DAYS; a test keeps the
# two equal: this module sits below the workflows and cannot import it).
FX_RECENT_DAYS = 35
# Three years of months is 36 periods, of weeks 157: a planning horizon, and a bound on rows.
MAX_SPAN_DAYS = 3 * 366
CENT = Decimal("0.01")
TENTH = Decimal("0.1")
BILLED = (BillingEvent.Status.PENDING, BillingEvent.Status.INVOICED)


class Period:
    MONTH = "month"
    QUARTER = "quarter"
    WEEK = "week"
    CHOICES = [(MONTH, "Month"), (QUARTER, "Quarter"), (WEEK, "Week")]
    # With no `from`, this many periods up to today.
    DEFAULT_COUNT = {MONTH: 12, QUARTER: 4, WEEK: 13}


def actuals_access(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Finance, PMO or an integration admin (superusers hold every permission)."""
    return (
        isinstance(user, PermissionsMixin)
        and user.is_authenticated
        and any(user.has_perm(p) for p in ACTUALS_PERMISSIONS)
    )


# --- Periods ----------------------------------------------------------------------------------


def period_start(day: date, kind: str) -> date:
    if kind == Period.WEEK:
        return day - timedelta(days=day.weekday())
    if kind == Period.QUARTER:
        return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return day.replace(day=1)


def period_next(start: date, kind: str) -> date:
    if kind == Period.WEEK:
        return start + timedelta(days=7)
    months = 3 if kind == Period.QUARTER else 1
    month = start.month - 1 + months
    return date(start.year + month // 12, month % 12 + 1, 1)


def period_end(day: date, kind: str) -> date:
    return period_next(period_start(day, kind), kind) - timedelta(days=1)


def period_label(start: date, kind: str) -> str:
    """2026-01, 2026-Q1, 2026-W03 (ISO week)."""
    if kind == Period.WEEK:
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == Period.QUARTER:
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return f"{start:%Y-%m}"


def _default_start(today: date, kind: str) -> date:
    start = period_start(today, kind)
    for _ in range(Period.DEFAULT_COUNT[kind] - 1):
        start = period_start(start - timedelta(days=1), kind)
    return start


# --- Filters ----------------------------------------------------------------------------------


class ActualsForm(forms.Form):
    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("from"), data.get("to")
        if start and end and end < start:
            self.add_error("to", "The end date is before the start date.")
        elif start and end and (end - start).days > MAX_SPAN_DAYS:
            self.add_error("to", "Choose at most three years at a time.")
        return data


class ActualsFilterSet(django_filters.FilterSet):
    """The page's and the API's filters: the period and range (read by actuals_report), and which
    projects (legal entity, region, customer, project: applied to Project here)."""

    period = django_filters.ChoiceFilter(
        choices=Period.CHOICES, method="_range", empty_label=None, label="Period"
    )
    legal_entity = django_filters.ModelChoiceFilter(
        queryset=LegalEntity.objects.order_by("code"), label="Legal entity"
    )
    region = django_filters.ChoiceFilter(choices=Project.Region.choices, label="Region")
    customer = django_filters.ModelChoiceFilter(
        queryset=Customer.objects.order_by("name"), label="Customer"
    )
    # By code, typed: a firm has thousands of projects, too many for a list to choose from.
    project = django_filters.ModelChoiceFilter(
        queryset=Project.objects.all(),
        to_field_name="code",
        method="_project",
        label="Project code",
        widget=forms.TextInput(attrs={"placeholder": "e.g. P-2001"}),
    )

    class Meta:
        model = Project
        fields = ["period", "legal_entity", "region", "customer", "project"]
        form = ActualsForm

    def _range(self, queryset: QuerySet[Project], name: str, value: Any) -> QuerySet[Project]:
        return queryset  # the period and the dates choose time, not projects

    def _project(self, queryset: QuerySet[Project], name: str, value: Project) -> QuerySet[Project]:
        return queryset.filter(pk=value.pk)


# `from` and `to` are Python keywords: declared here, after the class, with their query names.
ActualsFilterSet.base_filters["from"] = django_filters.DateFilter(
    method="_range", label="From", widget=forms.DateInput(attrs={"type": "date"})
)
ActualsFilterSet.base_filters["to"] = django_filters.DateFilter(
    method="_range", label="To", widget=forms.DateInput(attrs={"type": "date"})
)
PROJECT_FILTERS = ("legal_entity", "region", "customer", "project")
# The form's order: what period, then which projects.
ActualsFilterSet.base_filters = OrderedDict(
    (name, ActualsFilterSet.base_filters[name])
    for name in ("period", "from", "to", *PROJECT_FILTERS)
)


# --- The report -------------------------------------------------------------------------------


@dataclass
class ActualsRow:
    period: str
    period_start: date
    period_end: date
    project: Project
    currency: str
    base_currency: str | None
    billable_hours: Decimal = Decimal("0")
    non_billable_hours: Decimal = Decimal("0")
    unpriced_hours: Decimal = Decimal("0")
    time_revenue: Decimal | None = None
    milestone_revenue: Decimal | None = None
    expense_revenue: Decimal | None = None
    revenue: Decimal | None = None
    labour_cost: Decimal | None = None
    expense_cost: Decimal | None = None
    cost: Decimal | None = None
    margin: Decimal | None = None
    margin_pct: Decimal | None = None
    revenue_base: Decimal | None = None
    cost_base: Decimal | None = None
    margin_base: Decimal | None = None
    missing_rates: list[str] = field(default_factory=list)

    @property
    def hours(self) -> Decimal:
        return self.billable_hours + self.non_billable_hours


@dataclass
class ActualsTotal:
    """The rows of one base currency added up; rows missing a base figure are counted apart."""

    base_currency: str | None
    rows: int = 0
    billable_hours: Decimal = Decimal("0")
    non_billable_hours: Decimal = Decimal("0")
    unpriced_hours: Decimal = Decimal("0")
    revenue_base: Decimal = Decimal("0")
    cost_base: Decimal = Decimal("0")
    margin_base: Decimal = Decimal("0")
    rows_missing: int = 0

    @property
    def hours(self) -> Decimal:
        return self.billable_hours + self.non_billable_hours

    @property
    def margin_pct(self) -> Decimal | None:
        return _pct(self.margin_base, self.revenue_base) if self.rows > self.rows_missing else None


@dataclass
class ActualsReport:
    period: str
    start: date
    end: date
    rows: list[ActualsRow]
    totals: list[ActualsTotal]


def actuals_report(*, filterset: ActualsFilterSet, today: date | None = None) -> ActualsReport:
    """The actuals the (valid) filterset asks for: one row per project and period with anything
    in it, by period then project code, and totals per base currency. Six queries."""
    if not filterset.is_valid():
        raise ValueError("actuals_report needs a valid ActualsFilterSet")
    data = filterset.form.cleaned_data
    today = today or timezone.localdate()
    kind = data.get("period") or Period.MONTH
    start = period_start(data.get("from") or _default_start(today, kind), kind)
    end = period_end(data.get("to") or today, kind)
    projects: QuerySet[Any] | None = None
    if any(data.get(name) for name in PROJECT_FILTERS):
        projects = filterset.qs.order_by().values("pk")

    acc: dict[tuple[int, date], _Acc] = defaultdict(_Acc)
    roles = _add_time(acc, kind, start, end, projects)
    _add_milestones(acc, kind, start, end, projects)
    _add_expenses(acc, kind, start, end, projects)

    by_id = Project.objects.select_related("customer", "legal_entity", "contract").in_bulk(
        {project_id for project_id, _ in acc}
    )
    rates = _rate_cards({p.contract_id for p in by_id.values() if p.contract_id})
    currencies = {p.currency for p in by_id.values()} | {
        p.legal_entity.base_currency for p in by_id.values() if p.legal_entity
    }
    for parts in acc.values():
        currencies |= parts.currencies()
    fx = _FxTable.load(currencies, start - timedelta(days=FX_RECENT_DAYS), min(end, today))

    rows = []
    for project_id, first in sorted(acc, key=lambda k: (k[1], by_id[k[0]].code)):
        project = by_id[project_id]
        parts = acc[(project_id, first)]
        _price_time(parts, project, roles.get((project_id, first), {}), rates)
        on = min(period_end(first, kind), today)
        rows.append(_row(project, kind, first, parts, fx, on))
    return ActualsReport(period=kind, start=start, end=end, rows=rows, totals=_totals(rows))


@dataclass
class _Acc:
    """What one project and period holds before it is priced and converted."""

    billable_hours: Decimal = Decimal("0")
    non_billable_hours: Decimal = Decimal("0")
    unpriced_hours: Decimal = Decimal("0")
    # currency -> amount
    time_revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    milestone_revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    expense_revenue: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    labour_cost: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    expense_cost: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def parts(self) -> tuple[dict[str, Decimal], ...]:
        return (
            self.time_revenue,
            self.milestone_revenue,
            self.expense_revenue,
            self.labour_cost,
            self.expense_cost,
        )

    def currencies(self) -> set[str]:
        return {currency for part in self.parts() for currency in part}


def _trunc(column: str, kind: str) -> Cast:
    # date_trunc answers a timestamp; cast back to a date in SQL, so the driver reads tens of
    # thousands of plain dates rather than parsing as many time-zoned timestamps (0.5 s at 1M).
    return Cast(Trunc(column, kind, output_field=DateField()), DateField())


def _in_range(
    rows: QuerySet[Any], column: str, start: date, end: date, projects: QuerySet[Any] | None
) -> QuerySet[Any]:
    rows = rows.filter(**{f"{column}__gte": start, f"{column}__lte": end})
    return rows.filter(project_id__in=projects) if projects is not None else rows


def _add_time(
    acc: dict[tuple[int, date], _Acc],
    kind: str,
    start: date,
    end: date,
    projects: QuerySet[Any] | None,
) -> dict[tuple[int, date], dict[str, Decimal]]:
    """Hours, cost and billed revenue into `acc`; returns the unbilled billable hours per
    project, period and role, for _price_time."""
    billed = Q(billing_event__status__in=BILLED)
    groups = (
        _in_range(
            TimeEntry.objects.filter(approval_state=ApprovalState.APPROVED),
            "date",
            start,
            end,
            projects,
        )
        .annotate(period=_trunc("date", kind))
        .values(
            "project_id",
            "period",
            "resource__role",
            "resource__cost_currency",
            "billing_event__currency",
        )
        .annotate(
            billable_sum=Sum("hours", filter=Q(billable=True)),
            non_billable_sum=Sum("hours", filter=Q(billable=False)),
            unbilled_sum=Sum("hours", filter=Q(billable=True, billing_event__isnull=True)),
            billed_sum=Sum("billing_event__amount", filter=billed),
            cost_sum=Sum(F("hours") * F("resource__cost_rate")),
        )
        .order_by()
    )
    unbilled: dict[tuple[int, date], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for g in groups:
        key = (g["project_id"], g["period"])
        parts = acc[key]
        parts.billable_hours += g["billable_sum"] or 0
        parts.non_billable_hours += g["non_billable_sum"] or 0
        parts.labour_cost[g["resource__cost_currency"]] += g["cost_sum"] or 0
        if g["billed_sum"] is not None:
            parts.time_revenue[g["billing_event__currency"]] += g["billed_sum"]
        if g["unbilled_sum"]:
            unbilled[key][g["resource__role"]] += g["unbilled_sum"]
    return unbilled


def _add_milestones(
    acc: dict[tuple[int, date], _Acc],
    kind: str,
    start: date,
    end: date,
    projects: QuerySet[Any] | None,
) -> None:
    earned = (
        Milestone.objects.filter(status__in=[Milestone.Status.COMPLETE, Milestone.Status.INVOICED])
        .filter(Q(billing_event__isnull=True) | Q(billing_event__status__in=BILLED))
        .annotate(on=Coalesce(TruncDate("completed_at"), F("due_date")))
    )
    groups = (
        _in_range(earned, "on", start, end, projects)
        .annotate(period=_trunc("on", kind))
        .values("project_id", "period", cur=Coalesce("billing_event__currency", "currency"))
        .annotate(earned=Sum(Coalesce("billing_event__amount", "amount")))
        .order_by()
    )
    for g in groups:
        acc[(g["project_id"], g["period"])].milestone_revenue[g["cur"]] += g["earned"]


def _add_expenses(
    acc: dict[tuple[int, date], _Acc],
    kind: str,
    start: date,
    end: date,
    projects: QuerySet[Any] | None,
) -> None:
    approved = Expense.objects.filter(approval_state=ApprovalState.APPROVED)
    rebilled = Q(billable=True) & (
        Q(billing_event__isnull=True) | Q(billing_event__status__in=BILLED)
    )
    groups = (
        _in_range(approved, "date", start, end, projects)
        .annotate(period=_trunc("date", kind))
        .values("project_id", "period", "currency")
        .annotate(cost_sum=Sum("amount"), revenue_sum=Sum("amount", filter=rebilled))
        .order_by()
    )
    for g in groups:
        parts = acc[(g["project_id"], g["period"])]
        parts.expense_cost[g["currency"]] += g["cost_sum"]
        if g["revenue_sum"] is not None:
            parts.expense_revenue[g["currency"]] += g["revenue_sum"]


def _rate_cards(contract_ids: set[int]) -> dict[tuple[int | None, str, str], Decimal]:
    cards = RateCard.objects.filter(Q(contract_id__in=contract_ids) | Q(contract__isnull=True))
    return {
        (contract_id, role, currency): rate
        for contract_id, role, currency, rate in cards.values_list(
            "contract_id", "role", "currency", "bill_rate"
        )
    }


def _price_time(
    parts: _Acc,
    project: Project,
    unbilled: Mapping[str, Decimal],
    rates: Mapping[tuple[int | None, str, str], Decimal],
) -> None:
    """Unbilled billable hours at the bill rate the billing run would use (its _RateBook)."""
    contract = project.contract
    if contract is not None and contract.billing_model not in Contract.HOURLY_MODELS:
        return  # fixed fee: billed by milestone, not by the hour
    for role, hours in unbilled.items():
        rate = None
        if contract is not None:
            rate = rates.get((contract.pk, role, project.currency))
            if rate is None:
                rate = rates.get((None, role, project.currency))
        if rate is None:
            parts.unpriced_hours += hours
        else:
            parts.time_revenue[project.currency] += hours * rate


class _FxTable:
    """Exchange rates by pair, each pair's rows by date; either direction counts (the billing
    run's rule), the latest one on or before the day within FX_RECENT_DAYS."""

    def __init__(self, rows: Iterable[tuple[str, str, date, Decimal]]) -> None:
        self.by_pair: dict[tuple[str, str], tuple[list[date], list[Decimal]]] = {}
        for base, quote, on, rate in sorted(rows, key=lambda r: r[2]):
            for pair, value in (((base, quote), rate), ((quote, base), 1 / rate)):
                days, values = self.by_pair.setdefault(pair, ([], []))
                if days and days[-1] == on:
                    continue  # a direct row and an inverse one on one day: the first read wins
                days.append(on)
                values.append(value)

    @classmethod
    def load(cls, currencies: set[str], earliest: date, latest: date) -> _FxTable:
        rows = ExchangeRate.objects.filter(
            base_currency__in=currencies,
            quote_currency__in=currencies,
            date__gte=earliest,
            date__lte=latest,
        ).order_by("date", "base_currency", "quote_currency")
        return cls(rows.values_list("base_currency", "quote_currency", "date", "rate"))

    def rate(self, source: str, target: str, on: date) -> Decimal | None:
        if source == target:
            return Decimal("1")
        days, values = self.by_pair.get((source, target), ([], []))
        index = bisect.bisect_right(days, on) - 1
        if index < 0 or days[index] < on - timedelta(days=FX_RECENT_DAYS):
            return None
        return values[index]

    def convert(
        self, amounts: Mapping[str, Decimal], target: str, on: date, missing: set[str]
    ) -> Decimal | None:
        """The sum of `amounts` (currency -> amount) in `target`; None, with the pairs added to
        `missing`, when a rate is missing."""
        if not amounts:
            return Decimal("0.00")
        total = Decimal("0")
        complete = True
        for currency, amount in amounts.items():
            rate = self.rate(currency, target, on)
            if rate is None:
                missing.add(f"{currency}/{target}")
                complete = False
            else:
                total += amount * rate
        return total.quantize(CENT, ROUND_HALF_UP) if complete else None


def _add(*values: Decimal | None) -> Decimal | None:
    total = Decimal("0")
    for value in values:
        if value is None:
            return None
        total += value
    return total


def _sub(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return None if a is None or b is None else a - b


def _pct(margin: Decimal | None, revenue: Decimal | None) -> Decimal | None:
    if margin is None or not revenue:
        return None
    return (margin * 100 / revenue).quantize(TENTH, ROUND_HALF_UP)


def _row(
    project: Project, kind: str, first: date, parts: _Acc, fx: _FxTable, on: date
) -> ActualsRow:
    currency = project.currency
    base = project.legal_entity.base_currency if project.legal_entity else None
    missing: set[str] = set()
    row = ActualsRow(
        period=period_label(first, kind),
        period_start=first,
        period_end=period_end(first, kind),
        project=project,
        currency=currency,
        base_currency=base,
        billable_hours=parts.billable_hours,
        non_billable_hours=parts.non_billable_hours,
        unpriced_hours=parts.unpriced_hours,
    )
    row.time_revenue = fx.convert(parts.time_revenue, currency, on, missing)
    row.milestone_revenue = fx.convert(parts.milestone_revenue, currency, on, missing)
    row.expense_revenue = fx.convert(parts.expense_revenue, currency, on, missing)
    row.labour_cost = fx.convert(parts.labour_cost, currency, on, missing)
    row.expense_cost = fx.convert(parts.expense_cost, currency, on, missing)
    row.revenue = _add(row.time_revenue, row.milestone_revenue, row.expense_revenue)
    row.cost = _add(row.labour_cost, row.expense_cost)
    row.margin = _sub(row.revenue, row.cost)
    if base is not None:
        # Straight to the base currency, not through the project's: one rate per part.
        revenue = (parts.time_revenue, parts.milestone_revenue, parts.expense_revenue)
        row.revenue_base = _add(*(fx.convert(p, base, on, missing) for p in revenue))
        cost = (parts.labour_cost, parts.expense_cost)
        row.cost_base = _add(*(fx.convert(p, base, on, missing) for p in cost))
        row.margin_base = _sub(row.revenue_base, row.cost_base)
    if row.margin is not None:
        row.margin_pct = _pct(row.margin, row.revenue)
    else:
        row.margin_pct = _pct(row.margin_base, row.revenue_base)
    row.missing_rates = sorted(missing)
    return row


def _totals(rows: Iterable[ActualsRow]) -> list[ActualsTotal]:
    by_base: dict[str | None, ActualsTotal] = {}
    for row in rows:
        total = by_base.setdefault(row.base_currency, ActualsTotal(base_currency=row.base_currency))
        total.rows += 1
        total.billable_hours += row.billable_hours
        total.non_billable_hours += row.non_billable_hours
        total.unpriced_hours += row.unpriced_hours
        if row.revenue_base is None or row.cost_base is None or row.margin_base is None:
            total.rows_missing += 1
            continue
        total.revenue_base += row.revenue_base
        total.cost_base += row.cost_base
        total.margin_base += row.margin_base
    return sorted(by_base.values(), key=lambda t: (t.base_currency is None, t.base_currency or ""))


# --- Export formats (the page's downloads and the API share them) ----------------------------

COLUMNS = [
    "period",
    "period_start",
    "period_end",
    "project_id",
    "project_code",
    "project_name",
    "customer",
    "legal_entity",
    "region",
    "contract",
    "billing_model",
    "currency",
    "billable_hours",
    "non_billable_hours",
    "hours",
    "unpriced_hours",
    "time_revenue",
    "milestone_revenue",
    "expense_revenue",
    "revenue",
    "labour_cost",
    "expense_cost",
    "cost",
    "margin",
    "margin_pct",
    "base_currency",
    "revenue_base",
    "cost_base",
    "margin_base",
    "missing_rates",
]
# A spreadsheet runs a text cell starting with one of these as a formula (CSV injection): such
# cells get a leading apostrophe. Only names typed by people; numbers may be negative.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = ("project_code", "project_name", "customer", "contract")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(CENT, ROUND_HALF_UP))


def actuals_row_data(row: ActualsRow) -> dict[str, Any]:
    """One row as JSON-ready values (decimals as strings, like the rest of the API; a missing
    figure as None)."""
    project = row.project
    return {
        "period": row.period,
        "period_start": row.period_start.isoformat(),
        "period_end": row.period_end.isoformat(),
        "project_id": project.pk,
        "project_code": project.code,
        "project_name": project.name,
        "customer": project.customer.name,
        "legal_entity": project.legal_entity.code if project.legal_entity else None,
        "region": project.region or None,
        "contract": project.contract.number if project.contract else None,
        "billing_model": project.contract.billing_model if project.contract else None,
        "currency": row.currency,
        "billable_hours": _money(row.billable_hours),
        "non_billable_hours": _money(row.non_billable_hours),
        "hours": _money(row.hours),
        "unpriced_hours": _money(row.unpriced_hours),
        "time_revenue": _money(row.time_revenue),
        "milestone_revenue": _money(row.milestone_revenue),
        "expense_revenue": _money(row.expense_revenue),
        "revenue": _money(row.revenue),
        "labour_cost": _money(row.labour_cost),
        "expense_cost": _money(row.expense_cost),
        "cost": _money(row.cost),
        "margin": _money(row.margin),
        "margin_pct": None if row.margin_pct is None else str(row.margin_pct),
        "base_currency": row.base_currency,
        "revenue_base": _money(row.revenue_base),
        "cost_base": _money(row.cost_base),
        "margin_base": _money(row.margin_base),
        "missing_rates": row.missing_rates,
    }


def actuals_total_data(total: ActualsTotal) -> dict[str, Any]:
    return {
        "base_currency": total.base_currency,
        "rows": total.rows,
        "rows_missing": total.rows_missing,
        "billable_hours": _money(total.billable_hours),
        "non_billable_hours": _money(total.non_billable_hours),
        "hours": _money(total.hours),
        "unpriced_hours": _money(total.unpriced_hours),
        "revenue_base": _money(total.revenue_base),
        "cost_base": _money(total.cost_base),
        "margin_base": _money(total.margin_base),
        "margin_pct": None if total.margin_pct is None else str(total.margin_pct),
    }


def actuals_data(report: ActualsReport) -> dict[str, Any]:
    """The whole report as JSON-ready values: the JSON download and the API's answer."""
    return {
        "period": report.period,
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "rows": [actuals_row_data(row) for row in report.rows],
        "totals": [actuals_total_data(total) for total in report.totals],
    }


def actuals_csv_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(value)
    text = str(value)
    if column in TEXT_COLUMNS and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


class _Echo:
    """A file-like object whose write returns the line (csv.writer into a streaming response)."""

    def write(self, value: str) -> str:
        return value


def actuals_csv_lines(report: ActualsReport) -> Iterator[str]:
    """The CSV download, line by line (a header, then one line per row)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for row in report.rows:
        data = actuals_row_data(row)
        yield writer.writerow([actuals_csv_cell(c, data[c]) for c in COLUMNS])


def actuals_filename(report: ActualsReport, extension: str) -> str:
    return f"actuals-{report.period}-{report.start:%Y%m%d}-{report.end:%Y%m%d}.{extension}"
