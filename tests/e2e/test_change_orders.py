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

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    Connection,
    Invoice,
    OutboxMessage,
    Project,
    RateCard,
    RunState,
    StepState,
    WorkflowRun,
)
from integrations.services.connections import connection_create
from integrations.workflows import provisioning
from integrations.workflows.change_orders import PROCESS
from integrations.workflows.time_to_erp import billing_run
from tests.firms import NEW_TENANT, ChangeOrderFirm, approved_time, consultant
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

SECRET = "e2e-change-orders-secret"


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


def _wait_done(process: str, what: str, *outputs: Any) -> WorkflowRun:
    def done() -> bool:
        run = WorkflowRun.objects.filter(process=process).order_by("-pk").first()
        return run is not None and run.state == RunState.DONE

    try:
        wait_until(done, timeout=120, what=what, interval=0.5)
    except AssertionError:
        run = WorkflowRun.objects.filter(process=process).order_by("-pk").first()
        where = list(run.steps.values_list("name", "state", "detail")) if run else None
        logs = "\n".join(o.output() for o in outputs)
        pytest.fail(f"{what}: not done: {where}\n{logs}")
    return WorkflowRun.objects.filter(process=process).order_by("-pk").get()


def test_a_change_order_propagated_by_the_workers(sandbox: str, tmp_path: Path) -> None:
    firm = ChangeOrderFirm(sandbox, *_connections(sandbox))
    firm.tracking_category()
    customer = firm.account()
    contract, contract_id = firm.crm_contract(customer)
    rate_id = firm.crm_rate(contract, contract_id, role="Consultant", rate="150")

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
        # The deal is won in Salesforce: the contract's project is provisioned.
        firm.opportunity()
        provisioned = _wait_done(provisioning.PROCESS, "provisioning", worker, web)
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
        (invoice_before,) = _records(sandbox, "xero", "Invoices", NEW_TENANT)
        harvest_before = {p["id"]: p["data"] for p in _records(sandbox, "harvest", "projects")}

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
            pytest.fail(f"change orders not done: {where}\n{worker.output()}\n{web.output()}")
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
    (harvest,) = _records(sandbox, "harvest", "projects")
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
    invoices_after = {i["id"]: i["data"] for i in _records(sandbox, "xero", "Invoices", NEW_TENANT)}
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
