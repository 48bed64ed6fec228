"""Closed-won to provisioned, with real parts only: the vendor sandbox as a process, the web
process (gunicorn) receiving the sandbox's signed Salesforce webhook, Celery worker and beat
processes, PostgreSQL and Redis. The opportunity is won in Salesforce; nothing else is done by
the test until the run is done: the customer is in Xero and Harvest, the project in Harvest
with the firm's default tasks assigned and the fixed-fee contract's milestones, its tracking
option in Xero, and the ids are on the Salesforce opportunity and contract and in the Harvest
project's notes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    Connection,
    CrossReference,
    OutboxMessage,
    PollCursor,
    RunState,
    WorkflowRun,
    WorkflowStep,
)
from integrations.services.connections import connection_create
from integrations.sync import ring
from integrations.workflows.provisioning import PROCESS
from tests.firms import NEW_TENANT, ProvisioningFirm, harvest_tasks_create
from tests.processes import (
    beat_proc,
    free_port,
    gunicorn_proc,
    process_env,
    running,
    sandbox_proc,
    wait_for_http,
    wait_for_sandbox,
    wait_until,
    worker_proc,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "e2e-provisioning-secret"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = sandbox_proc(port, tmp_path / "sandbox.log")
    with running(proc):
        url = f"http://127.0.0.1:{port}"
        wait_for_sandbox(url)
        yield url


def _connections(url: str) -> tuple[Connection, Connection, Connection]:
    crm = connection_create(
        name="Salesforce (e2e)",
        role="crm",
        vendor="salesforce",
        base_url=f"{url}/salesforce",
        credentials={
            "client_id": "concord-salesforce",
            "client_secret": "sandbox-salesforce-secret",
            "webhook_secret": SECRET,
        },
        rate_limit_per_minute=6000,
    )
    psa = connection_create(
        name="Harvest (e2e)",
        role="psa",
        vendor="harvest",
        base_url=f"{url}/harvest/v2",
        credentials={"access_token": "sandbox-harvest-token", "account_id": "100001"},
        rate_limit_per_minute=400,
    )
    erp = connection_create(
        name="Xero (e2e)",
        role="erp",
        vendor="xero",
        base_url=f"{url}/xero/api.xro/2.0",
        credentials={
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
            "token_url": f"{url}/xero/connect/token",
            "tenant_id": NEW_TENANT,
        },
        rate_limit_per_minute=60,
    )
    for connection in (crm, psa, erp):
        mapping_defaults_install(connection=connection)
    return crm, psa, erp


def _records(url: str, system: str, obj: str, tenant: str = "") -> list[dict[str, Any]]:
    params = {"tenant": tenant} if tenant else {}
    body = httpx.get(f"{url}/_control/records/{system}/{obj}", params=params, timeout=10).json()
    return list(body["records"])


def test_closed_won_is_provisioned_in_all_three_systems_by_the_workers(
    sandbox: str, tmp_path: Path
) -> None:
    firm = ProvisioningFirm(sandbox, *_connections(sandbox))
    firm.tracking_category()
    tasks = harvest_tasks_create(firm.psa)
    customer = firm.account()
    contract = firm.contract(customer, billing_model="fixed_fee")

    web_port = free_port()
    env = process_env(CONCORD_OUTBOX_LEASE_S="20")
    web = gunicorn_proc(web_port, env, tmp_path / "web.log", workers=1, threads=4)
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    with running(web, worker, beat):
        wait_for_http(f"http://127.0.0.1:{web_port}/healthz")
        subscribed = httpx.post(
            f"{sandbox}/_control/webhooks",
            json={
                "system": "salesforce",
                "url": f"http://127.0.0.1:{web_port}/webhooks/{firm.crm.pk}/",
                "secret": SECRET,
            },
            timeout=10,
        )
        assert subscribed.status_code == 201, subscribed.text
        # The deal is won in Salesforce; from here on only the processes act.
        opportunity = firm.opportunity()

        def done() -> bool:
            run = WorkflowRun.objects.filter(process=PROCESS).first()
            return run is not None and run.state == RunState.DONE

        try:
            wait_until(done, timeout=120, what="the provisioning run done", interval=0.5)
        except AssertionError:
            run = WorkflowRun.objects.filter(process=PROCESS).first()
            where = list(run.steps.values_list("name", "state", "detail")) if run else None
            pytest.fail(f"run not done: {where}\n{worker.output()}\n{web.output()}")

    run = WorkflowRun.objects.get(process=PROCESS)
    steps = {s.name: s.external_ids for s in run.steps.all()}
    psa_id = steps["psa_project"]["psa"]["project"]
    erp_id = steps["erp_dimension"]["erp"]["project"]
    contact_id = steps["erp_customer"]["erp"]["customer"]

    # The ERP: the customer's contact and the project's tracking option.
    contacts = _records(sandbox, "xero", "Contacts", NEW_TENANT)
    assert [c["data"]["Name"] for c in contacts if c["id"] == contact_id] == [customer.name]
    options = _records(sandbox, "xero", "TrackingOptions", NEW_TENANT)
    assert [o["id"] for o in options] == [erp_id]
    # The PSA: one client, one project under it, with the ERP's ids in its notes.
    (client,) = _records(sandbox, "harvest", "clients")
    (project,) = _records(sandbox, "harvest", "projects")
    assert str(project["id"]) == psa_id
    assert project["data"]["client_id"] == client["id"]
    assert f"ERP project {erp_id}" in project["data"]["notes"]
    assert f"ERP customer {contact_id}" in project["data"]["notes"]
    # The firm's default tasks on the project (not the task that is not a default one), and
    # the fixed-fee contract's milestones adding up to its value.
    assigned = {
        a["data"]["task_id"]
        for a in _records(sandbox, "harvest", "task_assignments")
        if a["data"]["project_id"] == project["id"]
    }
    assert assigned == {tasks["Development"], tasks["Project Management"], tasks["Internal"]}
    milestones = [
        m["data"]
        for m in _records(sandbox, "harvest", "x_milestones")
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
    sandbox: str, tmp_path: Path
) -> None:
    """No webhook: the CRM is polled (the worker's polling task, rung as beat rings it). The
    first poll is the connection's baseline; the opportunity won after it is handed to
    provisioning by the next poll, and a later poll that reads it again (the ids written back
    changed it) opens no second run and sends nothing twice."""
    firm = ProvisioningFirm(sandbox, *_connections(sandbox))
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

    env = process_env(CONCORD_OUTBOX_LEASE_S="20")
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    with running(worker, beat):
        poll_once()  # the baseline: what was won before is not provisioned again
        assert not WorkflowRun.objects.exists()
        opportunity = firm.opportunity()
        poll_once()

        def done() -> bool:
            run = WorkflowRun.objects.filter(process=PROCESS).first()
            return run is not None and run.state == RunState.DONE

        try:
            wait_until(done, timeout=120, what="the provisioning run done", interval=0.5)
        except AssertionError:
            steps = list(WorkflowStep.objects.values_list("name", "state", "detail"))
            pytest.fail(f"run not done: {steps}\n{worker.output()}")
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
    assert len(_records(sandbox, "harvest", "projects")) == 1
    assert len(_records(sandbox, "xero", "TrackingOptions", NEW_TENANT)) == 1
