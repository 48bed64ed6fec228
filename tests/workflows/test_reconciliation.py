"""Reconciliation (workflow 7): per ERP connection, project and month, what the PSA approved,
what Concord billed and what the ERP holds. Each kind of gap is found, stored with both sides'
figures and reported as a readable case in the owning queue; a gap fixed where it lives
resolves its case on the next run; runs are idempotent; it stays a handful of queries however
many projects there are, and finds exactly the gaps planted among thousands of entries."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection as db
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from exceptions.actions import case_waive
from exceptions.models import BlockedRecord, ExceptionCase, Queue
from exceptions.retry import retry_handler_for
from integrations import models as m
from integrations import tasks
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, VIEWER
from integrations.workflows.reconciliation import reconcile_connection
from integrations.workflows.time_to_erp import billing_run
from tests.factories import (
    ContractFactory,
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    ResourceFactory,
    UserFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _expenses_reconciled(settings: Any) -> None:
    """These tests check expenses too (off by default until expenses are billed)."""
    settings.CONCORD_RECONCILE_EXPENSES = True


TODAY = timezone.localdate()
RECENT = TODAY - timedelta(days=3)  # within the unbilled SLA (40 days)
OLD = TODAY - timedelta(days=60)  # past it
RATE = Decimal("100")
_numbers = itertools.count(1)


def _code(gap: m.ReconciliationGap) -> str:
    assert gap.project is not None
    return gap.project.code


def _month(day: date) -> date:
    return day.replace(day=1)


@dataclass
class Firm:
    erp: m.Connection
    entity: m.LegalEntity
    customer: m.Customer
    contract: m.Contract
    worker: m.Resource


def _firm(*, default_route: bool = True) -> Firm:
    entity = LegalEntityFactory.create(base_currency="EUR")
    customer = CustomerFactory.create(legal_entity=entity, name="Acme GmbH")
    contract = ContractFactory.create(customer=customer)
    erp = make_connection()
    if default_route:
        m.RoutingRule.objects.create(role="erp", connection=erp)
    m.RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=RATE)
    worker = ResourceFactory.create(name="Grace Hopper")
    return Firm(erp=erp, entity=entity, customer=customer, contract=contract, worker=worker)


def _project(firm: Firm, code: str, **fields: Any) -> m.Project:
    return ProjectFactory.create(
        code=code,
        name=f"Project {code}",
        customer=firm.customer,
        contract=firm.contract,
        legal_entity=firm.entity,
        **fields,
    )


def _entry(firm: Firm, project: m.Project, day: date, hours: str = "6") -> m.TimeEntry:
    return m.TimeEntry.objects.create(
        resource=firm.worker,
        project=project,
        date=day,
        hours=Decimal(hours),
        approval_state=m.ApprovalState.APPROVED,
        source_system="psa",
    )


def _bill(entries: list[m.TimeEntry], *, delivered: bool = True) -> m.Invoice:
    """Bill these entries as the billing run does: one invoice, one event per entry; delivered
    means the ERP took it (the invoice numbered and from the ERP, the events invoiced)."""
    project = entries[0].project
    assert project.legal_entity is not None
    amounts = [(e.hours * RATE).quantize(Decimal("0.01")) for e in entries]
    subtotal = sum(amounts, Decimal("0"))
    invoice = m.Invoice.objects.create(
        legal_entity=project.legal_entity,
        customer=project.customer,
        contract=project.contract,
        currency=project.currency,
        issue_date=TODAY,
        subtotal=subtotal,
        tax_total=Decimal("0"),
        total=subtotal,
        amount_due=subtotal,
        number=f"INV-{next(_numbers):04d}" if delivered else "",
        source_system="erp" if delivered else "",
    )
    m.BillingEvent.objects.bulk_create(
        m.BillingEvent(
            source=m.BillingEvent.Source.TIME,
            time_entry=e,
            project=project,
            contract=project.contract,
            legal_entity=project.legal_entity,
            description=f"TE-{e.pk} {e.date:%Y-%m-%d} Grace Hopper ({e.hours} h)",
            quantity=e.hours,
            unit_amount=RATE,
            amount=amount,
            currency=project.currency,
            status=m.BillingEvent.Status.INVOICED if delivered else m.BillingEvent.Status.PENDING,
            invoice=invoice,
            source_system="psa",
        )
        for e, amount in zip(entries, amounts, strict=True)
    )
    return invoice


def _open_cases() -> dict[str, ExceptionCase]:
    return {
        c.case_type: c
        for c in ExceptionCase.objects.filter(process="reconciliation", status="open")
    }


@dataclass
class Planted:
    firm: Firm
    healthy: m.Project
    changed: m.Project
    changed_entry: m.TimeEntry
    invoice_off: m.Invoice
    voided: m.Invoice
    closed: m.Project
    late: m.Project
    late_entry: m.TimeEntry
    expenses: m.Project


def _plant() -> Planted:
    """One project of each kind of gap, beside healthy and in-flight work that is none."""
    firm = _firm()
    healthy = _project(firm, "P-OK")
    _bill([_entry(firm, healthy, RECENT), _entry(firm, healthy, OLD)])
    _entry(firm, healthy, RECENT, "2")  # approved, not billed yet, within the SLA: in flight
    _bill([_entry(firm, healthy, RECENT, "1")], delivered=False)  # billed just now: in flight

    changed = _project(firm, "P-CHG")
    changed_entry = _entry(firm, changed, RECENT, "6")
    _bill([changed_entry])
    m.TimeEntry.objects.filter(pk=changed_entry.pk).update(hours=Decimal("8"))  # PSA, after

    off = _project(firm, "P-INV")
    invoice_off = _bill([_entry(firm, off, RECENT, "7.2")])  # EUR 720.00
    m.Invoice.objects.filter(pk=invoice_off.pk).update(
        subtotal=Decimal("500"), total=Decimal("500")
    )  # edited in the ERP

    gone = _project(firm, "P-VOID")
    voided = _bill([_entry(firm, gone, RECENT, "3")])
    m.Invoice.objects.filter(pk=voided.pk).update(status=m.Invoice.Status.VOIDED)

    closed = _project(firm, "P-CLOSED", status=m.Project.Status.CLOSED)
    _bill([_entry(firm, closed, RECENT, "4")])
    _entry(firm, closed, RECENT, "2.5")

    late = _project(firm, "P-LATE")
    late_entry = _entry(firm, late, OLD, "5")

    expenses = _project(firm, "P-EXP")
    m.Expense.objects.create(
        resource=firm.worker,
        project=expenses,
        date=OLD,
        category="Travel",
        amount=Decimal("240.50"),
        currency="EUR",
        approval_state=m.ApprovalState.APPROVED,
    )
    return Planted(
        firm,
        healthy,
        changed,
        changed_entry,
        invoice_off,
        voided,
        closed,
        late,
        late_entry,
        expenses,
    )


def test_each_kind_of_gap_is_found_stored_and_reported_to_its_queue() -> None:
    p = _plant()
    run = reconcile_connection(connection_id=p.firm.erp.pk)
    assert run is not None
    assert run.state == "done", run.error
    gaps = {(g.kind, _code(g)): g for g in run.gaps.select_related("project")}
    assert set(gaps) == {
        ("posting_mismatch", "P-CHG"),
        ("invoice_mismatch", "P-INV"),
        ("invoice_missing", "P-VOID"),
        ("closed_unbilled", "P-CLOSED"),
        ("time_unbilled", "P-LATE"),
        ("expenses_unbilled", "P-EXP"),
    }
    changed = gaps[("posting_mismatch", "P-CHG")]
    assert (changed.measure, changed.expected, changed.found) == ("hours", 8, 6)
    assert (changed.difference, changed.hours, changed.amount) == (2, 2, 200)
    assert changed.period == _month(RECENT)
    off = gaps[("invoice_mismatch", "P-INV")]
    assert (off.expected, off.found, off.difference, off.invoice_id) == (
        720,
        500,
        220,
        p.invoice_off.pk,
    )
    closed = gaps[("closed_unbilled", "P-CLOSED")]
    assert (closed.expected, closed.found, closed.hours, closed.amount) == (6.5, 4, 2.5, 250)
    late = gaps[("time_unbilled", "P-LATE")]
    assert (late.period, late.hours, late.amount, late.currency) == (_month(OLD), 5, 500, "EUR")
    assert gaps[("expenses_unbilled", "P-EXP")].amount == Decimal("240.50")
    assert run.gap_count == 6
    assert run.cases_touched == 6

    cases = _open_cases()
    queues = {name: case.queue for name, case in cases.items()}
    assert queues == {
        "reconciliation_posting_mismatch": Queue.FINANCE,
        "reconciliation_invoice_mismatch": Queue.FINANCE,
        "reconciliation_invoice_missing": Queue.FINANCE,
        "reconciliation_closed_project_unbilled": Queue.PMO,
        "reconciliation_time_unbilled": Queue.FINANCE,
        "reconciliation_expenses_unbilled": Queue.FINANCE,
    }
    for gap in gaps.values():
        assert gap.exception_case is not None
        assert gap.exception_case.connection_id == p.firm.erp.pk
    month = f"{RECENT:%B %Y}"
    assert cases["reconciliation_posting_mismatch"].message == (
        f"Reconciliation of project P-CHG Project P-CHG for {month}: the ERP does not hold what "
        "the PSA approved and Concord billed: 8.00 hours approved, 6.00 hours posted to the ERP. "
        "1 billing event (EUR 200.00, 2.00 hours) differ (changed in the PSA after it was "
        "invoiced). Correct the side that is wrong (the invoice in the ERP, or the time in the "
        "PSA); the next reconciliation checks again and closes this case once it matches."
    )
    invoice_case = cases["reconciliation_invoice_mismatch"].message
    assert f"invoice {p.invoice_off.number} for Acme GmbH" in invoice_case
    assert "add up to EUR 720.00, but the invoice's subtotal is EUR 500.00" in invoice_case
    assert f"invoice {p.voided.number} was voided in the ERP" in (
        cases["reconciliation_invoice_missing"].message
    )
    closed_case = cases["reconciliation_closed_project_unbilled"]
    assert closed_case.message.startswith(
        f"Reconciliation of project P-CLOSED Project P-CLOSED for {month}: the project is closed "
        "in the PSA, but 1 approved time entry (EUR 250.00, 2.50 hours) of the month were never "
        "billed (6.50 hours approved, 4.00 hours billed)."
    )
    assert closed_case.project_id == p.closed.pk
    assert "more than 40 days after the work" in cases["reconciliation_time_unbilled"].message
    assert BlockedRecord.objects.filter(
        case=cases["reconciliation_time_unbilled"], record_type="timeentry"
    ).get().record_id == (p.late_entry.pk)


def test_unbilled_expenses_are_no_gap_until_expenses_are_billed(settings: Any) -> None:
    p = _plant()
    settings.CONCORD_RECONCILE_EXPENSES = False
    run = reconcile_connection(connection_id=p.firm.erp.pk)
    assert run is not None
    kinds = set(run.gaps.values_list("kind", flat=True))
    assert "expenses_unbilled" not in kinds
    assert "time_unbilled" in kinds


def test_a_fixed_gap_resolves_its_case_on_the_next_run_and_reruns_change_nothing() -> None:
    p = _plant()
    reconcile_connection(connection_id=p.firm.erp.pk)
    first = {name: (c.pk, c.record_count) for name, c in _open_cases().items()}
    again = reconcile_connection(connection_id=p.firm.erp.pk)
    assert again is not None
    assert again.gap_count == 6
    assert again.records_cleared == 0
    # Idempotent: the same cases, holding the same records, no new case.
    assert {name: (c.pk, c.record_count) for name, c in _open_cases().items()} == first
    assert ExceptionCase.objects.filter(process="reconciliation").count() == 6

    # Fixed where they live: the late time billed, the PSA's hours put back.
    _bill([p.late_entry])
    m.TimeEntry.objects.filter(pk=p.changed_entry.pk).update(hours=Decimal("6"))
    fixed = reconcile_connection(connection_id=p.firm.erp.pk)
    assert fixed is not None
    assert (fixed.gap_count, fixed.records_cleared, fixed.cases_resolved) == (4, 2, 2)
    resolved = ExceptionCase.objects.get(pk=first["reconciliation_time_unbilled"][0])
    assert resolved.status == "resolved"
    assert f"reconciliation run #{fixed.pk} no longer finds this gap" in resolved.resolution_note
    assert "reconciliation_posting_mismatch" not in _open_cases()
    assert set(_open_cases()) == {
        "reconciliation_invoice_mismatch",
        "reconciliation_invoice_missing",
        "reconciliation_closed_project_unbilled",
        "reconciliation_expenses_unbilled",
    }


def test_a_connection_reconciles_only_the_legal_entities_routed_to_it() -> None:
    firm = _firm(default_route=False)
    other = make_connection(name="Legacy Xero")
    m.RoutingRule.objects.create(role="erp", connection=other)  # the default
    m.RoutingRule.objects.create(role="erp", legal_entity=firm.entity, connection=firm.erp)
    mine = _project(firm, "P-MINE")
    _entry(firm, mine, OLD)
    elsewhere = LegalEntityFactory.create()
    theirs = ProjectFactory.create(code="P-THEIRS", legal_entity=elsewhere, contract=None)
    _entry(firm, theirs, OLD)
    no_entity = ProjectFactory.create(code="P-NONE", legal_entity=None, contract=None)
    _entry(firm, no_entity, OLD)

    run = reconcile_connection(connection_id=firm.erp.pk)
    assert run is not None
    assert [_code(g) for g in run.gaps.select_related("project")] == ["P-MINE"]
    default = reconcile_connection(connection_id=other.pk)
    assert default is not None
    assert sorted(_code(g) for g in default.gaps.select_related("project")) == [
        "P-NONE",
        "P-THEIRS",
    ]
    # Each connection's cases are its own: a run of one clears nothing of the other's.
    assert ExceptionCase.objects.filter(process="reconciliation", status="open").count() == 3
    psa = make_connection(
        name="Harvest", role="psa", vendor="harvest", base_url="https://api.harvestapp.com/v2"
    )
    assert reconcile_connection(connection_id=psa.pk) is None  # not an ERP: nothing to do
    unrouted = make_connection(name="Unrouted Xero")
    empty = reconcile_connection(connection_id=unrouted.pk)
    assert empty is not None
    assert empty.gap_count == 0


def test_the_task_runs_one_reconciliation_and_a_case_retry_reconciles_again() -> None:
    p = _plant()
    result = tasks.reconcile_connection_task(p.firm.erp.pk)
    assert result["state"] == "done"
    assert result["gaps"] == 6
    case = _open_cases()["reconciliation_time_unbilled"]
    _bill([p.late_entry])
    handler = retry_handler_for(case)
    assert handler is not None
    outcome = handler(case)
    assert outcome.count == 1
    assert "reconciled again" in outcome.summary
    case.refresh_from_db()
    assert case.status == "resolved"
    assert m.AuditEvent.objects.filter(object_type="reconciliationrun").count() == 2


def test_a_failed_run_is_stored_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    firm = _firm()
    _entry(firm, _project(firm, "P-1"), OLD)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr("integrations.workflows.reconciliation._time_unbilled", broken)
    run = reconcile_connection(connection_id=firm.erp.pk)
    assert run is not None
    assert run.state == "failed"
    assert run.error == "RuntimeError: database went away"
    assert not m.ReconciliationGap.objects.exists()
    assert not ExceptionCase.objects.filter(process="reconciliation").exists()


# --- One report per fact -------------------------------------------------------------------------


def _held(case: ExceptionCase) -> list[int]:
    return sorted(BlockedRecord.objects.filter(case=case).values_list("record_id", flat=True))


def _run(firm: Firm) -> m.ReconciliationRun:
    run = reconcile_connection(connection_id=firm.erp.pk)
    assert run is not None
    assert run.state == "done", run.error
    return run


def test_time_on_a_closed_project_is_reported_once_on_the_billing_runs_case() -> None:
    firm = _firm()
    closed = _project(firm, "P-SHUT", status=m.Project.Status.CLOSED)
    seen = _entry(firm, closed, RECENT, "3")
    # The billing run met the entry first: PMO has its case for time on an inactive project.
    assert billing_run(entry_ids=[seen.pk]).blocked == 1
    billing = ExceptionCase.objects.get(case_type="time_on_inactive_project", status="open")
    assert billing.queue == Queue.PMO
    assert _held(billing) == [seen.pk]

    run = _run(firm)
    (gap,) = run.gaps.all()
    assert (gap.kind, gap.hours, gap.amount, gap.records) == ("closed_unbilled", 3, 300, 1)
    assert gap.exception_case_id == billing.pk  # the gap is known, on the case that reports it
    assert not ExceptionCase.objects.filter(process="reconciliation").exists()
    assert run.cases_touched == 0

    # Time the billing run has not seen yet is reconciliation's to report, and only that.
    unseen = _entry(firm, closed, RECENT, "2")
    run = _run(firm)
    own = ExceptionCase.objects.get(case_type="reconciliation_closed_project_unbilled")
    assert _held(own) == [unseen.pk]
    (gap,) = run.gaps.all()
    assert (gap.hours, gap.records, gap.exception_case_id) == (5, 2, own.pk)

    # Once the billing run holds it too, the next run takes it off reconciliation's case.
    billing_run(entry_ids=[unseen.pk])
    assert _held(billing) == [seen.pk, unseen.pk]
    run = _run(firm)
    own.refresh_from_db()
    assert own.status == "resolved"
    assert "billing run's case for time on an inactive project" in own.resolution_note
    assert (run.records_cleared, run.cases_resolved) == (1, 1)
    open_for_project = ExceptionCase.objects.filter(status="open", project=closed)
    assert list(open_for_project) == [billing]

    # PMO waived the billing run's case (the time will not be billed): reconciliation does not
    # report the same time again.
    pmo = UserFactory.create(role=PMO)
    case_waive(actor=pmo, case_id=billing.pk, revision=billing.revision, reason="Goodwill")
    run = _run(firm)
    (gap,) = run.gaps.all()
    assert gap.exception_case_id == billing.pk
    assert not ExceptionCase.objects.filter(status="open", project=closed).exists()


def test_a_waived_gap_stays_waived_until_its_figures_change() -> None:
    firm = _firm()
    late = _project(firm, "P-LATE")
    entry = _entry(firm, late, OLD, "5")
    other = _project(firm, "P-OTHER")
    _entry(firm, other, OLD, "1")
    _run(firm)
    cases = {c.project_id: c for c in ExceptionCase.objects.filter(process="reconciliation")}
    waived = cases[late.pk]
    finance = UserFactory.create(role=FINANCE)
    case_waive(
        actor=finance, case_id=waived.pk, revision=waived.revision, reason="Agreed not to bill"
    )

    for _ in range(2):  # the waiver holds run after run while the gap is as it was
        run = _run(firm)
        gaps = {g.project_id: g for g in run.gaps.all()}
        assert gaps[late.pk].exception_case_id == waived.pk
        assert gaps[late.pk].hours == 5
        assert run.cases_touched == 1  # the other project's case only, joined again
        assert set(_open_cases().values()) == {cases[other.pk]}
        waived.refresh_from_db()
        assert waived.status == "waived"
    assert ExceptionCase.objects.filter(process="reconciliation").count() == 2

    # The gap changes (more hours approved on the entry): a new case for the gap as it is now.
    m.TimeEntry.objects.filter(pk=entry.pk).update(hours=Decimal("7"))
    run = _run(firm)
    reopened = ExceptionCase.objects.get(process="reconciliation", status="open", project=late)
    assert reopened.pk != waived.pk
    assert reopened.hours_blocked == 7
    assert run.gaps.get(project=late).exception_case_id == reopened.pk
    waived.refresh_from_db()
    assert waived.status == "waived"


# --- At scale -----------------------------------------------------------------------------------


def _bulk_firm(firm: Firm, projects: int, per_project: int) -> list[m.Project]:
    """`projects` projects with `per_project` approved entries each over the last ten months,
    every one billed and delivered (one invoice per project), written in bulk."""
    made = m.Project.objects.bulk_create(
        m.Project(
            code=f"S-{i:04d}",
            name=f"Scale {i}",
            customer=firm.customer,
            contract=firm.contract,
            legal_entity=firm.entity,
            currency="EUR",
            status=m.Project.Status.ACTIVE,
        )
        for i in range(projects)
    )
    entries = m.TimeEntry.objects.bulk_create(
        m.TimeEntry(
            resource=firm.worker,
            project=project,
            date=TODAY - timedelta(days=(i * 29) % 300 + 1),
            hours=Decimal("7.50"),
            approval_state=m.ApprovalState.APPROVED,
        )
        for project in made
        for i in range(per_project)
    )
    line = (Decimal("7.50") * RATE).quantize(Decimal("0.01"))
    total = line * per_project
    invoices = m.Invoice.objects.bulk_create(
        m.Invoice(
            legal_entity=firm.entity,
            customer=firm.customer,
            contract=firm.contract,
            currency="EUR",
            issue_date=TODAY,
            subtotal=total,
            tax_total=Decimal("0"),
            total=total,
            amount_due=total,
            number=f"S-INV-{i:04d}",
            source_system="erp",
        )
        for i in range(projects)
    )
    by_project = {p.pk: inv for p, inv in zip(made, invoices, strict=True)}
    m.BillingEvent.objects.bulk_create(
        (
            m.BillingEvent(
                source=m.BillingEvent.Source.TIME,
                time_entry=e,
                project_id=e.project_id,
                contract=firm.contract,
                legal_entity=firm.entity,
                description=f"TE-{e.pk}",
                quantity=e.hours,
                unit_amount=RATE,
                amount=line,
                currency="EUR",
                status=m.BillingEvent.Status.INVOICED,
                invoice=by_project[e.project_id],
            )
            for e in entries
        ),
        batch_size=2000,
    )
    return made


def test_at_scale_exactly_the_planted_gaps_are_found_in_a_handful_of_queries() -> None:
    firm = _firm()
    projects = _bulk_firm(firm, projects=300, per_project=12)  # 3,600 entries, all billed
    assert m.TimeEntry.objects.count() == 3600
    # Noise that is no gap: in-flight work on every tenth project.
    for project in projects[::10]:
        _entry(firm, project, RECENT, "1")  # approved yesterday-ish, billed by the next run
    # The planted gaps.
    changed = m.BillingEvent.objects.filter(project=projects[17]).order_by("pk").first()
    assert changed is not None
    m.TimeEntry.objects.filter(billing_event=changed).update(hours=Decimal("5"))
    m.Invoice.objects.filter(number="S-INV-0042").update(subtotal=Decimal("1"), total=Decimal("1"))
    m.Project.objects.filter(pk=projects[99].pk).update(status=m.Project.Status.CLOSED)
    _entry(firm, projects[99], RECENT, "3")
    late = [_entry(firm, projects[123], OLD, h) for h in ("1", "2", "3")]
    stuck = _bill([_entry(firm, projects[250], RECENT, "4")], delivered=False)
    m.BillingEvent.objects.filter(invoice=stuck).update(
        created_at=timezone.now() - timedelta(hours=30)
    )

    with CaptureQueriesContext(db) as queries:
        run = reconcile_connection(connection_id=firm.erp.pk)
    assert run is not None
    assert run.state == "done", run.error
    found = sorted((g.kind, _code(g)) for g in run.gaps.select_related("project"))
    assert found == [
        ("closed_unbilled", "S-0099"),
        ("invoice_mismatch", "S-0042"),
        ("posting_mismatch", "S-0017"),
        ("posting_mismatch", "S-0250"),
        ("time_unbilled", "S-0123"),
    ]
    gap = run.gaps.get(kind="time_unbilled")
    assert (gap.hours, gap.amount, gap.records) == (6, 600, len(late))
    stuck_gap = run.gaps.get(project=projects[250])
    assert "still not in the ERP 24 hours after billing" in stuck_gap.detail
    # Set-based: the comparisons are a fixed number of queries (about a dozen: routes, two per
    # kind of gap, labels, what the cases hold), whatever the number of projects; the rest is
    # the case write of each gap (about ten to open one, a few to join it again).
    print(f"reconcile_run_ms={run.duration_ms} queries={len(queries)}")
    assert len(queries) <= 16 + 10 * run.gap_count, len(queries)
    with CaptureQueriesContext(db) as again:
        rerun = reconcile_connection(connection_id=firm.erp.pk)
    assert rerun is not None
    assert rerun.gap_count == 5
    assert rerun.records_cleared == 0
    assert len(again) <= 16 + 5 * rerun.gap_count, len(again)


# --- The API -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [FINANCE, INTEGRATION_ADMIN])
def test_finance_and_admins_list_runs_and_gaps_with_filters(api_client_as: Any, role: str) -> None:
    p = _plant()
    run = reconcile_connection(connection_id=p.firm.erp.pk)
    assert run is not None
    client = api_client_as(role)
    runs = client.get(f"/api/v1/reconciliation/runs/?connection={p.firm.erp.pk}").json()
    assert runs["count"] == 1
    assert runs["results"][0]["gap_count"] == 6
    assert runs["results"][0]["connection_name"] == p.firm.erp.name
    gaps = client.get("/api/v1/reconciliation/gaps/?kind=closed_unbilled&latest=true").json()
    (gap,) = gaps["results"]
    assert gap["project_code"] == "P-CLOSED"
    assert gap["hours"] == "2.50"
    assert gap["amount"] == "250.00"
    assert gap["case_status"] == "open"
    assert "the project is closed in the PSA" in gap["case_message"]
    month = f"{RECENT:%Y-%m}-01"
    by_code = client.get(
        f"/api/v1/reconciliation/gaps/?project_code=p-late&period_from={month}"
    ).json()
    assert by_code["count"] == 0  # its gap is in an older month
    assert client.get("/api/v1/reconciliation/gaps/?project_code=p-late").json()["count"] == 1


@pytest.mark.parametrize("role", [PMO, VIEWER, ""])
def test_others_cannot_read_reconciliation(api_client_as: Any, role: str) -> None:
    client = api_client_as(role)
    assert client.get("/api/v1/reconciliation/runs/").status_code == 403
    assert client.get("/api/v1/reconciliation/gaps/").status_code == 403
