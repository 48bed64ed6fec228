"""Status back-sync against the real sandbox (in this process: polls, the sweep and the outbox
dispatched by hand): an invoice Concord posted is authorised and paid in Xero; Concord reads the
invoice and its payments, the contract's billing status reaches Salesforce, the invoice and its
payments Harvest, its time entries are billed there; a payment read twice is one payment, sent
once; a contract the CRM does not know is a sales ops case that holds only the CRM's side, a
client the PSA does not know a PMO case that holds only the PSA's; Xero's invoice webhook alone
moves the run on."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from django.db.models import Count
from django.utils import timezone

from exceptions.actions import case_retry
from exceptions.models import ExceptionCase, Queue
from integrations.models import (
    Connection,
    CrossReference,
    InboundMessage,
    Invoice,
    OutboxMessage,
    Payment,
    PollCursor,
    RunState,
    WorkflowRun,
)
from integrations.roles import PMO, SALES_OPS
from integrations.sync.dispatch import outbox_dispatch
from integrations.sync.inbound import inbound_process
from integrations.sync.polling import poll_connection
from integrations.workflows.back_sync import (
    CLIENT_NOT_IN_PSA,
    CONTRACT_NOT_IN_CRM,
    PROCESS,
    back_sync_sweep,
)
from integrations.workflows.time_to_erp import billing_run
from tests.factories import UserFactory
from tests.firms_back_sync import BillingFirm
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db

# Three 7.5-hour days at GBP 140, plus 20% VAT.
TOTAL = Decimal("3780.00")


@pytest.fixture
def firm(sandbox: Sandbox, make_connection: Callable[..., Connection]) -> BillingFirm:  # noqa: F811
    return BillingFirm(
        sandbox.url,
        make_connection("salesforce"),
        make_connection("harvest"),
        make_connection("xero"),
    )


def _posted(firm: BillingFirm, total: Decimal = TOTAL) -> Invoice:
    report = billing_run()
    assert report.invoices == 1, report
    firm.drain()
    invoice = Invoice.objects.get()
    assert invoice.total == total
    return invoice


def _read_erp(firm: BillingFirm) -> None:
    """What the poll task does for the ERP connection: poll, then sweep what it read; then
    the outbox."""
    started = timezone.now()
    poll_connection(connection_id=firm.erp.pk)
    back_sync_sweep(connection_id=firm.erp.pk, since=started)
    firm.drain()


def _psa_invoice_id(invoice: Invoice, firm: BillingFirm) -> str:
    return str(
        CrossReference.objects.get(
            content_type__model="invoice", object_id=invoice.pk, connection=firm.psa
        ).external_id
    )


def test_a_payment_in_the_erp_is_seen_in_the_psa_and_the_crm_once(firm: BillingFirm) -> None:
    firm.setup(entries=3)
    invoice = _posted(firm)
    erp_id = firm.erp_id(invoice)

    # A draft in the ERP: nothing to show yet, and no run.
    _read_erp(firm)
    assert not WorkflowRun.objects.filter(process=PROCESS).exists()

    # Finance authorises it in Xero and the customer pays part of it.
    firm.authorise(erp_id)
    first = firm.pay(erp_id, Decimal("1000.00"), day="2026-11-20", reference="Remittance 1")
    _read_erp(firm)

    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.AUTHORISED
    assert invoice.amount_due == TOTAL - Decimal("1000.00")
    payment = Payment.objects.get()
    assert (payment.invoice_id, payment.amount, str(payment.date)) == (
        invoice.pk,
        Decimal("1000.00"),
        "2026-11-20",
    )
    run = WorkflowRun.objects.get(process=PROCESS)
    assert run.state == RunState.DONE, list(run.steps.values_list("name", "state", "detail"))

    # The CRM: the contract's billing status.
    contract_id = CrossReference.objects.get(
        content_type__model="contract", connection=firm.crm
    ).external_id
    crm = firm.sf("Contract", contract_id)
    assert crm["Billing_Status__c"] == "Partly Paid"
    assert (crm["Amount_Invoiced__c"], crm["Amount_Paid__c"], crm["Amount_Due__c"]) == (
        3780.0,
        1000.0,
        2780.0,
    )
    assert crm["Last_Invoice_Number__c"] == invoice.number
    assert crm["Last_Payment_Date__c"] == "2026-11-20"

    # The PSA: the invoice mirrored with the payment recorded, and the time billed.
    harvest_id = _psa_invoice_id(invoice, firm)
    mirrored = firm.harvest_invoice(harvest_id)
    assert (mirrored["number"], mirrored["amount"], mirrored["due_amount"]) == (
        invoice.number,
        3780.0,
        2780.0,
    )
    assert mirrored["state"] != "paid"
    assert [len(mirrored["line_items"]), mirrored["line_items"][0]["quantity"]] == [3, 7.5]
    (recorded,) = firm.harvest_payments(harvest_id)
    assert recorded["amount"] == 1000.0
    assert recorded["paid_date"] == "2026-11-20"
    assert first in recorded["notes"]
    for entry_id in firm.harvest_entries:
        assert firm.harvest_entry(entry_id)["is_billed"] is True

    # The rest is paid: the contract is paid in the CRM, the invoice paid in the PSA.
    firm.pay(erp_id, TOTAL - Decimal("1000.00"), day="2026-11-27", reference="Remittance 2")
    _read_erp(firm)
    invoice.refresh_from_db()
    run.refresh_from_db()
    assert (invoice.status, Payment.objects.count()) == ("paid", 2), list(
        run.steps.values_list("name", "state", "detail")
    )
    crm = firm.sf("Contract", contract_id)
    assert (crm["Billing_Status__c"], crm["Amount_Paid__c"], crm["Amount_Due__c"]) == (
        "Paid",
        3780.0,
        0.0,
    )
    mirrored = firm.harvest_invoice(harvest_id)
    assert (mirrored["state"], mirrored["due_amount"]) == ("paid", 0.0)
    assert len(firm.harvest_payments(harvest_id)) == 2
    run.refresh_from_db()
    assert run.state == RunState.DONE

    # Every payment read again (the poll's cursor lost): still two payments, nothing re-sent.
    sent = OutboxMessage.objects.filter(process=PROCESS).count()
    PollCursor.objects.filter(connection=firm.erp).delete()
    _read_erp(firm)
    assert Payment.objects.count() == 2
    assert OutboxMessage.objects.filter(process=PROCESS).count() == sent
    assert len(firm.harvest_payments(harvest_id)) == 2
    # One PSA invoice, three entries billed once each, two payments, two CRM states.
    by_step = dict(
        OutboxMessage.objects.filter(process=PROCESS)
        .order_by()
        .values("step")
        .annotate(n=Count("pk"))
        .values_list("step", "n")
    )
    assert by_step == {
        "psa_invoice": 1,
        "psa_time_billed": 3,
        "psa_payments": 2,
        "crm_billing_status": 2,
    }
    assert not ExceptionCase.objects.filter(status="open", process=PROCESS).exists()


def test_a_contract_the_crm_does_not_know_is_a_sales_ops_case_the_psa_does_not_wait_for(
    firm: BillingFirm,
) -> None:
    firm.setup(entries=2, contract_in_crm=False)
    invoice = _posted(firm, Decimal("2520.00"))
    erp_id = firm.erp_id(invoice)
    firm.authorise(erp_id)
    firm.pay(erp_id, Decimal("100.00"), day="2026-11-20", reference="Part")
    _read_erp(firm)

    run = WorkflowRun.objects.get(process=PROCESS)
    case = ExceptionCase.objects.get(case_type=CONTRACT_NOT_IN_CRM, status="open")
    assert case.queue == Queue.SALES_OPS
    assert run.state == RunState.BLOCKED
    assert run.exception_case_id == case.pk
    assert run.current_step == "crm_billing_status"
    contract = firm.billed_contract
    assert case.message.startswith(
        f"Contract {contract.number} of {firm.customer.name} has no record in the CRM"
    ), case.message
    assert "1 invoice (GBP 2,520.00)" in case.message, case.message
    # The PSA went on: invoice mirrored with its payment.
    harvest_id = _psa_invoice_id(invoice, firm)
    assert len(firm.harvest_payments(harvest_id)) == 1

    # Sales ops has the contract created in Salesforce and synced; a retry finishes the run.
    contract_id = firm.sf_create(
        "create_contract",
        {
            "AccountId": firm.account_id,
            "CurrencyIsoCode": "GBP",
            "StartDate": "2026-11-01",
            "External_Id__c": f"CTR-late-{firm.suffix}",
        },
    )
    firm.xref(contract, firm.crm, contract_id)
    sales_ops = UserFactory.create(role=SALES_OPS)
    case_retry(actor=sales_ops, case_id=case.pk, revision=case.revision)
    firm.drain()
    run.refresh_from_db()
    case.refresh_from_db()
    assert run.state == RunState.DONE
    assert case.status == "resolved"
    assert firm.sf("Contract", contract_id)["Billing_Status__c"] == "Partly Paid"
    assert len(firm.harvest_payments(harvest_id)) == 1  # nothing sent twice


def _webhook(firm: BillingFirm, erp_id: str) -> None:
    """Xero's INVOICE update event, processed as the inbound worker does (which reads the
    invoice from Xero and maps it)."""
    message = InboundMessage.objects.create(
        connection=firm.erp,
        source=InboundMessage.Source.WEBHOOK,
        object_type="Invoices",
        external_id=erp_id,
        dedupe_key=f"xero:{uuid.uuid4().hex}",
        payload={"resourceId": erp_id, "eventCategory": "INVOICE", "eventType": "UPDATE"},
    )
    assert inbound_process(message_id=message.pk) == "applied"


def test_a_client_the_psa_does_not_know_is_a_pmo_case_the_crm_does_not_wait_for(
    firm: BillingFirm,
) -> None:
    firm.setup(entries=2)
    CrossReference.objects.filter(content_type__model="customer", connection=firm.psa).delete()
    invoice = _posted(firm, Decimal("2520.00"))
    erp_id = firm.erp_id(invoice)
    firm.authorise(erp_id)
    firm.pay(erp_id, Decimal("2520.00"), day="2026-11-20", reference="In full")
    # Xero's webhook alone (no poll yet): the invoice is paid, its payment not read yet.
    _webhook(firm, erp_id)
    firm.drain()

    invoice.refresh_from_db()
    assert invoice.status == Invoice.Status.PAID
    case = ExceptionCase.objects.get(case_type=CLIENT_NOT_IN_PSA, status="open")
    assert case.queue == Queue.PMO
    assert case.message.startswith(
        f"Customer {firm.customer.name} is not a client in {firm.psa.name}, so 1 invoice "
        "(GBP 2,520.00) issued in the ERP"
    ), case.message
    run = WorkflowRun.objects.get(process=PROCESS)
    assert (run.state, run.current_step, run.exception_case_id) == (
        RunState.BLOCKED,
        "psa_invoice",
        case.pk,
    )
    # The CRM did not wait: the contract shows paid.
    contract_id = CrossReference.objects.get(
        content_type__model="contract", connection=firm.crm
    ).external_id
    assert firm.sf("Contract", contract_id)["Billing_Status__c"] == "Paid"
    assert not CrossReference.objects.filter(content_type__model="invoice", connection=firm.psa)

    # PMO links the client; the retry mirrors the invoice; the poll brings its payment.
    client_id = firm.hv("GET", "/clients")["clients"][0]["id"]
    firm.xref(firm.customer, firm.psa, str(client_id))
    pmo = UserFactory.create(role=PMO)
    case_retry(actor=pmo, case_id=case.pk, revision=case.revision)
    firm.drain()
    _read_erp(firm)
    case.refresh_from_db()
    run.refresh_from_db()
    assert case.status == "resolved"
    assert run.state == RunState.DONE
    harvest_id = _psa_invoice_id(invoice, firm)
    assert firm.harvest_invoice(harvest_id)["state"] == "paid"
    for entry_id in firm.harvest_entries:
        assert firm.harvest_entry(entry_id)["is_billed"] is True


def test_an_invoice_concord_did_not_post_is_left_alone(firm: BillingFirm) -> None:
    firm.setup(entries=1)
    contact = CrossReference.objects.get(content_type__model="customer", connection=firm.erp)
    made = firm.xero(
        "PUT",
        "/Invoices",
        {
            "Invoices": [
                {
                    "Type": "ACCREC",
                    "Status": "AUTHORISED",
                    "Contact": {"ContactID": contact.external_id},
                    "LineItems": [
                        {
                            "Description": "Raised by hand in Xero",
                            "Quantity": 1,
                            "UnitAmount": 500,
                            "AccountCode": "200",
                            "TaxType": "OUTPUT2",
                        }
                    ],
                }
            ]
        },
    )["Invoices"][0]
    firm.pay(made["InvoiceID"], Decimal("600.00"), day="2026-11-20", reference="Hand")
    _read_erp(firm)

    # Concord keeps the ERP's invoice and payment, and sends nothing anywhere about them.
    invoice = Invoice.objects.get()
    assert (invoice.status, invoice.total) == (Invoice.Status.PAID, Decimal("600.00"))
    assert Payment.objects.filter(invoice=invoice).count() == 1
    assert not WorkflowRun.objects.filter(process=PROCESS).exists()
    assert not OutboxMessage.objects.filter(process=PROCESS).exists()


def test_an_invoice_whose_answer_was_lost_is_known_as_concords_own_when_polled(
    firm: BillingFirm,
) -> None:
    """The billing run's PUT reached Xero but its answer was lost: the row waits for its retry.
    A poll of the ERP meanwhile reads the invoice Xero made; its reference names Concord's
    invoice, so it is that invoice (its Xero id and number), not a second one, and the retry
    then finds it (look-up-before-create): one invoice everywhere, nothing stuck."""
    firm.setup(entries=1)
    assert billing_run().invoices == 1
    invoice = Invoice.objects.get()
    row = OutboxMessage.objects.get(object_id=invoice.pk, content_type__model="invoice")
    poll_connection(connection_id=firm.erp.pk)  # Concord holds a token (and nothing new)
    # Xero applies the PUT and the answer never comes back.
    faults = f"{firm.url}/_control/faults"
    httpx.post(faults, json={"xero": {"drop_response_rate": 1.0}}).raise_for_status()
    outbox_dispatch(connection_id=firm.erp.pk, worker="test")
    httpx.post(faults, json={"xero": {"drop_response_rate": 0.0}}).raise_for_status()
    row.refresh_from_db()
    assert (row.state, row.attempts) == (OutboxMessage.State.PENDING, 1)
    made = next(
        r
        for r in firm.xero("GET", "/Invoices")["Invoices"]
        if r.get("Reference") == f"CONCORD-INV-{invoice.pk}"
    )

    poll_connection(connection_id=firm.erp.pk)

    assert list(Invoice.objects.values_list("pk", flat=True)) == [invoice.pk]
    xref = CrossReference.objects.get(content_type__model="invoice", connection=firm.erp)
    assert (xref.object_id, xref.external_id) == (invoice.pk, made["InvoiceID"])
    invoice.refresh_from_db()
    assert invoice.number == made["InvoiceNumber"]

    OutboxMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())  # its retry
    firm.drain()
    row.refresh_from_db()
    assert row.state == OutboxMessage.State.DONE, row.last_error
    assert Invoice.objects.count() == 1
    assert (
        CrossReference.objects.filter(content_type__model="invoice", connection=firm.erp).count()
        == 1
    )
    ours = [
        r
        for r in firm.xero("GET", "/Invoices")["Invoices"]
        if r.get("Reference") == made["Reference"]
    ]
    assert len(ours) == 1
    # No case about it (the firm's own Xero tax rates, polled here too, are another matter).
    assert not ExceptionCase.objects.filter(
        status=ExceptionCase.Status.OPEN, message__icontains="invoice"
    ).exists()
