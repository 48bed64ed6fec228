"""Expected work that did not happen (integrations/workflows/checks.py): each check is one query
however many rows it watches, makes one case per root cause (never one per row), leaves alone
what another case already explains, and closes its case by itself when the cause is gone."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from config.celery import app
from exceptions.actions import case_retry, case_waive
from exceptions.models import BlockedRecord, ExceptionCase, Queue
from exceptions.services import Blocked, case_open_or_join
from integrations import models as m
from integrations.roles import INTEGRATION_ADMIN
from integrations.services.schedules import poll_task_name
from integrations.workflows import checks
from tests.factories import (
    ContractFactory,
    LegalEntityFactory,
    ProjectFactory,
    ResourceFactory,
    UserFactory,
    make_connection,
)
from tests.provisioning_runs import provisioning_runs

pytestmark = pytest.mark.django_db

TODAY = date(2026, 12, 2)
OLD = TODAY - timedelta(days=60)  # past the 40-day SLA and its day of margin
RECENT = TODAY - timedelta(days=10)


def _selects(captured: CaptureQueriesContext, table: str) -> int:
    return sum(
        1
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT") and f'FROM "{table}"' in q["sql"]
    )


def _open(case_type: str) -> list[ExceptionCase]:
    return list(ExceptionCase.objects.filter(case_type=case_type, status="open").order_by("pk"))


# --- Approved time not in the ERP ---------------------------------------------------------------


def _project(entity: m.LegalEntity, model: str = "tm") -> m.Project:
    contract = ContractFactory.create(
        customer__legal_entity=entity, legal_entity=entity, billing_model=model, currency="EUR"
    )
    project = ProjectFactory.create(
        customer=contract.customer, contract=contract, legal_entity=entity
    )
    m.RateCard.objects.create(
        contract=contract, role="Consultant", bill_rate=Decimal("100"), currency="EUR"
    )
    return project


def _time(project: m.Project, count: int, day: date = OLD) -> list[m.TimeEntry]:
    resource = ResourceFactory.create()
    return m.TimeEntry.objects.bulk_create(
        m.TimeEntry(
            resource=resource,
            project=project,
            date=day,
            hours=Decimal("2.00"),
            approval_state=m.ApprovalState.APPROVED,
        )
        for _ in range(count)
    )


def test_thousands_of_late_entries_are_one_query_and_one_case_per_legal_entity() -> None:
    uk, de = LegalEntityFactory.create(code="UK01"), LegalEntityFactory.create(code="DE01")
    late_uk = _time(_project(uk), 2_000)
    late_de = _time(_project(de), 300)
    _time(_project(uk), 50, day=RECENT)  # within the SLA
    _time(_project(uk, model="fixed_fee"), 40)  # billed by milestone, never by the hour
    explained = _time(_project(de), 25)  # the reconciliation's case holds these already
    case_open_or_join(
        case_type="reconciliation_time_unbilled",
        subject={
            "project_id": explained[0].project_id,
            "project": "P",
            "period": "2026-10",
            "month": "October 2026",
            "expected": "50 hours",
            "found": "0 hours",
            "sla_days": 40,
        },
        records=[Blocked("timeentry", e.pk, hours=e.hours) for e in explained],
        process="reconciliation",
        step="compare",
    )

    with CaptureQueriesContext(connection) as captured:
        report = checks.time_not_posted_check(today=TODAY)

    # One query finds them all; opening a case reads its first entry's project (its scope).
    assert _selects(captured, "integrations_timeentry") == 1 + report.cases == 3
    assert report.found == 2_300
    cases = {c.legal_entity_id: c for c in _open("expected_time_not_posted")}
    assert set(cases) == {uk.pk, de.pk}
    assert cases[uk.pk].record_count == 2_000
    assert cases[uk.pk].queue == Queue.FINANCE
    assert cases[uk.pk].hours_blocked == Decimal("4000.00")
    assert cases[uk.pk].amounts == {"EUR": "400000.00"}  # 2 h at the contract's 100 each
    assert cases[de.pk].record_count == 300
    assert cases[uk.pk].message.startswith(
        "2000 approved time entries (EUR 400,000.00, 4,000.00 hours) for legal entity UK01 "
    )
    assert "more than 40 days ago" in cases[uk.pk].message
    held = set(
        BlockedRecord.objects.filter(case__in=cases.values()).values_list("record_id", flat=True)
    )
    assert held == {e.pk for e in late_uk + late_de}


def test_a_second_check_with_nothing_new_writes_nothing() -> None:
    _time(_project(LegalEntityFactory.create()), 30)
    checks.time_not_posted_check(today=TODAY)
    case = _open("expected_time_not_posted")[0]

    with CaptureQueriesContext(connection) as captured:
        report = checks.time_not_posted_check(today=TODAY)

    assert report.cases == 0
    assert report.cleared == 0
    assert not [q for q in captured.captured_queries if not q["sql"].startswith("SELECT")]
    case.refresh_from_db()
    assert case.occurrences == 30


def test_posted_time_leaves_the_case_and_it_resolves_itself() -> None:
    uk, de = LegalEntityFactory.create(), LegalEntityFactory.create()
    uk_time, de_time = _time(_project(uk), 20), _time(_project(de), 5)
    checks.time_not_posted_check(today=TODAY)
    cases = {c.legal_entity_id: c for c in _open("expected_time_not_posted")}
    uk_case, de_case = cases[uk.pk], cases[de.pk]

    invoice = m.Invoice.objects.create(
        number="INV-1",
        customer=uk_time[0].project.customer,
        legal_entity=uk,
        currency="EUR",
        status="authorised",
        source_system="erp",
    )
    m.BillingEvent.objects.bulk_create(
        m.BillingEvent(
            source="time",
            time_entry=e,
            project=e.project,
            legal_entity=uk,
            description="time",
            quantity=e.hours,
            unit_amount=Decimal("100"),
            amount=Decimal("200"),
            currency="EUR",
            status="invoiced",
            invoice=invoice,
        )
        for e in uk_time
    )
    # A pending billing event is not in the ERP yet: those entries stay late.
    m.BillingEvent.objects.create(
        source="time",
        time_entry=de_time[0],
        project=de_time[0].project,
        legal_entity=de,
        description="time",
        unit_amount=Decimal("100"),
        amount=Decimal("200"),
        currency="EUR",
    )
    report = checks.time_not_posted_check(today=TODAY)

    assert (report.cleared, report.resolved) == (20, 1)
    uk_case.refresh_from_db()
    de_case.refresh_from_db()
    assert uk_case.status == "resolved"
    assert "in the ERP" in uk_case.resolution_note
    assert de_case.status == "open"
    assert de_case.record_count == 5


def test_a_waiver_holds_and_only_time_late_anew_opens_a_case() -> None:
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    project = _project(LegalEntityFactory.create())
    _time(project, 10)
    checks.time_not_posted_check(today=TODAY)
    (waived,) = _open("expected_time_not_posted")
    case_waive(actor=admin, case_id=waived.pk, revision=waived.revision, reason="Written off")

    assert checks.time_not_posted_check(today=TODAY).found == 0
    assert _open("expected_time_not_posted") == []

    late_anew = _time(project, 2)
    checks.time_not_posted_check(today=TODAY)
    (case,) = _open("expected_time_not_posted")
    assert set(BlockedRecord.objects.filter(case=case).values_list("record_id", flat=True)) == {
        e.pk for e in late_anew
    }


# --- Workflow runs stuck at a step --------------------------------------------------------------


def _runs(count: int, *, step: str, since: timedelta, state: str = "running") -> list[int]:
    return [r.pk for r in provisioning_runs(count, step=step, since=since, state=state)]


def test_thousands_of_stuck_runs_are_one_query_and_one_case_per_step() -> None:
    waiting = _runs(1_500, step="erp_customer", since=timedelta(hours=3))
    project = _runs(400, step="psa_project", since=timedelta(hours=2))
    _runs(300, step="erp_customer", since=timedelta(minutes=10))  # not stuck yet
    _runs(200, step="write_back", since=timedelta(days=2), state="done")
    # Blocked on an open case: that case is the explanation, already in a queue.
    held = _runs(100, step="validate", since=timedelta(hours=5), state="blocked")
    validation = case_open_or_join(
        case_type="provisioning_account_unknown",
        subject={"account": "001X", "opportunity": "Opportunity"},
        records=[Blocked("workflowrun", pk) for pk in held],
        process="provisioning",
        step="validate",
    )
    m.WorkflowRun.objects.filter(pk__in=held).update(exception_case=validation)

    with CaptureQueriesContext(connection) as captured:
        report = checks.run_stuck_check()

    assert _selects(captured, "integrations_workflowrun") == 1
    assert report.cases == 2
    assert report.found == 1_900
    cases = {c.step: c for c in _open("workflow_run_stuck")}
    assert set(cases) == {"erp_customer", "psa_project"}
    case = cases["erp_customer"]
    assert (case.record_count, case.process, case.queue) == (
        1_500,
        "provisioning",
        Queue.INTEGRATION_ADMIN,
    )
    assert case.amounts == {"EUR": "1500000.00"}
    assert case.message.startswith(
        "1500 workflow runs (EUR 1,500,000.00) of project provisioning have been at step "
        "\u201cCustomer in the ERP\u201d for more than 60 minutes with no case holding them "
        "(last: Sent through the outbox.)."
    )
    assert cases["psa_project"].record_count == 400
    assert set(BlockedRecord.objects.filter(case=case).values_list("record_id", flat=True)) == set(
        waiting
    )
    assert len(project) == 400


def test_runs_that_move_on_leave_their_case_and_it_resolves(settings: Any) -> None:
    stuck = _runs(30, step="erp_dimension", since=timedelta(hours=2))
    checks.run_stuck_check()
    (case,) = _open("workflow_run_stuck")

    # Ten moved to the next step and are stuck there too; the rest are done.
    now = timezone.now()
    m.WorkflowRun.objects.filter(pk__in=stuck[:10]).update(
        current_step="write_back", step_started_at=now - timedelta(hours=1, minutes=5)
    )
    m.WorkflowRun.objects.filter(pk__in=stuck[10:]).update(
        state="done", current_step="", finished_at=now
    )
    report = checks.run_stuck_check()

    case.refresh_from_db()
    assert case.status == "resolved"
    assert report.resolved == 1
    (moved,) = _open("workflow_run_stuck")
    assert moved.step == "write_back"
    assert moved.record_count == 10

    # A shorter threshold makes runs stuck sooner.
    settings.CONCORD_RUN_STUCK_AFTER_MINUTES = 5
    _runs(3, step="psa_client", since=timedelta(minutes=6))
    checks.run_stuck_check()
    assert {c.step for c in _open("workflow_run_stuck")} == {"write_back", "psa_client"}


def test_retrying_a_stuck_case_checks_again_and_closes_what_moved_on() -> None:
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    stuck = _runs(4, step="erp_customer", since=timedelta(hours=2))
    checks.run_stuck_check()
    (case,) = _open("workflow_run_stuck")
    m.WorkflowRun.objects.filter(pk__in=stuck).update(
        state="done", current_step="", finished_at=timezone.now()
    )

    case_retry(actor=admin, case_id=case.pk, revision=case.revision)

    case.refresh_from_db()
    assert case.status == "resolved"


def test_a_waived_stuck_run_is_reported_again_only_at_its_next_step() -> None:
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    stuck = _runs(2, step="psa_client", since=timedelta(hours=2))
    checks.run_stuck_check()
    (case,) = _open("workflow_run_stuck")
    case_waive(actor=admin, case_id=case.pk, revision=case.revision, reason="Known outage")

    checks.run_stuck_check()
    assert _open("workflow_run_stuck") == []

    m.WorkflowRun.objects.filter(pk=stuck[0]).update(
        current_step="psa_project", step_started_at=timezone.now() - timedelta(hours=2)
    )
    checks.run_stuck_check()
    (again,) = _open("workflow_run_stuck")
    assert again.step == "psa_project"
    assert again.record_count == 1


# --- Polling schedules that have not run --------------------------------------------------------


def test_polls_beat_has_not_sent_are_one_case_and_close_when_they_run() -> None:
    late = [make_connection(name=f"Xero {n}") for n in range(3)]
    fine = make_connection(name="Xero fine")
    disabled = make_connection(name="Xero off")
    m.Connection.objects.filter(pk=disabled.pk).update(enabled=False)
    paused = make_connection(name="Xero paused")
    now = timezone.now()
    rows = PeriodicTask.objects.filter
    for conn in (*late, disabled, paused):
        rows(name=poll_task_name(conn.pk)).update(last_run_at=now - timedelta(minutes=7))
    rows(name=poll_task_name(fine.pk)).update(last_run_at=now - timedelta(minutes=5))
    rows(name=poll_task_name(paused.pk)).update(enabled=False)

    with CaptureQueriesContext(connection) as captured:
        report = checks.poll_not_run_check(now=now)

    assert _selects(captured, "django_celery_beat_periodictask") == 1
    assert report.found == 3
    (case,) = _open("poll_schedule_not_run")
    assert case.record_count == 3
    assert case.queue == Queue.INTEGRATION_ADMIN
    assert case.message.startswith(
        "3 polling schedules have not been run by beat for more than 3 of their intervals"
    )
    labels = set(BlockedRecord.objects.filter(case=case).values_list("label", flat=True))
    # Each late schedule is named with its interval (ids are not compared as text: 100 < 98).
    for conn in late:
        assert any(
            f"{poll_task_name(conn.pk)} (every 120 s): last run" in label for label in labels
        ), labels

    rows(name__in=[poll_task_name(c.pk) for c in late]).update(last_run_at=timezone.now())
    checks.poll_not_run_check()
    case.refresh_from_db()
    assert case.status == "resolved"


def test_a_waived_poll_case_holds_until_the_schedule_runs_again() -> None:
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    conn = make_connection(name="Xero legacy")
    row = PeriodicTask.objects.filter(name=poll_task_name(conn.pk))
    row.update(last_run_at=timezone.now() - timedelta(hours=1))
    checks.poll_not_run_check()
    (case,) = _open("poll_schedule_not_run")
    case_waive(actor=admin, case_id=case.pk, revision=case.revision, reason="Being retired")

    checks.poll_not_run_check()
    assert _open("poll_schedule_not_run") == []

    # It ran after the waiver, then stopped again: that is news.
    row.update(last_run_at=timezone.now())
    later = timezone.now() + timedelta(minutes=7)
    checks.poll_not_run_check(now=later)
    assert len(_open("poll_schedule_not_run")) == 1


def test_the_beat_row_runs_every_check() -> None:
    entry = app.conf.beat_schedule["check-expected-work"]
    assert entry["task"] == "integrations.check_expected_work"
    assert set(checks.expected_work_check()) == {"time_not_posted", "runs_stuck", "polls_not_run"}
