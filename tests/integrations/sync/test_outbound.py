"""Outbound payloads come from the connection's published mapping: an admin's edit reaches the
next invoice that arrives at the Xero sandbox, and an invoice the mapping cannot render is never
lost: it waits on an integration admin's case and goes once the mapping is fixed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from exceptions.models import ExceptionCase
from integrations.mapping.selectors import mapping_cache_clear
from integrations.mapping.services import (
    mapping_defaults_install,
    mapping_set_create_draft,
    mapping_set_publish,
    value_map_create,
    value_map_set_entries,
)
from integrations.models import (
    ApprovalState,
    Connection,
    Contract,
    Customer,
    Invoice,
    LegalEntity,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    RoutingRule,
    TaxRate,
    TimeEntry,
    ValueMap,
)
from integrations.sync.dispatch import outbox_dispatch
from integrations.workflows.time_to_erp import billing_run, invoice_reference
from tests.integrations.conftest import NEW_TENANT, Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    # Compiled mappings are cached per process; each test starts from its own database state.
    mapping_cache_clear()
    yield
    mapping_cache_clear()


@pytest.fixture
def xero(make_connection: Callable[..., Connection]) -> Connection:
    """A UK entity billing one customer's approved time to the sandbox's new Xero tenant, with
    the Xero default mappings published."""
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    vat = TaxRate.objects.create(code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20)
    connection = make_connection("xero", rate_limit_per_minute=600)
    mapping_defaults_install(connection=connection)
    RoutingRule.objects.create(role="erp", connection=connection)
    RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("140"))
    customer = Customer.objects.create(
        name="Globex Ltd",
        legal_entity=entity,
        country="GB",
        tax_number="GB123456789",
        currency="GBP",
    )
    contract = Contract.objects.create(
        number="C-GLO",
        customer=customer,
        legal_entity=entity,
        billing_model="tm",
        currency="GBP",
        tax_rate=vat,
        status="active",
    )
    Project.objects.create(
        code="P-GLO",
        name="Globex rollout",
        customer=customer,
        contract=contract,
        legal_entity=entity,
        region="emea",
        currency="GBP",
        status="active",
    )
    Resource.objects.create(
        name="Ada Byron",
        email="ada@example.invalid",
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )
    return connection


def _approve_time(*days: int) -> None:
    for day in days:
        TimeEntry.objects.create(
            resource=Resource.objects.get(),
            project=Project.objects.get(),
            date=date(2026, 11, day),
            hours=Decimal("7.5"),
            approval_state=ApprovalState.APPROVED,
        )


def _account_codes(sandbox: Sandbox, invoice: Invoice) -> list[str]:
    """The account code of each line of this invoice as Xero holds it."""
    (sent,) = [
        r["data"]
        for r in sandbox.records("xero", "Invoices", NEW_TENANT)
        if r["data"]["Reference"] == invoice_reference(invoice)
    ]
    return [line["AccountCode"] for line in sent["LineItems"]]


def test_an_edited_published_mapping_reaches_the_next_invoice_sent(
    xero: Connection, sandbox: Sandbox, django_capture_on_commit_callbacks: Any
) -> None:
    _approve_time(2, 3)
    assert billing_run().invoices == 1
    assert outbox_dispatch(connection_id=xero.pk, worker="test").done == 1
    first = Invoice.objects.get()
    assert _account_codes(sandbox, first) == ["200", "200"]  # the default: Xero's "Sales"

    # An integration admin books UK01's revenue to account 260 from now on: a value map keyed
    # by the legal entity, named by a new version of the Invoices mapping.
    with django_capture_on_commit_callbacks(execute=True):
        value_map_create(
            name="xero_uk_revenue",
            entries={"UK01": "260"},
            default="200",
            description="Legal entity code -> revenue account from 2027",
            actor=None,
        )
        draft = mapping_set_create_draft(
            connection=xero, object_type="Invoices", canonical_model="invoice", actor=None
        )
        row = draft.fields.get(vendor_path="LineItems[].AccountCode")
        row.options = {**row.options, "value_map": "xero_uk_revenue"}
        row.save()
        published = mapping_set_publish(mapping_set=draft, actor=None)
    assert published.version == 2

    _approve_time(4)
    assert billing_run().invoices == 1
    assert outbox_dispatch(connection_id=xero.pk, worker="test").done == 1
    second = Invoice.objects.exclude(pk=first.pk).get()
    assert _account_codes(sandbox, second) == ["260"]
    assert _account_codes(sandbox, first) == ["200", "200"]  # what was sent stays as sent


def test_an_invoice_the_mapping_cannot_render_waits_on_a_case_then_goes(
    xero: Connection, sandbox: Sandbox, django_capture_on_commit_callbacks: Any
) -> None:
    # A value-map gap: the account map loses its default, and UK01 has no entry.
    with django_capture_on_commit_callbacks(execute=True):
        value_map_set_entries(
            value_map=ValueMap.objects.get(name="xero_sales_account"),
            entries={"US01": "200"},
            default="",
            actor=None,
        )
    _approve_time(2, 3)
    report = billing_run()
    assert (report.billed, report.invoices) == (2, 1)
    invoice = Invoice.objects.get()
    assert not OutboxMessage.objects.exists()  # nothing half-built is queued for Xero

    case = ExceptionCase.objects.get(case_type="outbound_mapping_error")
    assert (case.queue, case.status, case.connection_id) == ("integration_admin", "open", xero.pk)
    assert case.message == (
        f"1 invoice (GBP 2,520.00, 15.00 hours) for {xero.name} cannot be rendered by its "
        "published Invoices mapping: legal_entity__code (from AccountCode): value 'UK01' is not "
        "in value map 'xero_sales_account' and the map has no default. Fix the mapping (or the "
        "value map); the next run sends them."
    )
    assert list(case.blocked_records.values_list("record_type", "record_id")) == [
        ("invoice", invoice.pk)
    ]
    # The next run, before the fix: still held, on the same case, not queued.
    billing_run()
    assert not OutboxMessage.objects.exists()
    assert ExceptionCase.objects.filter(case_type="outbound_mapping_error").count() == 1

    # The admin adds UK01; the next run renders the invoice, queues it and clears the case.
    with django_capture_on_commit_callbacks(execute=True):
        value_map_set_entries(
            value_map=ValueMap.objects.get(name="xero_sales_account"),
            entries={"US01": "200", "UK01": "260"},
            actor=None,
        )
    assert billing_run().billed == 0
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    assert outbox_dispatch(connection_id=xero.pk, worker="test").done == 1
    assert _account_codes(sandbox, invoice) == ["260", "260"]


def test_a_required_vendor_field_left_unmapped_opens_a_case_instead_of_a_refusal(
    xero: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    # An admin drops the Reference row: Xero would create the invoice, but a retry could no
    # longer find it (look-up-before-create), so put_invoices requires it.
    with django_capture_on_commit_callbacks(execute=True):
        draft = mapping_set_create_draft(
            connection=xero, object_type="Invoices", canonical_model="invoice", actor=None
        )
        draft.fields.filter(vendor_path="Reference").delete()
        mapping_set_publish(mapping_set=draft, actor=None)
    _approve_time(2)
    assert billing_run().invoices == 1

    assert not OutboxMessage.objects.exists()
    case = ExceptionCase.objects.get(case_type="outbound_mapping_error")
    assert "writes no Reference, which put_invoices needs" in case.message
    assert case.record_count == 1


def test_a_connection_without_a_published_mapping_holds_its_invoices_on_a_case(
    make_connection: Callable[..., Connection],
) -> None:
    entity = LegalEntity.objects.create(code="UK01", name="Concord", base_currency="GBP")
    bare = make_connection("xero")  # no defaults installed
    RoutingRule.objects.create(role="erp", legal_entity=entity, connection=bare)
    RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("100"))
    customer = Customer.objects.create(name="Initech", legal_entity=entity, currency="GBP")
    contract = Contract.objects.create(
        number="C-1", customer=customer, legal_entity=entity, billing_model="tm", currency="GBP"
    )
    project = Project.objects.create(
        code="P-1",
        name="Initech",
        customer=customer,
        contract=contract,
        legal_entity=entity,
        currency="GBP",
        status="active",
    )
    worker = Resource.objects.create(
        name="Ada",
        email="a@example.invalid",
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )
    TimeEntry.objects.create(
        resource=worker,
        project=project,
        date=date(2026, 11, 2),
        hours=Decimal("1"),
        approval_state=ApprovalState.APPROVED,
    )
    assert billing_run().invoices == 1
    case = ExceptionCase.objects.get(case_type="outbound_mapping_error")
    assert "no published Invoices mapping" in case.message
    assert not OutboxMessage.objects.exists()
