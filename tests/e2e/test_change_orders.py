"""A change order propagated, with real parts only: the vendor sandbox as a process, the web
process (gunicorn) receiving the sandbox's signed Salesforce webhooks, Celery worker and beat
processes, PostgreSQL and Redis. A contract with a negotiated Consultant rate is provisioned
(closed-won in Salesforce), approved time on its project is billed to Xero at that rate, then
the contract's budget, term and rate are amended in Salesforce; nothing else is done by the test
until the change orders' runs are done: the Harvest project has the new budget and end date,
Concord's project too, the contract's rate card the new rate, each run lists its changes per
system, the Xero invoice of the time already billed is exactly as it was, and the next billing
run invoices new time at the amended rate."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from integrations.models import (
    Invoice,
    OutboxMessage,
    Project,
    RateCard,
    RunState,
    StepState,
    WorkflowRun,
)
from integrations.workflows import provisioning
from integrations.workflows.change_orders import PROCESS
from integrations.workflows.time_to_erp import billing_run
from tests.e2e.conftest import Concord
from tests.firms import (
    NEW_TENANT,
    ChangeOrderFirm,
    approved_time,
    consultant,
    sandbox_connections,
    sandbox_records,
)
from tests.processes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "e2e-change-orders-secret"


def test_a_change_order_propagated_by_the_workers(
    sandbox: str, concord: Callable[..., Concord]
) -> None:
    connections = sandbox_connections(sandbox, webhooks="crm", webhook_secret=SECRET)
    firm = ChangeOrderFirm(sandbox, *connections)
    firm.tracking_category()
    customer = firm.account()
    contract, contract_id = firm.crm_contract(customer)
    rate_id = firm.crm_rate(contract, contract_id, role="Consultant", rate="150")

    with concord().running() as processes:
        processes.subscribe(sandbox, system="salesforce", connection=firm.crm, secret=SECRET)
        # The deal is won in Salesforce: the contract's project is provisioned.
        firm.opportunity()
        provisioned = processes.wait_for_run(provisioning.PROCESS, "provisioning")
        project = Project.objects.get(pk=provisioned.context["project_id"])

        # A month of approved time on it is billed to Xero (a draft invoice there).
        consultant()
        approved_time(project, days=[2, 3, 4, 5, 6], hours="7.50")
        assert billing_run().billed == 5
        wait_until(
            lambda: OutboxMessage.objects.filter(process="time_to_erp", state="done").exists(),
            timeout=60,
            what="the billed time posted to Xero",
            interval=0.5,
        )
        (invoice_before,) = sandbox_records(sandbox, "xero", "Invoices", NEW_TENANT)
        projects = sandbox_records(sandbox, "harvest", "projects")
        harvest_before = {p["id"]: p["data"] for p in projects}

        # Sales ops amends the contract in Salesforce: GBP 150,000 over 18 months, and the
        # Consultant rate from GBP 150 to 165 an hour.
        firm.amend(contract_id, Budget__c=150000, ContractTerm=18)
        firm.amend_rate(rate_id, "165")

        def both_done() -> bool:
            runs = WorkflowRun.objects.filter(process=PROCESS)
            return runs.count() == 2 and not runs.exclude(state=RunState.DONE).exists()

        try:
            wait_until(both_done, timeout=120, what="both change orders done", interval=0.5)
        except AssertionError:
            where = [
                (r.label, list(r.steps.values_list("name", "state", "detail")))
                for r in WorkflowRun.objects.filter(process=PROCESS)
            ]
            pytest.fail(f"change orders not done: {where}\n{processes.logs()}")
        run = WorkflowRun.objects.get(process=PROCESS, input__kind="terms")
        rate_run = WorkflowRun.objects.get(process=PROCESS, input__kind="rate")

        # New time after the amendment is billed at the amended rate.
        later = approved_time(project, days=[20, 21], hours="8.00")
        assert billing_run().billed == 2
        wait_until(
            lambda: OutboxMessage.objects.filter(process="time_to_erp", state="done").count() == 2,
            timeout=60,
            what="the new time posted to Xero",
            interval=0.5,
        )

    steps = {s.name: s for s in run.steps.order_by("position")}
    assert [s.state for s in steps.values()] == [
        StepState.DONE,
        StepState.DONE,
        StepState.DONE,
        StepState.SKIPPED,
    ]
    # The PSA: the project's budget and end date, nothing else of it.
    (harvest,) = sandbox_records(sandbox, "harvest", "projects")
    before = harvest_before[harvest["id"]]
    assert (before["cost_budget"], before["ends_on"]) == (120000, "2027-10-31")
    assert (harvest["data"]["cost_budget"], harvest["data"]["ends_on"]) == (150000, "2028-04-30")
    assert harvest["data"]["notes"] == before["notes"]
    assert steps["psa_project"].external_ids == {"psa": {project.code: str(harvest["id"])}}
    # Concord's project follows.
    project.refresh_from_db()
    assert (project.budget, str(project.end_date)) == (Decimal("150000.00"), "2028-04-30")
    # The run lists each change, per system.
    assert sorted(
        (c["system"], c["field"], c["before"], c["after"]) for c in run.context["changes"]
    ) == [
        ("Concord", "budget", "120000.00", "150000.00"),
        ("Concord", "end date", "2027-10-31", "2028-04-30"),
        ("PSA", "budget", "120000.00", "150000.00"),
        ("PSA", "end date", "2027-10-31", "2028-04-30"),
    ]
    # The ERP: the time already invoiced stays exactly as it was, and the run says so.
    invoice = Invoice.objects.exclude(billing_events__time_entry__in=later).get()
    label = f"invoice {invoice.number}" if invoice.number else f"draft invoice #{invoice.pk}"
    assert (
        f"project {project.code}: 5 invoiced item(s) (37.50 hours, GBP 5,625.00) on {label}"
    ) in steps["erp"].detail
    assert "kept as invoiced" in steps["erp"].detail
    stored = sandbox_records(sandbox, "xero", "Invoices", NEW_TENANT)
    invoices_after = {i["id"]: i["data"] for i in stored}
    assert invoices_after.pop(invoice_before["id"]) == invoice_before["data"]
    assert not OutboxMessage.objects.filter(process=PROCESS, connection=firm.erp).exists()

    # The rate: Concord's rate card, listed on its own run; the PSA and the ERP keep none.
    rate_steps = {s.name: s for s in rate_run.steps.order_by("position")}
    assert [s.state for s in rate_steps.values()] == [
        StepState.DONE,
        StepState.SKIPPED,
        StepState.DONE,
        StepState.SKIPPED,
    ]
    assert [
        (c["system"], c["field"], c["before"], c["after"]) for c in (rate_run.context["changes"])
    ] == [("Concord", "bill rate", "150.00", "165.00")]
    card = RateCard.objects.get(contract=contract, role="Consultant", currency="GBP")
    assert card.bill_rate == Decimal("165.00")
    assert "5 invoiced item(s) (37.50 hours, GBP 5,625.00)" in rate_steps["erp"].detail
    # The new time's invoice in Xero: its lines at the amended rate.
    (new_invoice,) = invoices_after.values()
    assert {line["UnitAmount"] for line in new_invoice["LineItems"]} == {165.0}
