"""Expected work that did not happen: the checks that notice what should have come by now.

A failure that raises is caught where it happens (the outbox, a poll, a workflow step) and
becomes a case there. These checks look for the other kind: work that was expected and simply
did not happen, with nothing raised and nobody told. Beat runs them every few minutes
(``check-expected-work``, config/celery.py; ``expected_work_check``):

- **Approved time not in the ERP** (``expected_time_not_posted``, finance): approved billable
  time billed by the hour whose work date is past the unbilled SLA (CONCORD_UNBILLED_SLA_DAYS,
  the reconciliation's own, ``reconciliation.unbilled_sla_days``) and one more day, with no
  billing event or one still pending, that NO other case explains: no open (or waived) case
  holds the entry, its billing event or its invoice. The reconciliation finds the same late
  time on the day the SLA passes and opens its own per-project case, the billing run its case
  when it cannot bill; the day's margin lets them, so this check reports only what they did not
  (an entity no ERP connection reconciles, a paused billing run or reconciliation) and never
  the same time twice. One case per legal entity.
- **A workflow run stuck at a step** (``workflow_run_stuck``, integration admins): a run of any
  process at one step for longer than CONCORD_RUN_STUCK_AFTER_MINUTES that no open case holds
  (a blocked run waits on its own case, already in a queue): its writes never came back
  delivered, or nothing moved it on. One case per process and step. The provisioning board
  (dashboards/provisioning.py) highlights the same runs with the same threshold.
- **A polling schedule that has not run** (``poll_schedule_not_run``, integration admins): an
  enabled polling row (``poll connection <id>`` of an enabled connection, or ``poll-all``) that
  beat has not sent for CONCORD_POLL_NOT_RUN_INTERVALS of its own intervals (its
  ``last_run_at``; beat writes it as it sends). That is the scheduler's fault, one root cause:
  one case. Whether each connection's data arrives is ``poll_stale``'s (integrations/sync/
  polling.py, per connection, from the cursors), which this check leaves alone.

Each check is ONE query over everything it watches (thousands of rows cost what ten do), then
one read of what its open cases hold: records no longer found are taken off
(``case_records_clear``, so a case whose cause is gone resolves itself), and a group with
records its case does not hold yet opens or joins it (``case_open_or_join``); a group whose
records are all held already is left as it is, so a check that finds nothing new writes nothing.
A person who waives one of these cases has decided about what it held: the waiver holds while
the fact is the same (the time entry still late; the run still at that step; the schedule not
run since), and only what is late anew opens a case again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db.models import CharField, Exists, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Coalesce, Concat, Round
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from exceptions.models import BlockedRecord, ExceptionCase
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_fingerprint, case_open_or_join, case_records_clear
from integrations.models import (
    ApprovalState,
    BillingBasis,
    BillingEvent,
    Connection,
    RunState,
    TimeEntry,
    WorkflowRun,
    WorkflowStep,
    billing_basis,
)
from integrations.services.schedules import POLL_ALL, POLL_ROW_PREFIX, interval_seconds
from integrations.workflows import provisioning
from integrations.workflows.reconciliation import _bill_rate, unbilled_sla_days
from integrations.workflows.runs import RUN_RECORD
from integrations.workflows.stages import process_words, step_words

logger = logging.getLogger(__name__)

TIME_CASE = "expected_time_not_posted"
RUN_CASE = "workflow_run_stuck"
POLL_CASE = "poll_schedule_not_run"
CASE_TYPES = (TIME_CASE, RUN_CASE, POLL_CASE)

# The process and steps the time and poll cases are filed under (a stuck run's case is filed
# under the run's own process and step).
PROCESS = "expected_work"
TIME_STEP = "time_posted"
POLL_STEP = "poll_schedule"

# The day after the SLA: the reconciliation (hourly) and the billing run have had theirs.
MARGIN = timedelta(days=1)
RUN_STUCK_AFTER_MINUTES = 60
POLL_NOT_RUN_INTERVALS = 3
SCHEDULER = "beat"
PERIODIC_TASK = "periodictask"
TIME_ENTRY = "timeentry"
NO_ENTITY = "projects with no legal entity"

# Cases that explain a record: a person is on them (open), or decided (waived).
EXPLAINING = (ExceptionCase.Status.OPEN, ExceptionCase.Status.WAIVED)
OPEN = ExceptionCase.Status.OPEN
WAIVED = ExceptionCase.Status.WAIVED
PENDING = BillingEvent.Status.PENDING
ZERO = Decimal("0")


def run_stuck_after() -> timedelta:
    """How long a run may stand at one step before it is stuck (the board uses it too)."""
    minutes = getattr(settings, "CONCORD_RUN_STUCK_AFTER_MINUTES", RUN_STUCK_AFTER_MINUTES)
    return timedelta(minutes=float(minutes))


def poll_not_run_intervals() -> int:
    return int(getattr(settings, "CONCORD_POLL_NOT_RUN_INTERVALS", POLL_NOT_RUN_INTERVALS))


@dataclass
class CheckReport:
    found: int = 0  # late records
    cases: int = 0  # cases opened or joined
    cleared: int = 0  # records taken off cases
    resolved: int = 0  # cases resolved because nothing was left on them


@dataclass
class _Group:
    """One root cause: the case it goes on, what it says, and the records found late."""

    case_type: str
    subject: dict[str, Any]
    process: str
    step: str
    records: list[Blocked] = field(default_factory=list)
    legal_entity_id: int | None = None
    region: str = ""

    @property
    def fingerprint(self) -> str:
        return case_fingerprint(
            case_type=self.case_type,
            process=self.process,
            step=self.step,
            subject=self.subject,
        )


def _explained(record_type: str, column: str, **same: Any) -> Exists:
    """The outer row's record (by ``column``) is explained: another case holds it, open or
    waived; or a person waived this check's own case about it, while it is the same fact
    (``same``: the waived case's fields that must match the row, e.g. the step a run stands
    at), so a waiver holds on the next check instead of opening the case again."""
    others = Q(case__status__in=EXPLAINING) & ~Q(case__case_type__in=CASE_TYPES)
    waived = Q(case__status=WAIVED, case__case_type__in=CASE_TYPES, **same)
    return Exists(
        BlockedRecord.objects.filter(
            others | waived, record_type=record_type, record_id=OuterRef(column)
        )
    )


def _settle(case_type: str, groups: Iterable[_Group], note: str) -> CheckReport:
    """Take off this type's open cases the records no group holds under that case any more,
    then open or join the case of each group that has records its case does not hold yet."""
    groups = list(groups)
    found: set[tuple[str, str, int]] = set()
    by_fingerprint: dict[str, _Group] = {}
    for group in groups:
        fingerprint = group.fingerprint
        by_fingerprint[fingerprint] = group
        found.update((fingerprint, r.record_type, r.record_id) for r in group.records)
    held = set(
        BlockedRecord.objects.filter(case__status=OPEN, case__case_type=case_type)
        .values_list("case__fingerprint", "record_type", "record_id")
        .order_by()
    )
    report = CheckReport(found=len(found))
    gone = sorted({(kind, pk) for fingerprint, kind, pk in held - found})
    if gone:
        report.cleared = len(gone)
        report.resolved = len(case_records_clear(records=gone, case_types=[case_type], note=note))
        # What the clear took off a case whose group still holds it goes back on below.
        taken = set(gone)
        held = {h for h in held if (h[1], h[2]) not in taken}
    for fingerprint, group in sorted(by_fingerprint.items()):
        if all((fingerprint, r.record_type, r.record_id) in held for r in group.records):
            continue
        case_open_or_join(
            case_type=case_type,
            subject=group.subject,
            records=group.records,
            process=group.process,
            step=group.step,
            legal_entity_id=group.legal_entity_id,
            region=group.region,
        )
        report.cases += 1
    return report


# --- Approved time not in the ERP ---------------------------------------------------------------


def late_time(*, today: date) -> Any:
    """Approved billable time billed by the hour, past the unbilled SLA and the margin, not in
    the ERP (no billing event, or one still pending), that no other case explains: one query
    (values: id, date, hours, amount, currency, legal entity id, code, name)."""
    cutoff = today - timedelta(days=unbilled_sla_days()) - MARGIN
    return (
        TimeEntry.objects.filter(
            approval_state=ApprovalState.APPROVED, billable=True, date__lt=cutoff
        )
        .filter(
            Q(billing_event__isnull=True) | Q(billing_event__status=BillingEvent.Status.PENDING)
        )
        .annotate(basis=billing_basis())
        .exclude(basis=BillingBasis.MILESTONE)
        .exclude(_explained(TIME_ENTRY, "pk"))
        .exclude(_explained("billingevent", "billing_event__id"))
        .exclude(_explained("invoice", "billing_event__invoice_id"))
        .annotate(amount=Round(F("hours") * _bill_rate(), 2))
        .values_list(
            "pk",
            "date",
            "hours",
            "amount",
            "project__currency",
            "project__legal_entity_id",
            "project__legal_entity__code",
            "project__legal_entity__name",
        )
        .order_by("pk")
    )


def time_not_posted_check(*, today: date | None = None) -> CheckReport:
    """Approved time not in the ERP within its SLA that no case explains: a case per legal
    entity, closed once its time is posted or another case explains it."""
    today = today or timezone.localdate()
    days = unbilled_sla_days()
    groups: dict[int, _Group] = {}
    for pk, day, hours, amount, currency, entity_id, code, name in late_time(today=today):
        group = groups.get(entity_id or 0)
        if group is None:
            entity = (
                f"legal entity {code} ({name})" if entity_id else "projects with no legal entity"
            )
            group = groups[entity_id or 0] = _Group(
                case_type=TIME_CASE,
                subject={
                    "legal_entity_id": entity_id or 0,
                    "legal_entity": entity,
                    "sla_days": days,
                },
                process=PROCESS,
                step=TIME_STEP,
                legal_entity_id=entity_id,
            )
        group.records.append(
            Blocked(
                record_type=TIME_ENTRY,
                record_id=pk,
                label=f"TE-{pk} {day:%Y-%m-%d} ({hours} h)",
                # Its amount at the rate the billing run would find (none: unknown, hours only).
                amount=amount or ZERO,
                currency=currency if amount is not None else "",
                hours=hours,
            )
        )
    return _settle(
        TIME_CASE,
        groups.values(),
        "Closed automatically: the time it held is in the ERP, or another case now says why not.",
    )


# --- Workflow runs stuck at a step --------------------------------------------------------------


def stuck_q(now: datetime | None = None) -> Q:
    """Runs not done whose current step began longer than the threshold ago (the board's
    "stuck" too)."""
    since = (now or timezone.now()) - run_stuck_after()
    return ~Q(state=RunState.DONE) & (
        Q(step_started_at__lt=since) | Q(step_started_at__isnull=True, started_at__lt=since)
    )


def stuck_runs(*, now: datetime) -> Any:
    """Stuck runs no case holds (its own case, open or waived, or a case holding it as a
    record): one query, with the current step's detail."""
    detail = WorkflowStep.objects.filter(run=OuterRef("pk"), name=OuterRef("current_step"))
    return (
        WorkflowRun.objects.filter(stuck_q(now))
        .filter(Q(exception_case__isnull=True) | ~Q(exception_case__status__in=EXPLAINING))
        .exclude(
            _explained(
                RUN_RECORD,
                "pk",
                case__process=OuterRef("process"),
                case__step=OuterRef("current_step"),
            )
        )
        .annotate(step_detail=Subquery(detail.values("detail")[:1]))
        .values_list("pk", "process", "current_step", "label", "input", "step_detail")
        .order_by("pk")
    )


def _threshold_words(span: timedelta) -> str:
    minutes = round(span.total_seconds() / 60)
    if minutes % 60 == 0 and minutes >= 120:
        return f"{minutes // 60} hours"
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


def run_stuck_check(*, now: datetime | None = None) -> CheckReport:
    """Runs at one step past the threshold with no case holding them: a case per process and
    step, closed once they are past it (or a case holds them)."""
    now = now or timezone.now()
    threshold = _threshold_words(run_stuck_after())
    groups: dict[tuple[str, str], _Group] = {}
    for pk, process, step, label, given, detail in stuck_runs(now=now):
        group = groups.get((process, step))
        if group is None:
            group = groups[(process, step)] = _Group(
                case_type=RUN_CASE,
                subject={
                    "process_name": process,
                    "step_name": step,
                    "process_words": process_words(process),
                    "step_words": step_words(process, step),
                    "threshold": threshold,
                    "detail": (detail or "no detail recorded")[:300],
                },
                process=process,
                step=step,
            )
        amount, currency = _run_amount(given or {})
        group.records.append(
            Blocked(
                record_type=RUN_RECORD,
                record_id=pk,
                label=label[:200],
                amount=amount,
                currency=currency,
            )
        )
    return _settle(
        RUN_CASE,
        groups.values(),
        "Closed automatically: the runs it held went past the step (or a case holds them).",
    )


def _run_amount(given: Mapping[str, Any]) -> tuple[Decimal, str]:
    try:
        amount = Decimal(str(given.get("amount") or "0"))
    except InvalidOperation:
        amount = ZERO
    currency = str(given.get("currency") or "")
    return (amount, currency) if amount and currency else (ZERO, "")


# --- Polling schedules that have not run --------------------------------------------------------


def polling_rows() -> Any:
    """The enabled polling rows that should run: each enabled connection's own, and poll-all.
    One query, with their intervals."""
    own_row = (
        Connection.objects.filter(enabled=True)
        .annotate(
            row=Concat(Value(POLL_ROW_PREFIX), Cast("pk", CharField()), output_field=CharField())
        )
        .filter(row=OuterRef("name"))
    )
    return (
        PeriodicTask.objects.filter(enabled=True)
        .filter(Q(name=POLL_ALL) | (Q(name__startswith=POLL_ROW_PREFIX) & Exists(own_row)))
        # A waiver holds until the row runs again.
        .exclude(
            _explained(
                PERIODIC_TASK,
                "pk",
                case__resolved_at__gt=Coalesce(OuterRef("last_run_at"), OuterRef("date_changed")),
            )
        )
        .select_related("interval")
        .order_by("name")
    )


def poll_not_run_check(*, now: datetime | None = None) -> CheckReport:
    """Polling rows beat has not sent for N of their intervals: one case for all of them,
    closed once each runs again."""
    now = now or timezone.now()
    intervals = poll_not_run_intervals()
    late: list[Blocked] = []
    for task in polling_rows():
        seconds = interval_seconds(task)
        if seconds is None:  # a calendar schedule: no interval to be late by
            continue
        last = task.last_run_at or task.date_changed
        if now - last <= timedelta(seconds=seconds * intervals):
            continue
        when = f"last run {last:%Y-%m-%d %H:%M} UTC" if task.last_run_at else "never run"
        late.append(
            Blocked(
                record_type=PERIODIC_TASK,
                record_id=task.pk,
                label=f"{task.name} (every {seconds:g} s): {when}"[:200],
            )
        )
    groups = []
    if late:
        groups.append(
            _Group(
                case_type=POLL_CASE,
                subject={"scheduler": SCHEDULER, "intervals": intervals},
                process=PROCESS,
                step=POLL_STEP,
                records=late,
            )
        )
    return _settle(POLL_CASE, groups, "Closed automatically: every polling schedule ran again.")


# --- All of them, and retry -----------------------------------------------------------------------


def expected_work_check(
    *, now: datetime | None = None, today: date | None = None
) -> dict[str, dict[str, int]]:
    """Every check (beat's ``check-expected-work``); one failing does not stop the others."""
    now = now or timezone.now()
    checks = {
        "time_not_posted": lambda: time_not_posted_check(today=today or timezone.localdate(now)),
        "runs_stuck": lambda: run_stuck_check(now=now),
        "polls_not_run": lambda: poll_not_run_check(now=now),
    }
    reports: dict[str, dict[str, int]] = {}
    for name, check in checks.items():
        try:
            reports[name] = asdict(check())
        except Exception:
            logger.exception("the expected-work check %s failed", name)
    return reports


def expected_work_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry (exceptions/retry.py): a stuck provisioning run is moved on from its step; then
    the case's check runs again now, so what is fixed leaves the case without waiting."""
    moved = 0
    if case.case_type == RUN_CASE and case.process == provisioning.PROCESS:
        held = BlockedRecord.objects.filter(case=case, record_type=RUN_RECORD)
        moved = provisioning.provisioning_resume(
            run_ids=list(held.values_list("record_id", flat=True))
        )
    checks: dict[str, Callable[[], CheckReport]] = {
        TIME_CASE: time_not_posted_check,
        RUN_CASE: run_stuck_check,
        POLL_CASE: poll_not_run_check,
    }
    report = checks[case.case_type]()
    words = f"moved on {moved} run(s); " if moved else ""
    return RetryResult(
        count=moved + report.found + report.cleared,
        summary=f"{words}checked again: {report.found} still late, {report.cleared} no longer late",
    )


retry_handler_register(case_types=CASE_TYPES, handler=expected_work_case_retry)
