"""A payment in the ERP seen in the PSA and the CRM, with real parts only: the vendor sandbox
as a process, the web process (gunicorn) receiving Xero's signed webhooks, Celery worker and
beat processes, PostgreSQL and Redis. Concord's invoice is posted to Xero by the workers; then
finance authorises it in Xero and a customer's payment is entered there. From then on only the
processes act (Xero's INVOICE webhook, and the ERP's poll, which the beat schedule would run,
rung once here instead of waiting for its interval): the contract's billing status shows in
Salesforce, and in Harvest the invoice with its payment and the time entries billed."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from integrations.models import (
    CrossReference,
    InboundMessage,
    Invoice,
    Payment,
    RunState,
    WorkflowRun,
)
from integrations.sync.ring import POLL_CONNECTION, ring
from integrations.workflows.back_sync import PROCESS
from integrations.workflows.time_to_erp import billing_run
from tests.e2e.conftest import Concord
from tests.firms import sandbox_connections
from tests.firms_back_sync import BillingFirm
from tests.processes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "e2e-back-sync-secret"


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


def test_a_payment_in_the_erp_is_seen_in_the_psa_and_the_crm(
    sandbox: str, concord: Callable[..., Concord]
) -> None:
    firm = BillingFirm(
        sandbox, *sandbox_connections(sandbox, webhooks="erp", webhook_secret=SECRET)
    )
    firm.setup(entries=3)
    contract_id = CrossReference.objects.get(
        content_type__model="contract", connection=firm.crm
    ).external_id

    with concord().running() as processes:
        processes.subscribe(sandbox, system="xero", connection=firm.erp, secret=SECRET)

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
            pytest.fail(f"not in the CRM: {_where()}\n{processes.logs()}")
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
            pytest.fail(f"not seen: {_where()}\n{processes.logs()}")

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
