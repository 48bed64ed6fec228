"""Workflow 7: reconciliation, per ERP connection, project and month, on a schedule.

What the PSA approved, what Concord billed and what the ERP holds are compared for the legal
entities routed to one ERP connection (its ``reconcile connection <id>`` periodic task,
integrations/services/schedules.py). A legal entity switched from one ERP to another
(RouteSwitch) is compared on both: its postings on the connection that served it when each
invoice was made (the legacy ERP keeps reconciling what it was given before the switch), its
unbilled work on the one that serves it now. Six kinds of gap (GapKind) are looked for:

- posting mismatch: billed time or expenses whose posting does not match the PSA: a billing
  event still not in the ERP ``grace`` hours after it was billed, time changed, rejected or made
  non-billable in the PSA after it was invoiced (hours and amounts, entry by entry);
- invoice mismatch: an invoice whose billing events do not add up to its subtotal;
- invoice missing: billing events marked invoiced on an invoice that never reached the ERP, or
  that the ERP voided;
- closed project, unbilled: a project closed in the PSA with approved billable time never billed
  (PMO's: its status is out of step with its billing);
- time / expenses unbilled: approved billable work not billed within its SLA (days from the
  work date).

Each comparison is one or two set-based queries over the whole scope (GROUP BY in the
database; rows come back only for what differs), never a query per project, so a run costs
the same handful of queries at 100 projects or 10,000. Every gap is stored (ReconciliationGap,
with the figures of both sides) and becomes a case for the owning queue through
``case_open_or_join``, holding the records involved with their hours and amounts: one case per
kind, project and month, joined again by later runs while the gap stands. A record a later run
no longer finds in a gap is taken off its case (``case_records_clear``), so a fixed gap closes
its case by itself.

A fact is reported to a person once:
- time on a closed project that the billing run already holds on its own case (time on an
  inactive project, PMO's, open or waived) stays on that case: the closed-project gap is stored
  with that case and opens none of its own for those entries (only for any the billing run has
  not seen yet);
- a waived case holds for its gap: while a run finds the gap as the last run left it (the same
  figures: expected, found, hours and amount blocked, per currency and measure), the gap is
  stored with the waived case and no case opens again. Once the gap changes (more hours, a
  different amount), a new case opens for the gap as it now is.

Time on fixed-fee contracts is billed by milestone and is not expected on hourly invoices, so
it is left out of the time comparisons, as the billing run leaves it out.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    DateField,
    DecimalField,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Round, TruncDate, TruncMonth
from django.utils import timezone

from exceptions.models import BlockedRecord, ExceptionCase
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_fingerprint, case_open_or_join, case_records_clear
from integrations.models import (
    ApprovalState,
    AuditEvent,
    BillingBasis,
    BillingEvent,
    Connection,
    Expense,
    GapKind,
    GapMeasure,
    Invoice,
    Project,
    RateCard,
    ReconciliationGap,
    ReconciliationRun,
    ReconciliationState,
    RouteSwitch,
    RoutingRule,
    SystemRole,
    TimeEntry,
    billing_basis,
)
from integrations.services.audit import audit_record

logger = logging.getLogger(__name__)

PROCESS = "reconciliation"
STEP = "compare"

# The case type each kind of gap opens (exceptions/catalogue.py): queue, wording, fix.
CASE_TYPES: dict[str, str] = {
    GapKind.POSTING_MISMATCH: "reconciliation_posting_mismatch",
    GapKind.INVOICE_MISMATCH: "reconciliation_invoice_mismatch",
    GapKind.INVOICE_MISSING: "reconciliation_invoice_missing",
    GapKind.CLOSED_UNBILLED: "reconciliation_closed_project_unbilled",
    GapKind.TIME_UNBILLED: "reconciliation_time_unbilled",
    GapKind.EXPENSES_UNBILLED: "reconciliation_expenses_unbilled",
}

# Months of postings and invoices compared (the current one included): a year covers a
# financial year's corrections; older months are closed books. Unbilled work is looked for in
# every month, however old: old unbilled work is what matters most.
MONTHS = 12
# Approved work not billed this many days after the work date is late: a month billed in
# arrears plus the first days of the next month for approvals and the billing run (work done
# on the 1st is invoiced around the 5th of the next month, 35 days later).
UNBILLED_SLA_DAYS = 40
# A billing event not in the ERP this long after it was billed counts as not posted: delivery
# takes seconds; a day covers an ERP outage and a parked invoice's fix without false alarms.
POST_GRACE_HOURS = 24
# The billing run's case for approved time on a project that is not active (PMO's: the same
# fact as a closed project's unbilled time; integrations/workflows/time_to_erp.py _validate).
BILLING_INACTIVE_PROJECT = "time_on_inactive_project"
# Distinguishes this workflow's advisory locks (two-key form, keyed by connection id).
LOCK_SPACE = 0x5245434F  # "RECO"

ZERO = Decimal("0")
CENT = Decimal("0.01")
_DEC = DecimalField(max_digits=16, decimal_places=2)


def months_compared() -> int:
    return int(getattr(settings, "CONCORD_RECONCILIATION_MONTHS", MONTHS))


def unbilled_sla_days() -> int:
    return int(getattr(settings, "CONCORD_UNBILLED_SLA_DAYS", UNBILLED_SLA_DAYS))


def post_grace() -> timedelta:
    return timedelta(hours=float(getattr(settings, "CONCORD_POST_GRACE_HOURS", POST_GRACE_HOURS)))


@dataclass
class _Gap:
    kind: str
    period: date
    project_id: int | None
    currency: str
    measure: str
    invoice_id: int | None = None
    expected: Decimal = ZERO
    found: Decimal = ZERO
    records: list[Blocked] = field(default_factory=list)  # what the gap's own case holds
    # Records of the gap another case already reports (the billing run's), and that case.
    elsewhere: list[Blocked] = field(default_factory=list)
    elsewhere_case_id: int | None = None
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    subject: dict[str, Any] = field(default_factory=dict)

    @property
    def every_record(self) -> list[Blocked]:
        return self.records + self.elsewhere

    @property
    def hours(self) -> Decimal:
        return sum((r.hours for r in self.every_record), ZERO)

    @property
    def amount(self) -> Decimal:
        return sum((r.amount for r in self.every_record), ZERO)

    @property
    def case_type(self) -> str:
        return CASE_TYPES[self.kind]

    def fingerprint(self) -> str:
        """Its case's root cause (after _describe): gaps of one case share it."""
        return case_fingerprint(
            case_type=self.case_type, process=PROCESS, step=STEP, subject=self.subject
        )

    def figures(self) -> tuple[Any, ...]:
        """What a waiver was given for: a change in any of these is a changed gap."""
        return (
            self.kind,
            self.currency,
            self.measure,
            self.invoice_id or 0,
            *(v.quantize(CENT) for v in (self.expected, self.found, self.hours, self.amount)),
        )


# (kind, project, month, currency, invoice, measure): one gap each.
_GapKey = tuple[str, int | None, date, str, int | None, str]


class _Gaps(dict[_GapKey, _Gap]):
    def get_or_add(
        self,
        kind: str,
        project_id: int | None,
        period: date,
        currency: str,
        measure: str,
        invoice_id: int | None = None,
    ) -> _Gap:
        key = (kind, project_id, period, currency, invoice_id, measure)
        gap = self.get(key)
        if gap is None:
            gap = self[key] = _Gap(kind, period, project_id, currency, measure, invoice_id)
        return gap


# --- The run --------------------------------------------------------------------------------------


def reconcile_connection(
    *, connection_id: int, today: date | None = None, actor: Any = None
) -> ReconciliationRun | None:
    """Reconcile the legal entities routed to this ERP connection: find the gaps, store them,
    open or join their cases, and take the records of gaps gone since off theirs. None when the
    connection is not an ERP connection, or another run of it is under way (it does the work).
    A run that fails is stored as failed with its error, and nothing else of it is kept."""
    connection = Connection.objects.filter(pk=connection_id, role=SystemRole.ERP).first()
    if connection is None:
        return None
    today = today or timezone.localdate()
    period_to = today.replace(day=1)
    period_from = _months_back(period_to, months_compared() - 1)
    started = time.monotonic()
    run = ReconciliationRun(
        connection=connection,
        period_from=period_from,
        period_to=period_to,
        started_at=timezone.now(),
    )
    try:
        with transaction.atomic():
            if not _lock(connection.pk):
                return None
            run.save()
            _reconcile(run, connection, today)
            run.state = ReconciliationState.DONE
            run.finished_at = timezone.now()
            run.duration_ms = int((time.monotonic() - started) * 1000)
            run.save()
            audit_record(
                actor=actor,
                action=AuditEvent.Action.CREATE,
                instance=run,
                changes={
                    "connection": [None, connection.pk],
                    "gaps": [None, run.gap_count],
                    "records_cleared": [None, run.records_cleared],
                    "cases_resolved": [None, run.cases_resolved],
                },
            )
    except Exception as error:
        logger.exception("reconciliation of connection %s failed", connection.pk)
        run.pk = None
        run.state = ReconciliationState.FAILED
        run.error = f"{type(error).__name__}: {error}"[:4000]
        run.finished_at = timezone.now()
        run.duration_ms = int((time.monotonic() - started) * 1000)
        run.gap_count = run.cases_touched = run.records_cleared = run.cases_resolved = 0
        run.save(force_insert=True)
    return run


def _lock(connection_id: int) -> bool:
    """One run per connection at a time (beat and a person's retry may meet): the second
    leaves the work to the first. SQLite's single writer serialises runs already."""
    if db.vendor != "postgresql":
        return True
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [LOCK_SPACE, connection_id])
        return bool(cursor.fetchone()[0])


def _months_back(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 - count
    return date(index // 12, index % 12 + 1, 1)


def _reconcile(run: ReconciliationRun, connection: Connection, today: date) -> None:
    scope = _entity_scope(connection)
    posted = _posted_scope(connection, scope)
    gaps = _Gaps()
    if posted is not None:
        now = timezone.now()
        _posting_mismatches(gaps, posted, run.period_from, now - post_grace())
        _invoice_mismatches(gaps, posted, run.period_from)
        _invoices_missing(gaps, posted, run.period_from)
    if scope is not None:
        cutoff = today - timedelta(days=unbilled_sla_days())
        _time_unbilled(gaps, scope, cutoff)
        if getattr(settings, "CONCORD_RECONCILE_EXPENSES", False):
            _expenses_unbilled(gaps, scope, cutoff)
    _describe(gaps.values())
    cleared, resolved = _clear_gone(run, connection, gaps.values())
    waived = _waivers_holding(run, connection, gaps.values())
    stored, touched = [], set()
    for gap in sorted(gaps.values(), key=_order):
        # All of it on the billing run's case already, or on a waived case that still holds.
        case_id = waived.get(gap.fingerprint()) if gap.records else gap.elsewhere_case_id
        if case_id is None:
            case_id = case_open_or_join(
                case_type=gap.case_type,
                subject=gap.subject,
                records=gap.records,
                process=PROCESS,
                step=STEP,
                connection_id=connection.pk,
            ).pk
            touched.add(case_id)
        stored.append(_row(run, gap, case_id))
    ReconciliationGap.objects.bulk_create(stored, batch_size=500)
    run.gap_count = len(stored)
    run.cases_touched = len(touched)
    run.records_cleared, run.cases_resolved = cleared, resolved


def _order(gap: _Gap) -> tuple[str, int, date, str, int]:
    # The order cases are locked in: two runs sharing cases never wait for each other in a circle.
    return (gap.kind, gap.project_id or 0, gap.period, gap.currency, gap.invoice_id or 0)


Scope = Callable[[str], Q]


def _entity_scope(connection: Connection) -> Scope | None:
    """A filter on a legal-entity column: the entities routed to this connection, and, when it
    is the ERP default, every entity routed nowhere else (a record with none included). None
    when nothing is routed to it."""
    rules = list(
        RoutingRule.objects.filter(role=SystemRole.ERP).values_list(
            "legal_entity_id", "connection_id"
        )
    )
    mine = sorted(e for e, c in rules if c == connection.pk and e is not None)
    others = sorted(e for e, c in rules if c != connection.pk and e is not None)
    default = any(e is None and c == connection.pk for e, c in rules)
    if not mine and not default:
        return None

    def on(column: str) -> Q:
        routed = Q(**{f"{column}__in": mine})
        if default:
            # Negated IN on a nullable column keeps the NULLs (Django adds IS NOT NULL inside).
            return routed | ~Q(**{f"{column}__in": others}) if others else Q()
        return routed

    return on


# The column of a billing event that says when its invoice was made: which side of a switch.
_MADE = "invoice__created_at"


def _posted_scope(connection: Connection, now_routed: Scope | None) -> Scope | None:
    """A filter on a billing event's legal-entity column for the postings this connection
    holds: those of the entities routed to it now (`now_routed`), except that for an entity
    switched between ERPs (RouteSwitch, integrations/services/route_switches.py) only the
    invoices made while this connection served it count: the legacy ERP keeps reconciling
    what it was given before the switch, the new one only what came after. (An invoice's ERP
    is decided when it is made; the billing run pins it on its outbox row then.) None when
    this connection holds no postings of any entity."""
    served: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
    switched: set[int] = set()
    history: dict[int, list[tuple[Any, int | None, int]]] = defaultdict(list)
    for switched_id, effective, source, target in (
        RouteSwitch.objects.filter(
            role=SystemRole.ERP, applied_at__isnull=False, legal_entity__isnull=False
        )
        .order_by("effective_at", "pk")
        .values_list("legal_entity_id", "effective_at", "from_connection_id", "to_connection_id")
    ):
        if switched_id is not None:
            history[switched_id].append((effective, source, target))
    for entity_id, steps in history.items():
        switched.add(entity_id)
        start = None
        for until, left, _ in steps:
            if left == connection.pk:
                served[entity_id].append((start, until))
            start = until
        if steps[-1][2] == connection.pk:
            served[entity_id].append((start, None))
    if now_routed is None and not served:
        return None

    def on(column: str) -> Q:
        where = Q(pk__in=[])
        if now_routed is not None:
            where = now_routed(column) & ~Q(**{f"{column}__in": sorted(switched)})
        for entity_id, spans in sorted(served.items()):
            for start, end in spans:
                span = Q(**{column: entity_id})
                if start is not None:
                    span &= Q(**{f"{_MADE}__gte": start})
                if end is not None:
                    span &= Q(**{f"{_MADE}__lt": end})
                where |= span
        return where

    return on


def _month(column: str) -> TruncMonth:
    return TruncMonth(column, output_field=DateField())


# --- Postings: billed work vs the ERP -----------------------------------------------------------


def _posting_mismatches(gaps: _Gaps, scope: Scope, since: date, billed_before: Any) -> None:
    """Billing events of time and expenses due in the ERP (invoiced, or billed more than the
    grace ago and not waived), each compared with its PSA record: one query for those that
    differ, one GROUP BY for the totals of their projects and months."""
    time_ok = Q(
        source=BillingEvent.Source.TIME,
        time_entry__approval_state=ApprovalState.APPROVED,
        time_entry__billable=True,
    )
    expense_ok = Q(
        source=BillingEvent.Source.EXPENSE,
        expense__approval_state=ApprovalState.APPROVED,
        expense__billable=True,
    )
    invoiced = Q(status=BillingEvent.Status.INVOICED)
    due = (
        BillingEvent.objects.filter(
            scope("legal_entity_id"),
            source__in=[BillingEvent.Source.TIME, BillingEvent.Source.EXPENSE],
        )
        .exclude(status=BillingEvent.Status.WAIVED)
        .filter(invoiced | Q(created_at__lt=billed_before))
        .annotate(work_date=Coalesce("time_entry__date", "expense__date", output_field=DateField()))
        .filter(work_date__gte=since)
        .annotate(
            period=_month("work_date"),
            psa_hours=Case(
                When(time_ok, then=F("time_entry__hours")), default=ZERO, output_field=_DEC
            ),
            erp_hours=Case(
                When(invoiced & Q(source=BillingEvent.Source.TIME), then=F("quantity")),
                default=ZERO,
                output_field=_DEC,
            ),
            psa_amount=Case(
                When(time_ok, then=Round(F("time_entry__hours") * F("unit_amount"), 2)),
                When(expense_ok, then=F("expense__amount")),
                default=ZERO,
                output_field=_DEC,
            ),
            erp_amount=Case(When(invoiced, then=F("amount")), default=ZERO, output_field=_DEC),
        )
        .order_by()
    )
    differ = due.filter(~Q(psa_hours=F("erp_hours")) | ~Q(psa_amount=F("erp_amount")))
    rows = differ.values_list(
        "pk",
        "project_id",
        "period",
        "currency",
        "source",
        "status",
        "description",
        "psa_hours",
        "erp_hours",
        "psa_amount",
        "erp_amount",
    ).order_by("pk")
    grace = f"still not in the ERP {post_grace().total_seconds() / 3600:g} hours after billing"
    touched: set[tuple[int, date]] = set()
    for pk, project_id, period, currency, source, status, label, ph, eh, pa, ea in rows:
        measure = GapMeasure.HOURS if source == BillingEvent.Source.TIME else GapMeasure.AMOUNT
        gap = gaps.get_or_add(GapKind.POSTING_MISMATCH, project_id, period, currency, measure)
        if status != BillingEvent.Status.INVOICED:
            gap.reasons[grace] += 1
        elif not ph and not pa:
            gap.reasons["rejected or made non-billable in the PSA after it was invoiced"] += 1
        else:
            gap.reasons["changed in the PSA after it was invoiced"] += 1
        gap.records.append(
            Blocked(
                record_type="billingevent",
                record_id=pk,
                label=label,
                amount=abs(pa - ea),
                currency=currency,
                hours=abs(ph - eh),
            )
        )
        touched.add((project_id, period))
    if not touched:
        return
    totals = (
        due.filter(project_id__in={p for p, _ in touched})
        .values("project_id", "period", "currency", "source")
        .annotate(
            psa_h=Sum("psa_hours"),
            erp_h=Sum("erp_hours"),
            psa_a=Sum("psa_amount"),
            erp_a=Sum("erp_amount"),
        )
        .order_by()
    )
    for row in totals:
        measure = (
            GapMeasure.HOURS if row["source"] == BillingEvent.Source.TIME else GapMeasure.AMOUNT
        )
        key = (
            GapKind.POSTING_MISMATCH,
            row["project_id"],
            row["period"],
            row["currency"],
            None,
            measure,
        )
        posting = gaps.get(key)
        if posting is None:
            continue
        hours = measure == GapMeasure.HOURS
        posting.expected += row["psa_h"] if hours else row["psa_a"]
        posting.found += row["erp_h"] if hours else row["erp_a"]


# --- Invoices vs their billing events -------------------------------------------------------------


def _invoice_mismatches(gaps: _Gaps, scope: Scope, since: date) -> None:
    """Invoices (not voided) whose billing events do not add up to their subtotal: one GROUP BY
    per invoice, only those that differ come back (HAVING)."""
    rows = (
        BillingEvent.objects.filter(
            scope("invoice__legal_entity_id"),
            invoice__isnull=False,
            invoice__created_at__date__gte=since,
        )
        .exclude(status=BillingEvent.Status.WAIVED)
        .exclude(invoice__status=Invoice.Status.VOIDED)
        .values(
            "invoice_id",
            "invoice__subtotal",
            "invoice__currency",
            "invoice__number",
            "invoice__customer__name",
        )
        .annotate(
            issued=Min(Coalesce("invoice__issue_date", TruncDate("invoice__created_at"))),
            lines=Sum("amount"),
            hours=Sum(
                Case(
                    When(source=BillingEvent.Source.TIME, then=F("quantity")),
                    default=ZERO,
                    output_field=_DEC,
                )
            ),
            project=Min("project_id"),
        )
        .filter(~Q(lines=F("invoice__subtotal")))
        .order_by("invoice_id")
    )
    for row in rows:
        invoice_id = row["invoice_id"]
        currency = row["invoice__currency"]
        gap = gaps.get_or_add(
            GapKind.INVOICE_MISMATCH,
            row["project"],
            row["issued"].replace(day=1),
            currency,
            GapMeasure.AMOUNT,
            invoice_id=invoice_id,
        )
        gap.expected, gap.found = row["lines"], row["invoice__subtotal"]
        label = row["invoice__number"] or f"Draft invoice #{invoice_id}"
        gap.subject.update(invoice=label, customer=row["invoice__customer__name"])
        gap.records.append(
            Blocked(
                record_type="invoice",
                record_id=invoice_id,
                label=label,
                amount=abs(gap.expected - gap.found),
                currency=currency,
                hours=row["hours"] or ZERO,
            )
        )


def _invoices_missing(gaps: _Gaps, scope: Scope, since: date) -> None:
    """Billing events marked invoiced whose invoice never reached the ERP (Concord's draft,
    never answered) or was voided there: one query, only those rows."""
    rows = (
        BillingEvent.objects.filter(
            scope("legal_entity_id"),
            status=BillingEvent.Status.INVOICED,
        )
        .filter(
            ~Q(invoice__source_system=SystemRole.ERP) | Q(invoice__status=Invoice.Status.VOIDED)
        )
        .annotate(
            work_date=Coalesce(
                "time_entry__date",
                "expense__date",
                TruncDate("created_at"),
                output_field=DateField(),
            )
        )
        .filter(work_date__gte=since)
        .annotate(period=_month("work_date"))
        .values_list(
            "pk",
            "project_id",
            "period",
            "currency",
            "source",
            "description",
            "quantity",
            "amount",
            "invoice_id",
            "invoice__number",
            "invoice__status",
        )
        .order_by("pk")
    )
    for pk, project_id, period, currency, source, label, qty, amount, inv, number, status in rows:
        gap = gaps.get_or_add(
            GapKind.INVOICE_MISSING, project_id, period, currency, GapMeasure.AMOUNT
        )
        name = number or f"draft invoice #{inv}"
        if status == Invoice.Status.VOIDED:
            gap.reasons[f"invoice {name} was voided in the ERP"] += 1
        else:
            gap.reasons[f"{name} never reached the ERP"] += 1
        gap.expected += amount
        hours = qty if source == BillingEvent.Source.TIME else ZERO
        gap.records.append(
            Blocked("billingevent", pk, label=label, amount=amount, currency=currency, hours=hours)
        )


# --- Unbilled approved work -----------------------------------------------------------------------


def _bill_rate() -> Coalesce:
    """An entry's bill rate as the billing run finds it: the contract's rate for the worker's
    role in the project's currency, else the firm's default (None: no rate, amount unknown)."""
    contract_rate = RateCard.objects.filter(
        contract_id=OuterRef("project__contract_id"),
        role=OuterRef("resource__role"),
        currency=OuterRef("project__currency"),
    ).values("bill_rate")[:1]
    default_rate = RateCard.objects.filter(
        contract__isnull=True,
        role=OuterRef("resource__role"),
        currency=OuterRef("project__currency"),
    ).values("bill_rate")[:1]
    return Coalesce(Subquery(contract_rate), Subquery(default_rate), output_field=_DEC)


def _hourly_time(scope: Scope) -> QuerySet[TimeEntry]:
    """Approved billable time the billing run bills by the hour (or would, once its project has
    a contract), in scope."""
    return (
        TimeEntry.objects.filter(
            scope("project__legal_entity_id"),
            approval_state=ApprovalState.APPROVED,
            billable=True,
        )
        .annotate(basis=billing_basis())
        .exclude(basis=BillingBasis.MILESTONE)
        .order_by()
    )


def _time_unbilled(gaps: _Gaps, scope: Scope, cutoff: date) -> None:
    """Approved hourly time with no billing event: on a closed project (never to be billed:
    PMO's), or older than the SLA (finance's). One query for those entries, one GROUP BY for the
    approved and billed hours of their projects and months."""
    closed = Q(project__status=Project.Status.CLOSED)
    rows = (
        _hourly_time(scope)
        .filter(billing_event__isnull=True)
        .filter(closed | Q(date__lt=cutoff))
        .annotate(
            period=_month("date"),
            closed=Case(When(closed, then=Value("y")), default=Value(""), output_field=CharField()),
            amount=Round(F("hours") * _bill_rate(), 2),
            # The billing run's case already holding a closed project's entry (its open case
            # first): the entry stays there. Looked up for closed projects only (CASE).
            reported=Case(When(closed, then=_billing_case_of()), default=None),
        )
        .values_list(
            "pk",
            "project_id",
            "period",
            "date",
            "hours",
            "project__currency",
            "closed",
            "amount",
            "reported",
        )
        .order_by("pk")
    )
    touched: set[int] = set()
    for pk, project_id, period, day, hours, currency, is_closed, amount, reported in rows:
        kind = GapKind.CLOSED_UNBILLED if is_closed else GapKind.TIME_UNBILLED
        gap = gaps.get_or_add(kind, project_id, period, currency, GapMeasure.HOURS)
        record = Blocked(
            record_type="timeentry",
            record_id=pk,
            label=f"TE-{pk} {day:%Y-%m-%d} ({hours} h)",
            amount=amount or ZERO,
            currency=currency if amount is not None else "",
            hours=hours,
        )
        if reported is None:
            gap.records.append(record)
        else:
            gap.elsewhere.append(record)
            gap.elsewhere_case_id = gap.elsewhere_case_id or reported
        touched.add(project_id)
    if not touched:
        return
    totals = (
        _hourly_time(scope)
        .filter(project_id__in=touched)
        .annotate(period=_month("date"))
        .values("project_id", "period")
        .annotate(
            approved=Sum("hours"),
            billed=Sum(
                Case(
                    When(billing_event__isnull=False, then=F("hours")),
                    default=ZERO,
                    output_field=_DEC,
                )
            ),
        )
        .order_by()
    )
    by_month: dict[tuple[int | None, date], Any] = {
        (r["project_id"], r["period"]): r for r in totals
    }
    for gap in gaps.values():
        if gap.kind in (GapKind.CLOSED_UNBILLED, GapKind.TIME_UNBILLED):
            row = by_month.get((gap.project_id, gap.period))
            if row is not None:
                gap.expected, gap.found = row["approved"], row["billed"]


def _billing_case_of() -> Subquery:
    """The billing run's time-on-inactive-project case (open, else waived: PMO decided) that
    holds the outer time entry, as a subquery of its id."""
    return Subquery(
        BlockedRecord.objects.filter(
            record_type="timeentry",
            record_id=OuterRef("pk"),
            case__case_type=BILLING_INACTIVE_PROJECT,
            case__status__in=[ExceptionCase.Status.OPEN, ExceptionCase.Status.WAIVED],
        )
        .order_by("case__status", "-case_id")  # "open" sorts before "waived"
        .values("case_id")[:1],
        output_field=BigIntegerField(),
    )


def _expenses_unbilled(gaps: _Gaps, scope: Scope, cutoff: date) -> None:
    """Approved billable expenses with no billing event past the SLA: one query for those, one
    GROUP BY for the approved and billed amounts of their projects, months and currencies."""
    approved = Expense.objects.filter(
        scope("project__legal_entity_id"),
        approval_state=ApprovalState.APPROVED,
        billable=True,
    ).order_by()
    rows = (
        approved.filter(billing_event__isnull=True, date__lt=cutoff)
        .annotate(period=_month("date"))
        .values_list("pk", "project_id", "period", "date", "category", "amount", "currency")
        .order_by("pk")
    )
    touched: set[int] = set()
    for pk, project_id, period, day, category, amount, currency in rows:
        gap = gaps.get_or_add(
            GapKind.EXPENSES_UNBILLED, project_id, period, currency, GapMeasure.AMOUNT
        )
        gap.records.append(
            Blocked(
                record_type="expense",
                record_id=pk,
                label=f"Expense #{pk} {day:%Y-%m-%d} {category}",
                amount=amount,
                currency=currency,
            )
        )
        touched.add(project_id)
    if not touched:
        return
    totals = (
        approved.filter(project_id__in=touched)
        .annotate(period=_month("date"))
        .values("project_id", "period", "currency")
        .annotate(
            total=Sum("amount"),
            billed=Sum(
                Case(
                    When(billing_event__isnull=False, then=F("amount")),
                    default=ZERO,
                    output_field=_DEC,
                )
            ),
        )
        .order_by()
    )
    for row in totals:
        key = (
            GapKind.EXPENSES_UNBILLED,
            row["project_id"],
            row["period"],
            row["currency"],
            None,
            GapMeasure.AMOUNT,
        )
        unbilled = gaps.get(key)
        if unbilled is not None:
            unbilled.expected, unbilled.found = row["total"], row["billed"]


# --- Cases and stored gaps ------------------------------------------------------------------------


def _figure(value: Decimal, measure: str, currency: str) -> str:
    if measure == GapMeasure.HOURS:
        return f"{value:,.2f} hours"
    return f"{currency} {value:,.2f}".strip()


def _describe(gaps: Iterable[_Gap]) -> None:
    """Each gap's case subject: the ids its fingerprint needs and the words its message uses,
    named in the business's terms (the project's code and name, the month)."""
    gaps = list(gaps)
    projects = {
        p.pk: p
        for p in Project.objects.filter(pk__in={g.project_id for g in gaps if g.project_id})
        .only("pk", "code", "name")
        .order_by()
    }
    sla_days = unbilled_sla_days()
    for gap in gaps:
        project = projects.get(gap.project_id) if gap.project_id else None
        why = "; ".join(
            f"{count} {reason}" if count > 1 else reason
            for reason, count in sorted(gap.reasons.items())
        )
        gap.subject.update(
            {
                "project_id": gap.project_id,
                "project": f"{project.code} {project.name}" if project else "(no project)",
                "period": f"{gap.period:%Y-%m}",
                "month": f"{gap.period:%B %Y}",
                "currency": gap.currency,
                "expected": _figure(gap.expected, gap.measure, gap.currency),
                "found": _figure(gap.found, gap.measure, gap.currency),
                "difference": _figure(gap.expected - gap.found, gap.measure, gap.currency),
                "why": why,
                "sla_days": sla_days,
            }
        )
        if gap.invoice_id is not None:
            gap.subject["invoice_id"] = gap.invoice_id


def _row(run: ReconciliationRun, gap: _Gap, case_id: int | None) -> ReconciliationGap:
    words = gap.subject.get("why") or ""
    return ReconciliationGap(
        run=run,
        kind=gap.kind,
        project_id=gap.project_id,
        invoice_id=gap.invoice_id,
        period=gap.period,
        measure=gap.measure,
        expected=gap.expected,
        found=gap.found,
        difference=gap.expected - gap.found,
        hours=gap.hours,
        amount=gap.amount,
        currency=gap.currency,
        records=len(gap.every_record),
        detail=str(words)[:400],
        exception_case_id=case_id,
    )


def _clear_gone(
    run: ReconciliationRun, connection: Connection, gaps: Iterable[_Gap]
) -> tuple[int, int]:
    """Take the records no gap holds any more off this connection's open reconciliation cases
    (one read of what they hold, one clear per case type and reason), and those another case
    reports now (the billing run's); a case left with none resolves itself. Returns (records
    taken off, cases resolved)."""
    found: dict[str, set[tuple[str, int]]] = defaultdict(set)
    elsewhere: set[tuple[str, int]] = set()
    for gap in gaps:
        found[gap.case_type].update(r.key for r in gap.records)
        elsewhere.update(r.key for r in gap.elsewhere)
    held: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for case_type, record_type, record_id in (
        BlockedRecord.objects.filter(
            case__status=ExceptionCase.Status.OPEN,
            case__process=PROCESS,
            case__connection_id=connection.pk,
        )
        .values_list("case__case_type", "record_type", "record_id")
        .order_by()
    ):
        held[case_type].add((record_type, record_id))
    notes = (
        f"Closed automatically: reconciliation run #{run.pk} no longer finds this gap.",
        f"Closed automatically: reconciliation run #{run.pk} finds this time on the billing "
        "run's case for time on an inactive project, which reports it.",
    )
    cleared, resolved = 0, 0
    for case_type in sorted(held):
        gone = held[case_type] - found[case_type]
        for records, note in zip((gone - elsewhere, gone & elsewhere), notes, strict=True):
            if not records:
                continue
            cleared += len(records)
            resolved += len(
                case_records_clear(
                    records=sorted(records), process=PROCESS, case_types=[case_type], note=note
                )
            )
    return cleared, resolved


def _waivers_holding(
    run: ReconciliationRun, connection: Connection, gaps: Iterable[_Gap]
) -> dict[str, int]:
    """The waived cases that still hold for this run's gaps, by fingerprint: the last finished
    run of this connection stored the root cause's gaps with a case since waived (or held by a
    waiver already), and this run finds them with the same figures. One read of that run's
    gaps of waived cases."""
    last = (
        ReconciliationRun.objects.filter(connection=connection, state=ReconciliationState.DONE)
        .exclude(pk=run.pk)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if last is None:
        return {}
    before: dict[str, tuple[int, list[tuple[Any, ...]]]] = {}
    for case_id, fingerprint, *figures in (
        ReconciliationGap.objects.filter(
            run_id=last,
            exception_case__status=ExceptionCase.Status.WAIVED,
            exception_case__process=PROCESS,
        )
        .values_list(
            "exception_case_id",
            "exception_case__fingerprint",
            "kind",
            "currency",
            "measure",
            "invoice_id",
            "expected",
            "found",
            "hours",
            "amount",
        )
        .order_by()
    ):
        kind, currency, measure, invoice_id, *values = figures
        row = (kind, currency, measure, invoice_id or 0, *(v.quantize(CENT) for v in values))
        before.setdefault(fingerprint, (case_id, []))[1].append(row)
    if not before:
        return {}
    now: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for gap in gaps:
        if gap.records:  # a gap all on the billing run's case needs no waiver of ours
            now[gap.fingerprint()].append(gap.figures())
    return {
        fingerprint: case_id
        for fingerprint, (case_id, figures) in before.items()
        if sorted(figures) == sorted(now.get(fingerprint, []))
    }


# --- Retry: reconcile again now -------------------------------------------------------------------


def reconciliation_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a reconciliation case (exceptions/retry.py): reconcile its ERP connection now, so
    a gap fixed where it lives closes its case without waiting for the schedule."""
    if case.connection_id is None:
        return RetryResult(count=0, summary="the case names no ERP connection")
    run = reconcile_connection(connection_id=case.connection_id)
    if run is None:
        return RetryResult(count=0, summary="a reconciliation of its connection is under way")
    if run.state == ReconciliationState.FAILED:
        return RetryResult(count=1, summary=f"reconciliation run #{run.pk} failed: {run.error}")
    return RetryResult(
        count=1,
        summary=f"reconciled again (run #{run.pk}): {run.gap_count} gap(s) found, "
        f"{run.records_cleared} record(s) no longer in a gap",
    )


retry_handler_register(
    case_types=CASE_TYPES.values(), handler=reconciliation_case_retry, process=PROCESS
)
