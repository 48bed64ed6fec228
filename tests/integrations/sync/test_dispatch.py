"""The dispatcher against the real sandbox: batches, a poison record parked with a readable
reason while the others flow on, the case closing itself once the record goes through."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal

import pytest

from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    ApprovalState,
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    Invoice,
    LegalEntity,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    RoutingRule,
    SyncAttempt,
    TaxRate,
    TimeEntry,
)
from integrations.sync.dispatch import outbox_dispatch
from integrations.sync.outbox import outbox_replay
from integrations.vendors import connector_for
from integrations.workflows.time_to_erp import billing_run, invoice_reference
from tests.integrations.conftest import NEW_TENANT, Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def firm(make_connection: Callable[..., Connection]) -> dict[str, object]:
    """A UK entity with three T&M customers; Umbrella has no VAT number but a contract whose tax
    type (EU reverse charge, ECZROUTPUTSERVICES) needs one - Xero will refuse its invoice."""
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    vat = TaxRate.objects.create(code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20)
    reverse = TaxRate.objects.create(
        code="ECZROUTPUTSERVICES",
        name="Reverse charge",
        country="GB",
        rate_percent=0,
        requires_customer_tax_number=True,
    )
    xero = make_connection("xero", rate_limit_per_minute=600)
    mapping_defaults_install(connection=xero)  # invoices are rendered by its published mapping
    RoutingRule.objects.create(role="erp", connection=xero)
    RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("140"))
    worker = Resource.objects.create(
        name="Ada Byron",
        email="ada@example.invalid",
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )
    for name, tax_number, tax in [
        ("Globex Ltd", "GB123456789", vat),
        ("Initech Ltd", "GB987654321", vat),
        ("Umbrella GmbH", "", reverse),
    ]:
        customer = Customer.objects.create(
            name=name, legal_entity=entity, country="GB", tax_number=tax_number, currency="GBP"
        )
        contract = Contract.objects.create(
            number=f"C-{name[:3]}",
            customer=customer,
            legal_entity=entity,
            billing_model="tm",
            currency="GBP",
            tax_rate=tax,
            status="active",
        )
        project = Project.objects.create(
            code=f"P-{name[:3]}",
            name=name,
            customer=customer,
            contract=contract,
            legal_entity=entity,
            region="emea",
            currency="GBP",
            status="active",
        )
        for day in range(1, 4):
            TimeEntry.objects.create(
                resource=worker,
                project=project,
                date=date(2026, 11, day),
                hours=Decimal("7.5"),
                approval_state=ApprovalState.APPROVED,
            )
    return {"xero": xero}


def test_poison_invoice_is_parked_with_a_readable_reason_while_others_flow(
    firm: dict[str, object], sandbox: Sandbox
) -> None:
    xero = firm["xero"]
    assert isinstance(xero, Connection)
    report = billing_run()
    assert (report.billed, report.invoices) == (9, 3)

    dispatched = outbox_dispatch(connection_id=xero.pk, worker="test")
    assert (dispatched.done, dispatched.parked) == (2, 1)

    parked = OutboxMessage.objects.get(state="parked")
    assert parked.error_class == "business"
    case = parked.exception_case
    assert case is not None
    assert case.queue == "finance"
    assert case.case_type == "vendor_validation"
    assert "Umbrella GmbH" in case.message
    assert "GBP 3,150.00" in case.message  # 22.5 h x 140, reverse charge: no tax
    assert "22.50 hours" in case.message
    assert "tax" in case.vendor_message.lower()
    # The others went through: numbered in Concord, cross-referenced, billed.
    delivered = Invoice.objects.exclude(number="")
    assert delivered.count() == 2
    assert (
        CrossReference.objects.filter(connection=xero, content_type__model="invoice").count() == 2
    )
    assert BillingEvent.objects.filter(status="invoiced").count() == 6
    assert SyncAttempt.objects.filter(connection=xero, operation="put_invoices").exists()
    invoices = sandbox.stats("xero", "Invoices")
    assert invoices["created"] == 2

    # Finance fixes the data where it lives (the customer's VAT number in Xero), then replays.
    _fix_tax_number_in_xero(sandbox, xero, "Umbrella GmbH", "DE811907980")
    (replay,) = outbox_replay(messages=[parked])
    assert outbox_dispatch(connection_id=xero.pk, worker="test").done == 1
    replay.refresh_from_db()
    assert replay.state == "done"
    assert replay.replay_of_id == parked.pk
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    assert sandbox.stats("xero", "Invoices")["created"] == 3
    references = {r["data"]["Reference"] for r in sandbox.records("xero", "Invoices", NEW_TENANT)}
    assert references == {invoice_reference(i) for i in Invoice.objects.all()}


def _fix_tax_number_in_xero(sandbox: Sandbox, xero: Connection, name: str, vat: str) -> None:
    """What a finance user does in Xero: give the contact its VAT number (or create it)."""
    contacts = sandbox.records("xero", "Contacts", NEW_TENANT)
    existing = [c for c in contacts if c["data"].get("Name") == name]
    if existing:
        sandbox.patch("xero", "Contacts", existing[0]["id"], {"TaxNumber": vat})
        return
    connector = connector_for(xero)
    try:
        (result,) = connector.write(
            "put_contacts", [{"Name": name, "TaxNumber": vat}], idempotency_key="fix-" + vat
        )
    finally:
        connector.close()
    assert result.ok, result.error


def test_older_version_goes_first_and_a_stale_one_is_skipped(
    firm: dict[str, object],
) -> None:
    from integrations.sync.outbox import outbox_claim, outbox_enqueue, outbox_message

    xero = firm["xero"]
    assert isinstance(xero, Connection)
    customer = Customer.objects.get(name="Globex Ltd")
    rows = [
        outbox_message(
            connection=xero,
            process="test",
            step="push",
            operation="put_contacts",
            record=customer,
            version=version,
            payload={"Name": customer.name},
        )
        for version in (2, 1)
    ]
    outbox_enqueue(messages=rows)
    first = outbox_claim(connection_id=xero.pk, limit=10, worker="w")
    assert [m.record_version for m in first] == [1]  # v2 waits for v1
    assert outbox_claim(connection_id=xero.pk, limit=10, worker="w") == []
    OutboxMessage.objects.filter(pk=first[0].pk).update(state="done")
    assert [
        m.record_version for m in outbox_claim(connection_id=xero.pk, limit=10, worker="w")
    ] == [2]

    OutboxMessage.objects.filter(record_version=2).update(state="done")
    late = outbox_message(
        connection=xero,
        process="test",
        step="push",
        operation="put_contacts",
        record=customer,
        version=1,
        payload={},
        context={},
    )
    late.idempotency_key += ":late"
    outbox_enqueue(messages=[late])
    assert outbox_claim(connection_id=xero.pk, limit=10, worker="w") == []
    assert OutboxMessage.objects.get(idempotency_key=late.idempotency_key).state == "skipped"
