"""A payment in the ERP seen in the PSA and the CRM, with real parts only: the vendor sandbox
as a process, the web process (gunicorn) receiving Xero's signed webhooks, Celery worker and
beat processes, PostgreSQL and Redis. Concord's invoice is posted to Xero by the workers; then
finance authorises it in Xero and a customer's payment is entered there. From then on only the
processes act (Xero's INVOICE webhook, and the ERP's poll, which the beat schedule would run,
rung once here instead of waiting for its interval): the contract's billing status shows in
Salesforce, and in Harvest the invoice with its payment and the time entries billed."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    Connection,
    CrossReference,
    InboundMessage,
    Invoice,
    Payment,
    RunState,
    WorkflowRun,
)
from integrations.services.connections import connection_create
from integrations.sync.ring import POLL_CONNECTION, ring
from integrations.workflows.back_sync import PROCESS
from integrations.workflows.time_to_erp import billing_run
from tests.firms import NEW_TENANT
from tests.firms_back_sync import BillingFirm
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

SECRET = "e2e-back-sync-secret"


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
            "webhook_secret": SECRET,
        },
        rate_limit_per_minute=60,
    )
    for connection in (crm, psa, erp):
        mapping_defaults_install(connection=connection)
    return crm, psa, erp


def _psa_invoice(firm: BillingFirm, invoice: Invoice) -> str | None:
    return (
        CrossReference.objects.filter(
            content_type__model="invoice", object_id=invoice.pk, connection=firm.psa
        )
        .values_list("external_id", flat=True)
        .first()
    )


def _where() -> object:
    run = WorkflowRun.objects.filter(process=PROCESS).first()
    return list(run.steps.values_list("name", "state", "detail")) if run else None


def test_a_payment_in_the_erp_is_seen_in_the_psa_and_the_crm(sandbox: str, tmp_path: Path) -> None:
    firm = BillingFirm(sandbox, *_connections(sandbox))
    firm.setup(entries=3)
    contract_id = CrossReference.objects.get(
        content_type__model="contract", connection=firm.crm
    ).external_id

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
                "system": "xero",
                "url": f"http://127.0.0.1:{web_port}/webhooks/{firm.erp.pk}/",
                "secret": SECRET,
            },
            timeout=10,
        )
        assert subscribed.status_code == 201, subscribed.text

        # The billing run posts the draft invoice; the workers deliver it to Xero.
        assert billing_run().invoices == 1
        invoice = Invoice.objects.get()

        def posted() -> bool:
            return CrossReference.objects.filter(
                content_type__model="invoice", object_id=invoice.pk, connection=firm.erp
            ).exists()

        wait_until(posted, timeout=60, what="the invoice posted to Xero", interval=0.5)
        erp_id = firm.erp_id(invoice)

        # Finance authorises it in Xero; the customer pays GBP 1,000 of GBP 3,780.
        firm.authorise(erp_id)
        payment_id = firm.pay(erp_id, Decimal("1000.00"), day="2026-11-20", reference="BACS 1")

        # Xero's webhook announces the invoice's update (a payment is an INVOICE event): the
        # CRM's figures follow from the invoice alone.
        def crm_status() -> tuple[object, object, object]:
            crm = firm.sf("Contract", contract_id)
            return (
                crm.get("Billing_Status__c"),
                crm.get("Amount_Paid__c"),
                crm.get("Last_Payment_Date__c"),
            )

        try:
            wait_until(
                lambda: crm_status()[:2] == ("Partly Paid", 1000.0),
                timeout=120,
                what="the webhook's invoice update in the CRM",
            )
        except AssertionError:
            pytest.fail(f"not in the CRM: {_where()}\n{worker.output()}\n{web.output()}")
        assert InboundMessage.objects.filter(
            connection=firm.erp,
            source=InboundMessage.Source.WEBHOOK,
            object_type="Invoices",
            external_id=erp_id,
            state="applied",
        ).exists()

        # The payment itself comes with the ERP's next poll, which beat's schedule runs every
        # two minutes: rung once now instead.
        ring(POLL_CONNECTION, key=firm.erp.pk, args=(firm.erp.pk,), force=True)

        def seen_everywhere() -> bool:
            harvest_id = _psa_invoice(firm, invoice)
            if harvest_id is None or not firm.harvest_payments(harvest_id):
                return False
            return crm_status() == ("Partly Paid", 1000.0, "2026-11-20")

        try:
            wait_until(seen_everywhere, timeout=120, what="the payment in the PSA and CRM")
        except AssertionError:
            pytest.fail(f"not seen: {_where()}\n{worker.output()}\n{web.output()}")

    # Concord: the invoice authorised with GBP 2,780 due, one payment, the run done.
    invoice.refresh_from_db()
    assert (invoice.status, invoice.amount_due) == ("authorised", Decimal("2780.00"))
    (payment,) = Payment.objects.all()
    assert (payment.amount, str(payment.date), payment.reference) == (
        Decimal("1000.00"),
        "2026-11-20",
        "BACS 1",
    )
    run = WorkflowRun.objects.get(process=PROCESS)
    assert run.state == RunState.DONE, list(run.steps.values_list("name", "state", "detail"))
    # The CRM: the contract's billing status and amounts.
    crm = firm.sf("Contract", contract_id)
    assert (crm["Amount_Invoiced__c"], crm["Amount_Paid__c"], crm["Amount_Due__c"]) == (
        3780.0,
        1000.0,
        2780.0,
    )
    assert crm["Last_Payment_Date__c"] == "2026-11-20"
    # The PSA: the invoice with the ERP's number and the payment, the time billed.
    harvest_id = _psa_invoice(firm, invoice)
    assert harvest_id is not None
    mirrored = firm.harvest_invoice(harvest_id)
    assert (mirrored["number"], mirrored["amount"], mirrored["due_amount"]) == (
        invoice.number,
        3780.0,
        2780.0,
    )
    (recorded,) = firm.harvest_payments(harvest_id)
    assert (recorded["amount"], recorded["paid_date"]) == (1000.0, "2026-11-20")
    assert payment_id in recorded["notes"]
    for entry_id in firm.harvest_entries:
        assert firm.harvest_entry(entry_id)["is_billed"] is True
    # Nothing doubled in the vendors.
    stats = httpx.get(f"{sandbox}/_control/stats", timeout=10).json()["systems"]
    assert stats["harvest"]["invoices"]["created"] == 1
    assert stats["harvest"]["invoice_payments"]["created"] == 1
