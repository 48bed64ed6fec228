"""Project provisioning against the real sandbox: a closed-won opportunity, read by inbound
processing as its webhook would have it (or by a poll), becomes a customer in Xero and Harvest,
a project in Harvest and Concord with its standard tasks (and a fixed-fee contract's
milestones), a tracking option in Xero, and ids written back to Salesforce and Harvest; each
validation failure is a case in the owning queue; fixing it resumes the run where it stopped;
a closed-won event delivered twice, or by webhook and by poll, changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from exceptions.actions import case_retry
from exceptions.models import ExceptionCase, Queue
from integrations.models import (
    Assignment,
    Connection,
    CrossReference,
    Customer,
    InboundMessage,
    Milestone,
    OutboxMessage,
    Project,
    RoutingRule,
    RunState,
    StepState,
    TaxRate,
    WorkflowRun,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN
from integrations.sync.polling import poll_object
from integrations.sync.records import record_update
from integrations.workflows.provisioning import PROCESS
from tests.factories import UserFactory
from tests.firms import ProvisioningFirm, harvest_tasks_create, harvest_worker
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

STEPS = [
    "validate",
    "erp_customer",
    "psa_client",
    "psa_project",
    "psa_tasks",
    "psa_milestones",
    "psa_team",
    "erp_dimension",
    "write_back",
]


class Firm(ProvisioningFirm):
    box: Sandbox


@pytest.fixture
def firm(sandbox: Sandbox, make_connection: Callable[..., Connection]) -> Firm:  # noqa: F811
    made = Firm(
        sandbox.url,
        make_connection("salesforce"),
        make_connection("harvest"),
        make_connection("xero"),
    )
    made.box = sandbox
    return made


def _run() -> WorkflowRun:
    return WorkflowRun.objects.get(process=PROCESS)


def _steps(run: WorkflowRun) -> dict[str, Any]:
    return {s.name: s for s in run.steps.order_by("position")}


def _sf(box: Sandbox, obj: str, key: str) -> dict[str, Any]:
    response = box.control.get(f"/records/salesforce/{obj}/{key}")
    assert response.status_code == 200, response.text
    body = response.json()
    return dict(body.get("data", body))


def test_closed_won_is_provisioned_in_every_system_with_ids_written_back(firm: Firm) -> None:
    firm.tracking_category()
    customer = firm.account()
    contract = firm.contract(customer)
    opportunity = firm.opportunity()

    firm.deliver(opportunity)
    firm.drain()

    run = _run()
    assert run.state == RunState.DONE, _steps(run)
    steps = _steps(run)
    assert list(steps) == STEPS
    # Billed by the hour: no milestones; and the opportunity names no delivery team.
    assert [s.state for s in steps.values()] == [
        StepState.SKIPPED if name in ("psa_milestones", "psa_team") else StepState.DONE
        for name in STEPS
    ]
    assert all(s.started_at and s.finished_at for s in steps.values())
    project = Project.objects.get(pk=run.context["project_id"])
    # Provisioning made the project link: its contract and legal entity from the start.
    assert (project.contract, project.legal_entity, project.customer) == (
        contract,
        firm.entity,
        customer,
    )
    assert project.region == "emea"
    psa_id = steps["psa_project"].external_ids["psa"]["project"]
    erp_id = steps["erp_dimension"].external_ids["erp"]["project"]
    contact_id = steps["erp_customer"].external_ids["erp"]["customer"]
    client_id = steps["psa_client"].external_ids["psa"]["customer"]

    xero_contacts = {c["id"]: c["data"] for c in firm.box.records("xero", "Contacts", NEW_TENANT)}
    assert xero_contacts[contact_id]["Name"] == customer.name
    options = firm.box.records("xero", "TrackingOptions", NEW_TENANT)
    assert [o["data"]["Name"] for o in options if o["id"] == erp_id] == [project.code]
    harvest = {str(p["id"]): p["data"] for p in firm.box.records("harvest", "projects")}
    assert harvest[psa_id]["code"] == project.code
    assert str(harvest[psa_id]["client_id"]) == client_id
    assert harvest[psa_id]["is_billable"] is True
    assert harvest[psa_id]["bill_by"] == "People"
    assert f"ERP project {erp_id}" in harvest[psa_id]["notes"]
    assert "legal entity UK01" in harvest[psa_id]["notes"]
    opp = _sf(firm.box, "Opportunity", opportunity)
    assert (opp["PSA_Project_Id__c"], opp["ERP_Project_Id__c"]) == (psa_id, erp_id)
    contract_sf = _sf(
        firm.box,
        "Contract",
        CrossReference.objects.get(
            connection=firm.crm, object_id=contract.pk, content_type__model="contract"
        ).external_id,
    )
    assert (contract_sf["PSA_Project_Id__c"], contract_sf["ERP_Project_Id__c"]) == (
        psa_id,
        erp_id,
    )
    assert not ExceptionCase.objects.filter(status="open").exists()


def test_closed_won_delivered_twice_is_one_run_and_nothing_twice(firm: Firm) -> None:
    firm.tracking_category()
    customer = firm.account()
    firm.contract(customer)
    opportunity = firm.opportunity()

    firm.deliver(opportunity)
    firm.deliver(opportunity)  # again before anything was sent
    firm.drain()
    rows = OutboxMessage.objects.count()
    firm.deliver(opportunity)  # and once it is all done
    firm.drain()

    assert WorkflowRun.objects.count() == 1
    assert _run().state == RunState.DONE
    assert OutboxMessage.objects.count() == rows
    assert len(firm.box.records("harvest", "projects")) == 1
    assert len(firm.box.records("harvest", "clients")) == 1
    assert len(firm.box.records("xero", "TrackingOptions", NEW_TENANT)) == 1
    assert len(firm.box.records("xero", "Contacts", NEW_TENANT)) == 1
    assert Project.objects.count() == 1


CASES: dict[str, tuple[str, str]] = {
    "no_account": ("provisioning_account_unknown", Queue.SALES_OPS),
    "no_contract": ("provisioning_contract_missing", Queue.SALES_OPS),
    "draft_contract": ("provisioning_billing_terms_missing", Queue.SALES_OPS),
    "no_payment_terms": ("provisioning_billing_terms_missing", Queue.SALES_OPS),
    "no_legal_entity": ("provisioning_legal_entity_missing", Queue.SALES_OPS),
    "no_tax_number": ("provisioning_tax_number_missing", Queue.FINANCE),
    "no_erp_route": ("provisioning_no_route", Queue.INTEGRATION_ADMIN),
}


@pytest.mark.parametrize("flaw", list(CASES))
def test_each_validation_failure_is_a_case_in_the_owning_queue(firm: Firm, flaw: str) -> None:
    customer = firm.account(
        tax_number="" if flaw == "no_tax_number" else "GB123456789",
        in_concord=flaw != "no_account",
    )
    if flaw == "no_legal_entity":
        Customer.objects.filter(pk=customer.pk).update(legal_entity=None)
    if flaw not in ("no_contract", "no_account"):
        reverse = TaxRate.objects.create(
            code="ECZROUTPUTSERVICES",
            name="Reverse charge",
            country="GB",
            rate_percent=0,
            requires_customer_tax_number=True,
        )
        firm.contract(
            customer,
            status="draft" if flaw == "draft_contract" else "active",
            payment_terms_days=None if flaw == "no_payment_terms" else 30,
            legal_entity=None if flaw == "no_legal_entity" else firm.entity,
            tax_rate=reverse,
        )
    if flaw == "no_erp_route":
        RoutingRule.objects.filter(role="erp").delete()
        Connection.objects.create(
            name="Legacy ERP", role="erp", vendor="xero", base_url="http://127.0.0.1:1/x"
        )
    opportunity = firm.opportunity()
    if flaw == "no_legal_entity":
        firm.box.patch("salesforce", "Opportunity", opportunity, {"Legal_Entity__c": None})

    firm.deliver(opportunity)

    run = _run()
    case_type, queue = CASES[flaw]
    case = ExceptionCase.objects.get(case_type=case_type)
    assert case.queue == queue
    assert (run.state, run.current_step, run.exception_case) == (RunState.BLOCKED, "validate", case)
    assert case.blocked_records.filter(record_type="workflowrun", record_id=run.pk).exists()
    assert (case.amount_blocked, case.currency) == (Decimal("120000.00"), "GBP")
    assert "cannot be provisioned" in case.message
    # Nothing was sent anywhere.
    assert not OutboxMessage.objects.exists()
    assert _steps(run)["erp_customer"].state == StepState.PENDING


def test_a_fixed_tax_number_resumes_the_run_at_validation(firm: Firm) -> None:
    firm.tracking_category()
    customer = firm.account(tax_number="")
    reverse = TaxRate.objects.create(
        code="ECZROUTPUTSERVICES",
        name="Reverse charge",
        country="GB",
        rate_percent=0,
        requires_customer_tax_number=True,
    )
    firm.contract(customer, tax_rate=reverse)
    firm.deliver(firm.opportunity())
    case = ExceptionCase.objects.get(case_type="provisioning_tax_number_missing")
    assert case.customer_id == customer.pk  # the fix form edits this customer

    record_update(record=customer, data={"tax_number": "GB987654321"}, actor=None)
    finance = UserFactory.create(role=FINANCE)
    outcome = case_retry(actor=finance, case_id=case.pk, revision=case.revision)
    firm.drain()

    assert "resumed 1 provisioning run" in outcome.summary
    run = _run()
    assert run.state == RunState.DONE
    case.refresh_from_db()
    assert case.status == "resolved"
    assert _steps(run)["validate"].attempts == 2
    contacts = firm.box.records("xero", "Contacts", NEW_TENANT)
    assert [c["data"].get("TaxNumber") for c in contacts] == ["GB987654321"]


def test_a_refused_step_resumes_there_without_repeating_the_steps_before(firm: Firm) -> None:
    """No project tracking category in Xero: the dimension is refused and parked on a case;
    once the category exists the case's retry sends it again, and the run finishes without
    creating the customer or the project again."""
    customer = firm.account()
    firm.contract(customer)
    firm.deliver(firm.opportunity())
    firm.drain()
    run = _run()
    assert run.current_step == "erp_dimension"
    parked = OutboxMessage.objects.get(state="parked")
    assert parked.step == "erp_dimension"
    assert parked.exception_case is not None

    before = {name: step.attempts for name, step in _steps(run).items()}
    # As a run opened before the PSA's tasks and milestones were steps of the process: it is
    # given them, in their places, and they find their work done.
    run.steps.filter(name__in=["psa_tasks", "psa_milestones"]).delete()
    firm.tracking_category()
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    case_retry(actor=admin, case_id=parked.exception_case.pk, revision=None)
    firm.drain()

    run.refresh_from_db()
    assert run.state == RunState.DONE
    steps = _steps(run)
    for name in ("validate", "erp_customer", "psa_client", "psa_project"):
        assert steps[name].attempts == before[name], name
    assert list(steps) == STEPS
    assert len(firm.box.records("harvest", "projects")) == 1
    assert len(firm.box.records("xero", "Contacts", NEW_TENANT)) == 1
    assert len(firm.box.records("xero", "TrackingOptions", NEW_TENANT)) == 1


def test_the_project_gets_the_standard_tasks_and_the_contracts_milestones(firm: Firm) -> None:
    """Harvest's default tasks (billable as Harvest says; a task that is not a default one is
    left out) are assigned to the new project, and a fixed-fee contract's milestones are made
    from its value and term (the default plan: 20/30/30/20 per cent, due at 0/40/80/100 per
    cent of it) in Concord and in Harvest. Retried, nothing is sent twice."""
    tasks = harvest_tasks_create(firm.psa)
    firm.tracking_category()
    customer = firm.account()
    contract = firm.contract(
        customer,
        billing_model="fixed_fee",
        total_value=Decimal("100000.01"),
        end_date=date(2027, 4, 30),
    )
    firm.deliver(firm.opportunity())
    firm.drain()

    run = _run()
    assert run.state == RunState.DONE, {n: (s.state, s.detail) for n, s in _steps(run).items()}
    steps = _steps(run)
    assert [s.state for s in steps.values()] == [
        StepState.SKIPPED if name == "psa_team" else StepState.DONE for name in STEPS
    ]
    psa_id = int(steps["psa_project"].external_ids["psa"]["project"])
    assigned = {
        r["data"]["task_id"]: r["data"]["billable"]
        for r in firm.box.records("harvest", "task_assignments")
        if r["data"]["project_id"] == psa_id
    }
    assert assigned == {
        tasks["Development"]: True,
        tasks["Project Management"]: True,
        tasks["Internal"]: False,
    }

    project = Project.objects.get(pk=run.context["project_id"])
    made = list(Milestone.objects.filter(project=project).order_by("due_date"))
    assert [(m.name, m.amount, m.due_date, m.status) for m in made] == [
        ("Kick-off", Decimal("20000.00"), date(2026, 11, 1), "planned"),
        ("Design sign-off", Decimal("30000.00"), date(2027, 1, 12), "planned"),
        ("Go-live", Decimal("30000.00"), date(2027, 3, 25), "planned"),
        ("Acceptance", Decimal("20000.01"), date(2027, 4, 30), "planned"),
    ]
    assert sum(m.amount for m in made) == contract.total_value
    harvest = {
        str(r["id"]): r["data"]
        for r in firm.box.records("harvest", "x_milestones")
        if r["data"]["project_id"] == psa_id
    }
    assert len(harvest) == 4
    for milestone in made:
        xref = CrossReference.objects.get(
            connection=firm.psa, content_type__model="milestone", object_id=milestone.pk
        )
        copy = harvest[xref.external_id]
        assert (copy["name"], copy["amount"], copy["due_on"], copy["status"]) == (
            milestone.name,
            float(milestone.amount),
            str(milestone.due_date),
            "open",
        )
        assert copy["currency"] == "GBP"

    rows = OutboxMessage.objects.count()
    calls = firm.box.stats("harvest", "task_assignments")
    firm.deliver(run.input["external_id"])  # the write-back's change, announced
    firm.drain()
    assert OutboxMessage.objects.count() == rows
    assert len(firm.box.records("harvest", "x_milestones")) == 4
    assert len(firm.box.records("harvest", "task_assignments")) == 3
    assert firm.box.stats("harvest", "task_assignments") == calls
    assert Milestone.objects.count() == 4


def test_a_closed_won_opportunity_read_by_a_poll_starts_its_run_once(firm: Firm) -> None:
    """No webhook: the poll of the CRM's opportunities hands the closed-won one to
    provisioning (after the connection's first read, a baseline of what was won before);
    read again by a poll (the write-back changed it) and by a webhook, it is the same run and
    nothing is sent twice."""
    firm.tracking_category()
    customer = firm.account()
    firm.contract(customer)
    history = firm.opportunity()  # won before Concord watched: provisioned then
    baseline = poll_object(connection_id=firm.crm.pk, object_type="Opportunity")
    assert baseline.read >= 1
    assert not WorkflowRun.objects.exists()

    opportunity = firm.opportunity()
    report = poll_object(connection_id=firm.crm.pk, object_type="Opportunity")
    assert (report.read, report.applied, report.failed) == (1, 1, 0)
    firm.drain()

    run = _run()
    assert (run.state, run.input["external_id"]) == (RunState.DONE, opportunity)
    kept = InboundMessage.objects.get(source="poll", external_id=opportunity)
    assert kept.state == "applied"
    rows = OutboxMessage.objects.count()
    time.sleep(1.05)  # Salesforce stamps changes to the second: a change read as one
    firm.box.patch("salesforce", "Opportunity", opportunity, {"Description": "Signed."})
    again = poll_object(connection_id=firm.crm.pk, object_type="Opportunity")
    assert (again.read, again.applied) == (1, 1)
    firm.deliver(opportunity)
    firm.drain()

    assert WorkflowRun.objects.count() == 1
    assert OutboxMessage.objects.count() == rows
    assert len(firm.box.records("harvest", "projects")) == 1
    assert not WorkflowRun.objects.filter(subject_key__endswith=history).exists()


def test_a_won_opportunity_naming_its_psa_project_opens_no_run(firm: Firm) -> None:
    """Provisioned before Concord watched (or by hand): it names its PSA project already."""
    customer = firm.account()
    firm.contract(customer)
    opportunity = firm.opportunity()
    firm.box.patch("salesforce", "Opportunity", opportunity, {"PSA_Project_Id__c": "4711"})

    firm.deliver(opportunity)

    assert not WorkflowRun.objects.exists()
    assert not OutboxMessage.objects.exists()


def test_the_delivery_lead_and_team_are_staffed_on_the_project(firm: Firm) -> None:
    """The opportunity names its delivery lead and team by email (as people type them): each
    one the PSA has as a user is staffed on the project (the lead as its project manager), an
    Assignment in Concord and a user assignment in Harvest; someone Harvest does not have is
    named for PMO and holds nothing up. Announced again, nothing is staffed twice."""
    lead = harvest_worker(firm.psa, "Kim Allen", "kim.allen@example.com", role="Manager")
    member = harvest_worker(firm.psa, "Raj Patel", "raj.patel@example.com", role="")
    firm.tracking_category()
    customer = firm.account()
    firm.contract(customer)
    opportunity = firm.opportunity()
    firm.box.patch(
        "salesforce",
        "Opportunity",
        opportunity,
        {
            "Delivery_Lead__c": "Kim.Allen@example.com",
            "Delivery_Team__c": "raj.patel@example.com; nobody@example.com;kim.allen@example.com",
        },
    )
    firm.deliver(opportunity)
    firm.drain()

    run = _run()
    assert run.state == RunState.DONE, {n: (s.state, s.detail) for n, s in _steps(run).items()}
    team_step = _steps(run)["psa_team"]
    assert team_step.state == StepState.DONE
    assert "nobody@example.com" in team_step.detail
    project = Project.objects.get(pk=run.context["project_id"])
    assert sorted(
        Assignment.objects.filter(project=project).values_list("resource__email", "role")
    ) == [("kim.allen@example.com", "Manager"), ("raj.patel@example.com", "Delivery team")]
    psa_id = int(_steps(run)["psa_project"].external_ids["psa"]["project"])
    users = {
        str(r.pk): CrossReference.objects.get(
            connection=firm.psa, content_type__model="resource", object_id=r.pk
        ).external_id
        for r in (lead, member)
    }
    staffed = {
        str(a["data"]["user_id"]): a["data"]["is_project_manager"]
        for a in firm.box.records("harvest", "user_assignments")
        if a["data"]["project_id"] == psa_id
    }
    assert staffed == {users[str(lead.pk)]: True, users[str(member.pk)]: False}

    rows = OutboxMessage.objects.count()
    firm.deliver(opportunity)
    firm.drain()
    assert OutboxMessage.objects.count() == rows
    assert len(firm.box.records("harvest", "user_assignments")) == 2
    assert Assignment.objects.count() == 2
