"""Closed-won to provisioned, with real parts only: the vendor sandbox as a process, the web
process (gunicorn) receiving the sandbox's signed Salesforce webhook, Celery worker and beat
processes, PostgreSQL and Redis. The opportunity is won in Salesforce; nothing else is done by
the test until the run is done: the customer is in Xero and Harvest, the project in Harvest
with the firm's default tasks assigned and the fixed-fee contract's milestones, its tracking
option in Xero, and the ids are on the Salesforce opportunity and contract and in the Harvest
project's notes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from integrations.models import (
    CrossReference,
    OutboxMessage,
    PollCursor,
    WorkflowRun,
)
from integrations.sync import ring
from integrations.workflows.provisioning import PROCESS
from tests.e2e.conftest import Concord
from tests.firms import (
    NEW_TENANT,
    ProvisioningFirm,
    harvest_tasks_create,
    sandbox_connections,
    sandbox_records,
)
from tests.processes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "e2e-provisioning-secret"


def test_closed_won_is_provisioned_in_all_three_systems_by_the_workers(
    sandbox: str, concord: Callable[..., Concord]
) -> None:
    connections = sandbox_connections(sandbox, webhooks="crm", webhook_secret=SECRET)
    firm = ProvisioningFirm(sandbox, *connections)
    firm.tracking_category()
    tasks = harvest_tasks_create(firm.psa)
    customer = firm.account()
    contract = firm.contract(customer, billing_model="fixed_fee")

    with concord().running() as processes:
        processes.subscribe(sandbox, system="salesforce", connection=firm.crm, secret=SECRET)
        # The deal is won in Salesforce; from here on only the processes act.
        opportunity = firm.opportunity()
        processes.wait_for_run(PROCESS, "the provisioning run")

    run = WorkflowRun.objects.get(process=PROCESS)
    steps = {s.name: s.external_ids for s in run.steps.all()}
    psa_id = steps["psa_project"]["psa"]["project"]
    erp_id = steps["erp_dimension"]["erp"]["project"]
    contact_id = steps["erp_customer"]["erp"]["customer"]

    # The ERP: the customer's contact and the project's tracking option.
    contacts = sandbox_records(sandbox, "xero", "Contacts", NEW_TENANT)
    assert [c["data"]["Name"] for c in contacts if c["id"] == contact_id] == [customer.name]
    options = sandbox_records(sandbox, "xero", "TrackingOptions", NEW_TENANT)
    assert [o["id"] for o in options] == [erp_id]
    # The PSA: one client, one project under it, with the ERP's ids in its notes.
    (client,) = sandbox_records(sandbox, "harvest", "clients")
    (project,) = sandbox_records(sandbox, "harvest", "projects")
    assert str(project["id"]) == psa_id
    assert project["data"]["client_id"] == client["id"]
    assert f"ERP project {erp_id}" in project["data"]["notes"]
    assert f"ERP customer {contact_id}" in project["data"]["notes"]
    # The firm's default tasks on the project (not the task that is not a default one), and
    # the fixed-fee contract's milestones adding up to its value.
    assigned = {
        a["data"]["task_id"]
        for a in sandbox_records(sandbox, "harvest", "task_assignments")
        if a["data"]["project_id"] == project["id"]
    }
    assert assigned == {tasks["Development"], tasks["Project Management"], tasks["Internal"]}
    milestones = [
        m["data"]
        for m in sandbox_records(sandbox, "harvest", "x_milestones")
        if m["data"]["project_id"] == project["id"]
    ]
    assert len(milestones) == 4
    assert sum(m["amount"] for m in milestones) == float(contract.total_value)
    assert {m["status"] for m in milestones} == {"open"}
    # The CRM: the ids on the opportunity and on its contract.
    contract_id = CrossReference.objects.get(
        connection=firm.crm, content_type__model="contract", object_id=contract.pk
    ).external_id
    for obj, key in (("Opportunity", opportunity), ("Contract", contract_id)):
        record = httpx.get(f"{sandbox}/_control/records/salesforce/{obj}/{key}", timeout=10).json()
        data = record.get("data", record)
        assert (data["PSA_Project_Id__c"], data["ERP_Project_Id__c"]) == (psa_id, erp_id), obj


def test_closed_won_read_by_the_poll_is_provisioned_once_by_the_workers(
    sandbox: str, concord: Callable[..., Concord]
) -> None:
    """No webhook: the CRM is polled (the worker's polling task, rung as beat rings it). The
    first poll is the connection's baseline; the opportunity won after it is handed to
    provisioning by the next poll, and a later poll that reads it again (the ids written back
    changed it) opens no second run and sends nothing twice."""
    connections = sandbox_connections(sandbox, webhooks="crm", webhook_secret=SECRET)
    firm = ProvisioningFirm(sandbox, *connections)
    firm.tracking_category()
    customer = firm.account()
    firm.contract(customer)
    cursor = PollCursor.objects.filter(connection=firm.crm, object_type="Opportunity")

    def poll_once() -> None:
        before = cursor.values_list("last_success_at", flat=True).first()
        ring.ring(ring.POLL_CONNECTION, key=firm.crm.pk, args=(firm.crm.pk,), force=True)
        wait_until(
            lambda: cursor.exclude(last_success_at=before).exclude(last_success_at=None).exists(),
            timeout=60,
            what="the CRM's opportunities polled",
            interval=0.3,
        )

    with concord(web=False).running() as processes:
        poll_once()  # the baseline: what was won before is not provisioned again
        assert not WorkflowRun.objects.exists()
        opportunity = firm.opportunity()
        poll_once()
        processes.wait_for_run(PROCESS, "the provisioning run")
        rows = OutboxMessage.objects.count()
        time.sleep(1.05)  # Salesforce stamps to the second: the write-back is a later change
        httpx.patch(
            f"{sandbox}/_control/records/salesforce/Opportunity/{opportunity}",
            json={"Description": "Signed."},
            timeout=10,
        ).raise_for_status()
        poll_once()
        time.sleep(1)  # anything it would have queued is queued by now

    run = WorkflowRun.objects.get(process=PROCESS)
    assert run.input["external_id"] == opportunity
    assert OutboxMessage.objects.count() == rows
    assert len(sandbox_records(sandbox, "harvest", "projects")) == 1
    assert len(sandbox_records(sandbox, "xero", "TrackingOptions", NEW_TENANT)) == 1
