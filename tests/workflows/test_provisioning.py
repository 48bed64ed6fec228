"""Project provisioning against the real sandbox: a closed-won opportunity, read by inbound
processing as its webhook would have it, becomes a customer in Xero and Harvest, a project in
Harvest and Concord, a tracking option in Xero, and ids written back to Salesforce and Harvest;
each validation failure is a case in the owning queue; fixing it resumes the run where it
stopped; a closed-won event delivered twice changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from exceptions.actions import case_retry
from exceptions.models import ExceptionCase, Queue
from integrations.models import (
    Connection,
    CrossReference,
    Customer,
    OutboxMessage,
    Project,
    RoutingRule,
    RunState,
    StepState,
    TaxRate,
    WorkflowRun,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN
from integrations.sync.records import record_update
from integrations.workflows.provisioning import PROCESS
from tests.factories import UserFactory
from tests.firms import ProvisioningFirm
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

STEPS = ["validate", "erp_customer", "psa_client", "psa_project", "erp_dimension", "write_back"]


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
    assert [s.state for s in steps.values()] == [StepState.DONE] * len(STEPS)
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
    firm.tracking_category()
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    case_retry(actor=admin, case_id=parked.exception_case.pk, revision=None)
    firm.drain()

    run.refresh_from_db()
    assert run.state == RunState.DONE
    steps = _steps(run)
    for name in ("validate", "erp_customer", "psa_client", "psa_project"):
        assert steps[name].attempts == before[name], name
    assert len(firm.box.records("harvest", "projects")) == 1
    assert len(firm.box.records("xero", "Contacts", NEW_TENANT)) == 1
    assert len(firm.box.records("xero", "TrackingOptions", NEW_TENANT)) == 1
