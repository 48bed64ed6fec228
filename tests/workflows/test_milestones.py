"""Milestone to invoice against the real sandbox: a milestone PMO completes in Harvest, read by
inbound processing as its change feed would have it, becomes one billing event and one draft
invoice in Xero, and is marked invoiced in Concord and in Harvest; each thing the contract or
the data lacks is a case in the queue that can fix it, naming the milestone, project, customer
and the amount blocked; fixing it resumes the run where it stopped; a completion delivered
twice (or more) changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from exceptions.actions import case_retry
from exceptions.models import ExceptionCase, Queue
from integrations.mapping.selectors import mapping_cache_clear
from integrations.models import (
    BillingEvent,
    Connection,
    Contract,
    FieldMapping,
    Invoice,
    Milestone,
    OutboxMessage,
    Project,
    RoutingRule,
    RunState,
    StepState,
    TaxRate,
    WorkflowRun,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO
from integrations.sync.outbox import outbox_flushed_at
from integrations.sync.records import record_update
from integrations.workflows.fixes import fix_apply
from integrations.workflows.milestones import PROCESS, milestone_billing_sweep
from integrations.workflows.time_to_erp import billing_run
from tests.factories import UserFactory
from tests.firms import MilestoneFirm, outbox_drain
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    NEW_TENANT,
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db

STEPS = ["validate", "bill", "mark_invoiced"]


class Firm(MilestoneFirm):
    box: Sandbox


@pytest.fixture
def firm(sandbox: Sandbox, make_connection: Callable[..., Connection]) -> Firm:  # noqa: F811
    made = Firm(sandbox.url, make_connection("harvest"), make_connection("xero"))
    made.box = sandbox
    return made


def _runs() -> list[WorkflowRun]:
    return list(WorkflowRun.objects.filter(process=PROCESS).order_by("pk"))


def _steps(run: WorkflowRun) -> dict[str, Any]:
    return {s.name: s for s in run.steps.order_by("position")}


def _xero_invoices(firm: Firm) -> list[dict[str, Any]]:
    return [{**r["data"], "id": r["id"]} for r in firm.box.records("xero", "Invoices", NEW_TENANT)]


def _completed(firm: Firm, name: str = "Design signed off", amount: str = "12500") -> str:
    """A milestone Concord has read while open, then completed in Harvest."""
    milestone_id = firm.milestone(name, amount, "2026-11-30")
    assert firm.deliver(milestone_id) == "applied"  # read while open: no run
    assert not _runs()
    firm.complete(milestone_id)
    return milestone_id


def test_a_completed_milestone_is_invoiced_and_marked_invoiced_in_every_system(
    firm: Firm,
) -> None:
    harvest_id = _completed(firm)

    assert firm.deliver(harvest_id) == "applied"
    outbox_drain()

    (run,) = _runs()
    assert run.state == RunState.DONE, _steps(run)
    steps = _steps(run)
    assert [s.state for s in steps.values()] == [StepState.DONE] * len(STEPS)
    milestone = Milestone.objects.get()
    assert milestone.status == Milestone.Status.INVOICED
    event = BillingEvent.objects.get()
    assert (event.source, event.milestone, event.amount, event.currency) == (
        BillingEvent.Source.MILESTONE,
        milestone,
        Decimal("12500.00"),
        "GBP",
    )
    invoice = Invoice.objects.get()
    assert (event.status, event.invoice) == (BillingEvent.Status.INVOICED, invoice)
    assert (invoice.subtotal, invoice.tax_total, invoice.total) == (
        Decimal("12500.00"),
        Decimal("2500.00"),
        Decimal("15000.00"),
    )
    assert (invoice.contract, invoice.customer) == (firm.contract, firm.customer)
    # The ERP: one draft invoice with the milestone's amount, found by Concord's reference.
    (xero,) = _xero_invoices(firm)
    assert xero["Reference"] == f"CONCORD-INV-{invoice.pk}"
    assert invoice.number == xero["InvoiceNumber"]
    assert invoice.source_system == "erp"
    contacts = {c["id"]: c["data"] for c in firm.box.records("xero", "Contacts", NEW_TENANT)}
    assert contacts[xero["ContactID"]]["Name"] == firm.customer.name
    ((line),) = xero["LineItems"]
    assert line["Description"].startswith(f"MS-{milestone.pk} Milestone Design signed off")
    assert (line["Quantity"], line["UnitAmount"], line["TaxType"]) == (1.0, 12500.0, "OUTPUT2")
    assert steps["bill"].external_ids["erp"]["invoice"] == xero["id"]
    # The PSA: the milestone is invoiced there too.
    assert firm.in_harvest(harvest_id)["status"] == "invoiced"
    assert steps["mark_invoiced"].external_ids["psa"]["milestone"] == harvest_id
    assert not ExceptionCase.objects.filter(status="open").exists()


def test_a_completion_delivered_three_times_is_one_run_and_one_invoice(firm: Firm) -> None:
    harvest_id = _completed(firm)

    firm.deliver(harvest_id)
    firm.deliver(harvest_id)  # again before anything was sent
    outbox_drain()
    rows = OutboxMessage.objects.count()
    firm.complete(harvest_id, notes="re-saved")  # PMO saves it again
    firm.deliver(harvest_id)  # and once it is all done
    outbox_drain()

    (run,) = _runs()
    assert run.state == RunState.DONE
    assert OutboxMessage.objects.count() == rows == 2  # the invoice and the status
    assert len(_xero_invoices(firm)) == 1
    assert BillingEvent.objects.count() == 1
    assert Invoice.objects.count() == 1
    assert firm.box.stats("xero", "Invoices").get("duplicates_detected", 0) == 0


CASES: dict[str, tuple[str, str]] = {
    "no_contract": ("milestone_project_without_contract", Queue.PMO),
    "hourly_contract": ("milestone_contract_terms", Queue.FINANCE),
    "other_currency": ("milestone_amount_mismatch", Queue.FINANCE),
    "over_the_contract_value": ("milestone_amount_mismatch", Queue.FINANCE),
    "earlier_milestone_open": ("milestone_dependency_open", Queue.PMO),
    "no_tax_number": ("milestone_tax_number_missing", Queue.FINANCE),
    "no_erp_route": ("no_erp_route", Queue.INTEGRATION_ADMIN),
}


@pytest.mark.parametrize("flaw", list(CASES))
def test_each_missing_term_is_a_case_naming_the_milestone_and_the_amount_it_blocks(
    firm: Firm, flaw: str
) -> None:
    contract = firm.contract
    if flaw == "no_contract":
        firm.project.contract = None
        firm.project.save()
    elif flaw == "hourly_contract":
        Contract.objects.filter(pk=contract.pk).update(billing_model="tm", status="draft")
    elif flaw == "other_currency":
        Contract.objects.filter(pk=contract.pk).update(currency="EUR")
    elif flaw == "over_the_contract_value":
        Contract.objects.filter(pk=contract.pk).update(total_value=Decimal("10000"))
    elif flaw == "earlier_milestone_open":
        kickoff = firm.milestone("Kick-off", "5000", "2026-10-15")
        firm.deliver(kickoff)
    elif flaw == "no_tax_number":
        reverse = TaxRate.objects.create(
            code="ECZROUTPUTSERVICES",
            name="Reverse charge",
            country="GB",
            rate_percent=0,
            requires_customer_tax_number=True,
        )
        Contract.objects.filter(pk=contract.pk).update(tax_rate=reverse)
    elif flaw == "no_erp_route":
        RoutingRule.objects.filter(role="erp").delete()
        Connection.objects.create(
            name="Legacy ERP", role="erp", vendor="xero", base_url="http://127.0.0.1:1/x"
        )
    harvest_id = _completed(firm)

    firm.deliver(harvest_id)

    (run,) = _runs()
    case_type, queue = CASES[flaw]
    case = ExceptionCase.objects.get(case_type=case_type)
    assert case.queue == queue
    assert (run.state, run.current_step, run.exception_case) == (RunState.BLOCKED, "validate", case)
    assert case.blocked_records.filter(record_type="workflowrun", record_id=run.pk).exists()
    assert (case.amount_blocked, case.currency) == (Decimal("12500.00"), "GBP")
    assert "1 completed milestone (GBP 12,500.00)" in case.message
    if case_type.startswith("milestone_"):
        for named in ("Design signed off", firm.project.code, firm.customer.name):
            assert named in case.message, (named, case.message)
    assert case.project_id == firm.project.pk
    # Nothing was billed or sent anywhere.
    assert not OutboxMessage.objects.exists()
    assert not BillingEvent.objects.exists()
    assert _steps(run)["bill"].state == StepState.PENDING


def test_terms_fixed_in_the_contract_resume_the_run_at_validation(firm: Firm) -> None:
    Contract.objects.filter(pk=firm.contract.pk).update(status="draft")
    firm.deliver(_completed(firm))
    case = ExceptionCase.objects.get(case_type="milestone_contract_terms")
    assert "is not active (status draft)" in case.message

    record_update(record=firm.contract, data={"status": "active"}, actor=None)
    finance = UserFactory.create(role=FINANCE)
    outcome = case_retry(actor=finance, case_id=case.pk, revision=case.revision)
    outbox_drain()

    assert "resumed 1 milestone billing run" in outcome.summary
    (run,) = _runs()
    assert run.state == RunState.DONE
    assert _steps(run)["validate"].attempts == 2
    case.refresh_from_db()
    assert case.status == "resolved"
    assert len(_xero_invoices(firm)) == 1


def test_a_later_milestone_waits_for_the_earlier_one_and_goes_on_once_it_is_complete(
    firm: Firm,
) -> None:
    kickoff = firm.milestone("Kick-off", "5000", "2026-10-15")
    firm.deliver(kickoff)
    design = _completed(firm)
    firm.deliver(design)
    case = ExceptionCase.objects.get(case_type="milestone_dependency_open")
    assert "\u201cKick-off\u201d (due 2026-10-15)" in case.message

    firm.complete(kickoff)
    firm.deliver(kickoff)  # its completion also resumes the design milestone's run
    outbox_drain()

    assert [r.state for r in _runs()] == [RunState.DONE, RunState.DONE]
    case.refresh_from_db()
    assert case.status == "resolved"
    amounts = sorted(i["SubTotal"] for i in _xero_invoices(firm))
    assert amounts == [5000.0, 12500.0]
    assert set(Milestone.objects.values_list("status", flat=True)) == {"invoiced"}


def test_the_sweep_starts_a_run_for_a_completion_no_delivery_handed_over(
    firm: Firm, django_capture_on_commit_callbacks: Any
) -> None:
    harvest_id = firm.milestone("Go-live", "8000", "2026-12-15")
    firm.deliver(harvest_id)
    Milestone.objects.update(status=Milestone.Status.COMPLETE)  # as a poll would store it
    flushed = outbox_flushed_at()

    with django_capture_on_commit_callbacks(execute=True):
        assert milestone_billing_sweep() == 1
    # Its last run's invoice need not linger for more (dispatch): the sweep is done.
    assert outbox_flushed_at() > flushed
    assert milestone_billing_sweep() == 0  # it has its run now
    outbox_drain()

    (run,) = _runs()
    assert run.state == RunState.DONE
    assert len(_xero_invoices(firm)) == 1


def test_a_project_linked_in_place_resumes_the_run_and_invoices_the_milestone(
    firm: Firm,
) -> None:
    Project.objects.filter(pk=firm.project.pk).update(contract=None)
    firm.deliver(_completed(firm))
    case = ExceptionCase.objects.get(case_type="milestone_project_without_contract")

    pmo = UserFactory.create(role=PMO)
    result = fix_apply(
        actor=pmo, case_id=case.pk, revision=case.revision, values={"contract": firm.contract}
    )
    outbox_drain()

    assert result.status == "resolved"
    (run,) = _runs()
    assert run.state == RunState.DONE
    assert len(_xero_invoices(firm)) == 1


def test_a_status_the_psa_mapping_cannot_write_holds_the_run_after_the_invoice(
    firm: Firm,
) -> None:
    """The published x_milestones mapping carries no outbound status: the invoice is in Xero,
    the run waits at mark_invoiced on the integration admins' case; once the mapping writes
    the status again the case's retry finishes the run without a second invoice."""
    status = FieldMapping.objects.filter(
        mapping_set__connection=firm.psa,
        mapping_set__object_type="x_milestones",
        mapping_set__status="published",
        canonical_field="status",
    )
    status.update(direction="in")
    mapping_cache_clear()
    firm.deliver(_completed(firm))
    outbox_drain()

    (run,) = _runs()
    assert (run.state, run.current_step) == (RunState.BLOCKED, "mark_invoiced")
    case = run.exception_case
    assert case is not None
    assert case.case_type == "outbound_mapping_error"
    assert case.queue == Queue.INTEGRATION_ADMIN
    assert "writes no status" in case.message
    assert Milestone.objects.get().status == Milestone.Status.INVOICED  # Concord's part is done
    assert firm.in_harvest(str(run.input["external_id"]))["status"] == "complete"
    bill_tries = _steps(run)["bill"].attempts

    status.update(direction="both")
    mapping_cache_clear()
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    case_retry(actor=admin, case_id=case.pk, revision=case.revision)
    outbox_drain()

    run.refresh_from_db()
    assert run.state == RunState.DONE
    assert _steps(run)["bill"].attempts == bill_tries
    case.refresh_from_db()
    assert case.status == "resolved"
    assert firm.in_harvest(str(run.input["external_id"]))["status"] == "invoiced"
    assert len(_xero_invoices(firm)) == 1


def test_the_billing_run_leaves_a_milestone_invoice_on_its_way_alone(firm: Firm) -> None:
    """The billing run renders again the invoices of pending billing events that have no row
    of its own: the milestone's invoice, queued and not yet delivered, is not one of them."""
    firm.deliver(_completed(firm))
    assert OutboxMessage.objects.filter(step="bill", state="pending").count() == 1

    billing_run()
    outbox_drain()

    assert OutboxMessage.objects.filter(operation="put_invoices").count() == 1
    assert len(_xero_invoices(firm)) == 1
    assert _runs()[0].state == RunState.DONE
