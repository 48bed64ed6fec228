"""Change orders against the real sandbox: a provisioned contract amended in Salesforce (read by
inbound processing as its webhook would have it) updates the project's budget and dates in
Harvest and Concord, lists every change on its run, keeps invoiced time as it was invoiced, is
one run however often it is delivered, and refuses a budget below what is invoiced on a sales
ops case that the corrected amendment closes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from exceptions.actions import case_retry
from exceptions.models import ExceptionCase, Queue
from integrations.models import (
    BillingEvent,
    Connection,
    Contract,
    OutboxMessage,
    Project,
    RateCard,
    RunState,
    StepState,
    WorkflowRun,
)
from integrations.roles import INTEGRATION_ADMIN, SALES_OPS
from integrations.workflows import provisioning
from integrations.workflows.change_orders import BUDGET_CASE, PROCESS, change_order_start
from integrations.workflows.checks import run_stuck_check
from integrations.workflows.time_to_erp import billing_run
from tests.factories import UserFactory
from tests.firms import ChangeOrderFirm, approved_time, invoiced_time
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    NEW_TENANT,
    XERO_SECRET,
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db

STEPS = ["assess", "psa_project", "concord", "erp"]


class Firm(ChangeOrderFirm):
    box: Sandbox
    contract_id: str
    project: Project


@pytest.fixture
def firm(sandbox: Sandbox, make_connection: Callable[..., Connection]) -> Firm:  # noqa: F811
    """The contract provisioned: its project in Harvest and Concord, ids written back."""
    made = Firm(
        sandbox.url,
        make_connection("salesforce"),
        make_connection("harvest"),
        make_connection("xero"),
    )
    made.box = sandbox
    made.tracking_category()
    customer = made.account()
    _, made.contract_id = made.crm_contract(customer)
    made.deliver(made.opportunity())
    made.drain()
    run = WorkflowRun.objects.get(process=provisioning.PROCESS)
    assert run.state == RunState.DONE, list(run.steps.values_list("name", "detail"))
    made.project = Project.objects.get(pk=run.context["project_id"])
    return made


def _harvest_project(firm: Firm) -> dict[str, Any]:
    (project,) = firm.box.records("harvest", "projects")
    return dict(project["data"])


def _runs() -> list[WorkflowRun]:
    return list(WorkflowRun.objects.filter(process=PROCESS).order_by("pk"))


def _steps(run: WorkflowRun) -> dict[str, Any]:
    return {s.name: s for s in run.steps.order_by("position")}


def test_the_contract_sent_again_unchanged_is_no_change_order(firm: Firm) -> None:
    # Provisioning wrote its ids on the contract; sales ops changes a non-commercial field.
    firm.amend(firm.contract_id, Description="Signed copy filed")
    assert firm.deliver_contract(firm.contract_id) == "applied"
    firm.drain()
    assert _runs() == []
    assert _harvest_project(firm)["cost_budget"] == 120000


def test_an_amended_budget_and_term_reach_harvest_and_concord_with_each_change_listed(
    firm: Firm,
) -> None:
    before = _harvest_project(firm)
    assert (before["cost_budget"], before["ends_on"]) == (120000, "2027-10-31")

    firm.amend(firm.contract_id, Budget__c=150000, ContractTerm=18)
    assert firm.deliver_contract(firm.contract_id) == "applied"
    firm.drain()

    (run,) = _runs()
    steps = _steps(run)
    assert run.state == RunState.DONE, {n: (s.state, s.detail) for n, s in steps.items()}
    assert list(steps) == STEPS
    assert [s.state for s in steps.values()] == [
        StepState.DONE,
        StepState.DONE,
        StepState.DONE,
        StepState.SKIPPED,
    ]
    after = _harvest_project(firm)
    assert (after["cost_budget"], after["ends_on"]) == (150000, "2028-04-30")
    # Only the amended terms were sent: the rest of the Harvest project is as it was.
    assert (after["name"], after["code"], after["notes"]) == (
        before["name"],
        before["code"],
        before["notes"],
    )
    project = Project.objects.get(pk=firm.project.pk)
    assert (project.budget, project.end_date) == (Decimal("150000.00"), date(2028, 4, 30))
    code = project.code
    assert sorted(
        (c["system"], c["record"], c["field"], c["before"], c["after"])
        for c in run.context["changes"]
    ) == [
        ("Concord", f"project {code}", "budget", "120000.00", "150000.00"),
        ("Concord", f"project {code}", "end date", "2027-10-31", "2028-04-30"),
        ("PSA", f"project {code}", "budget", "120000.00", "150000.00"),
        ("PSA", f"project {code}", "end date", "2027-10-31", "2028-04-30"),
    ]
    psa_id = steps["psa_project"].external_ids["psa"][code]
    assert f"project {psa_id} ({code}): budget 120,000.00 -> 150,000.00" in (
        steps["psa_project"].detail
    )
    assert "end date 2027-10-31 -> 2028-04-30" in steps["psa_project"].detail
    assert "Nothing to send to the ERP: it keeps no project budgets or dates" in (
        steps["erp"].detail
    )
    assert f"project {code}: nothing invoiced yet" in steps["erp"].detail
    assert run.subject_id is not None
    assert run.label.startswith("Contract ")


def test_a_redelivered_amendment_is_the_same_run_and_one_write(firm: Firm) -> None:
    updates = firm.box.stats("harvest", "projects")["updated"]
    firm.amend(firm.contract_id, Budget__c=135000)
    firm.deliver_contract(firm.contract_id)
    assert firm.deliver_contract(firm.contract_id) == "stale"  # the same version
    firm.drain()
    firm.deliver_contract(firm.contract_id)
    firm.drain()

    (run,) = _runs()
    assert run.state == RunState.DONE
    # The arrival the engine hands over for each delivery of this version finds the same run.
    again = change_order_start(
        connection=firm.crm, external_id=firm.contract_id, contract_id=run.input["contract_id"]
    )
    assert again is not None
    assert again.pk == run.pk
    assert OutboxMessage.objects.filter(process=PROCESS).count() == 1
    assert firm.box.stats("harvest", "projects")["updated"] == updates + 1
    assert _harvest_project(firm)["cost_budget"] == 135000


def test_a_second_amendment_is_compared_with_the_first_one_given(firm: Firm) -> None:
    firm.amend(firm.contract_id, Budget__c=135000)
    firm.deliver_contract(firm.contract_id)
    firm.drain()
    firm.amend(firm.contract_id, Budget__c=140000)
    firm.deliver_contract(firm.contract_id)
    firm.drain()

    first, second = _runs()
    assert (first.state, second.state) == (RunState.DONE, RunState.DONE)
    assert [(c["system"], c["before"], c["after"]) for c in second.context["changes"]] == [
        ("PSA", "135000.00", "140000.00"),
        ("Concord", "135000.00", "140000.00"),
    ]
    assert _harvest_project(firm)["cost_budget"] == 140000


def test_invoiced_time_stays_as_it_was_invoiced_and_is_listed_on_the_run(firm: Firm) -> None:
    invoice = invoiced_time(firm.project, entries=10, hours="7.50", rate="140")
    amounts = sorted(BillingEvent.objects.values_list("pk", "amount", "unit_amount"))

    firm.amend(firm.contract_id, Budget__c=150000)
    firm.deliver_contract(firm.contract_id)
    firm.drain()

    (run,) = _runs()
    assert run.state == RunState.DONE
    erp = _steps(run)["erp"]
    assert erp.state == StepState.SKIPPED
    assert (
        f"project {firm.project.code}: 10 invoiced item(s) (75.00 hours, GBP 10,500.00) on "
        "invoice INV-0001 (authorised), kept as invoiced"
    ) in erp.detail
    invoice.refresh_from_db()
    assert (invoice.total, invoice.status) == (Decimal("10500.00"), "authorised")
    assert sorted(BillingEvent.objects.values_list("pk", "amount", "unit_amount")) == amounts
    assert not OutboxMessage.objects.filter(process=PROCESS, connection=firm.erp).exists()


def test_a_budget_below_what_is_invoiced_is_a_sales_ops_case_the_corrected_amendment_closes(
    firm: Firm,
) -> None:
    invoiced_time(firm.project, entries=20, hours="8.00", rate="150")  # GBP 24,000 invoiced

    firm.amend(firm.contract_id, Budget__c=20000)
    firm.deliver_contract(firm.contract_id)
    firm.drain()

    (run,) = _runs()
    assert (run.state, run.current_step) == (RunState.BLOCKED, "assess")
    case = ExceptionCase.objects.get(case_type=BUDGET_CASE)
    assert run.exception_case == case
    assert case.queue == Queue.SALES_OPS
    assert case.process == PROCESS
    assert "its budget of GBP 20,000.00 is below the GBP 24,000.00 already invoiced" in (
        case.message
    )
    assert f"project {firm.project.code}" in case.message
    assert "1 contract amendment (GBP 20,000.00)" in case.message
    # Nothing reached the PSA.
    assert not OutboxMessage.objects.filter(process=PROCESS).exists()
    assert _harvest_project(firm)["cost_budget"] == 120000

    # Retried while nothing changed: still held.
    user = UserFactory.create(role=SALES_OPS)
    case_retry(case_id=case.pk, actor=user, revision=case.revision)
    run.refresh_from_db()
    assert (run.state, run.current_step) == (RunState.BLOCKED, "assess")

    # Sales ops corrects the amendment in the CRM: it supersedes the held run.
    firm.amend(firm.contract_id, Budget__c=200000)
    firm.deliver_contract(firm.contract_id)
    firm.drain()

    held, corrected = _runs()
    assert corrected.state == RunState.DONE
    assert held.state == RunState.DONE
    assert held.context["superseded_by"] == corrected.pk
    assert {s.state for s in held.steps.all()} == {StepState.SKIPPED}
    held_at = _steps(held)["assess"].detail
    assert "is below what is already invoiced on project" in held_at
    assert f"Superseded by a later amendment of contract {held.input['contract']}" in held_at
    case.refresh_from_db()
    assert case.status != ExceptionCase.Status.OPEN
    assert _harvest_project(firm)["cost_budget"] == 200000


def test_an_amended_contract_rate_prices_unbilled_time_and_keeps_invoiced_time(
    firm: Firm,
) -> None:
    contract = Contract.objects.get(projects=firm.project)
    rate_id = firm.crm_rate(contract, firm.contract_id, role="Consultant", rate="150")
    invoice = invoiced_time(firm.project, entries=4, hours="7.50", rate="150")
    unbilled = approved_time(firm.project, days=[20, 21], hours="8.00")
    invoiced = sorted(BillingEvent.objects.values_list("pk", "amount", "unit_amount"))

    firm.amend_rate(rate_id, "165")
    assert firm.deliver_record("Contract_Rate__c", rate_id) == "applied"
    firm.drain()

    (run,) = _runs()
    steps = _steps(run)
    assert run.state == RunState.DONE, {n: (s.state, s.detail) for n, s in steps.items()}
    assert [s.state for s in steps.values()] == [
        StepState.DONE,
        StepState.SKIPPED,
        StepState.DONE,
        StepState.SKIPPED,
    ]
    card = RateCard.objects.get(contract=contract, role="Consultant", currency="GBP")
    assert card.bill_rate == Decimal("165.00")
    assert [
        (c["system"], c["record"], c["field"], c["before"], c["after"])
        for c in (run.context["changes"])
    ] == [
        (
            "Concord",
            f"rate card of contract {contract.number} for Consultant (GBP)",
            "bill rate",
            "150.00",
            "165.00",
        )
    ]
    assert "GBP 150.00 -> 165.00 an hour; 2 approved entries (16.00 hours)" in (
        steps["assess"].detail
    )
    assert "keeps no contract rates" in steps["psa_project"].detail
    assert (
        f"project {firm.project.code}: 4 invoiced item(s) (30.00 hours, GBP 4,500.00) on "
        "invoice INV-0001 (authorised), kept as invoiced"
    ) in steps["erp"].detail
    # Nothing was sent anywhere; what was invoiced at 150 stays at 150.
    assert not OutboxMessage.objects.filter(process=PROCESS).exists()
    assert sorted(BillingEvent.objects.values_list("pk", "amount", "unit_amount")) == invoiced
    invoice.refresh_from_db()
    assert invoice.total == Decimal("4500.00")

    # The next billing run prices the time not billed yet at the amended rate.
    assert billing_run(entry_ids=[e.pk for e in unbilled]).billed == 2
    assert set(
        BillingEvent.objects.filter(time_entry__in=unbilled).values_list("unit_amount", "amount")
    ) == {(Decimal("165.00"), Decimal("1320.00"))}

    # Delivered again (or polled): the same run, nothing more.
    firm.deliver_record("Contract_Rate__c", rate_id)
    assert [r.pk for r in _runs()] == [run.pk]


def test_a_rate_of_a_contract_not_provisioned_is_kept_without_a_run(firm: Firm) -> None:
    other = firm.account(name=f"Globex {firm.suffix} Ltd")
    contract, contract_id = firm.crm_contract(other)
    rate_id = firm.crm_rate(contract, contract_id, role="Architect", rate="210", in_concord=False)

    assert firm.deliver_record("Contract_Rate__c", rate_id) == "applied"

    assert _runs() == []
    card = RateCard.objects.get(contract=contract, role="Architect", currency="GBP")
    assert card.bill_rate == Decimal("210.00")


def test_an_amendment_overtaking_an_unsent_one_supersedes_it_and_lands_last(firm: Firm) -> None:
    firm.amend(firm.contract_id, Budget__c=130000)
    firm.deliver_contract(firm.contract_id)  # its update of the project waits in the outbox
    firm.amend(firm.contract_id, Budget__c=145000)
    firm.deliver_contract(firm.contract_id)

    older, newer = _runs()
    assert older.state == RunState.DONE
    assert older.context["superseded_by"] == newer.pk
    assert _steps(older)["concord"].state == StepState.SKIPPED
    assert (newer.state, newer.current_step) == (RunState.RUNNING, "psa_project")
    assert "Waiting for an earlier amendment's update" in _steps(newer)["psa_project"].detail
    # Compared with what the project was given (provisioning's), not the superseded version.
    assert [(c["before"], c["after"]) for c in newer.context["changes"]] == [
        ("120000.00", "145000.00"),
        ("120000.00", "145000.00"),
    ]

    firm.drain()

    newer.refresh_from_db()
    assert newer.state == RunState.DONE
    sent = OutboxMessage.objects.filter(process=PROCESS).order_by("pk")
    assert [m.context["run_id"] for m in sent] == [older.pk, newer.pk]
    assert _harvest_project(firm)["cost_budget"] == 145000
    assert Project.objects.get(pk=firm.project.pk).budget == Decimal("145000.00")


def test_a_stuck_change_order_is_moved_on_by_its_case_retry(firm: Firm) -> None:
    firm.amend(firm.contract_id, Budget__c=135000)
    firm.deliver_contract(firm.contract_id)
    (run,) = _runs()
    assert run.current_step == "psa_project"
    # Its update was taken, but nothing moved the run on (a worker lost after the delivery),
    # and an hour and more has passed.
    OutboxMessage.objects.filter(process=PROCESS).update(state=OutboxMessage.State.DONE)
    WorkflowRun.objects.filter(pk=run.pk).update(
        step_started_at=timezone.now() - timedelta(hours=2)
    )
    run_stuck_check()
    case = ExceptionCase.objects.get(case_type="workflow_run_stuck")
    assert (case.process, case.step) == (PROCESS, "psa_project")

    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    outcome = case_retry(actor=admin, case_id=case.pk, revision=case.revision)

    assert "moved on 1 change order run(s)" in outcome.summary
    run.refresh_from_db()
    assert run.state == RunState.DONE
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED


def test_an_amendment_withdrawn_in_the_crm_closes_the_case_that_held_it(firm: Firm) -> None:
    invoiced_time(firm.project, entries=20, hours="8.00", rate="150")  # GBP 24,000 invoiced
    firm.amend(firm.contract_id, Budget__c=20000)
    firm.deliver_contract(firm.contract_id)
    (held,) = _runs()
    assert held.state == RunState.BLOCKED

    firm.amend(firm.contract_id, Budget__c=120000)  # what the project was given
    firm.deliver_contract(firm.contract_id)

    (withdrawn,) = _runs()
    assert withdrawn.state == RunState.DONE
    assert "Withdrawn: contract" in _steps(withdrawn)["assess"].detail
    case = ExceptionCase.objects.get(case_type=BUDGET_CASE)
    assert case.status == ExceptionCase.Status.RESOLVED
    assert not OutboxMessage.objects.filter(process=PROCESS).exists()
