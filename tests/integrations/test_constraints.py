"""The database itself refuses bad canonical data, whatever code path writes it."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, transaction

from integrations import models as m
from tests.factories import (
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    TimeEntryFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db


def _xref(record: m.Customer, connection: m.Connection, external_id: str) -> m.CrossReference:
    return m.CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(record),
        object_id=record.pk,
        connection=connection,
        external_id=external_id,
    )


def test_duplicate_external_id_in_one_connection_is_refused() -> None:
    xero = make_connection()
    first, second = CustomerFactory.create(), CustomerFactory.create()
    _xref(first, xero, "CONTACT-1")
    with pytest.raises(IntegrityError, match="xref_unique_external_id"), transaction.atomic():
        _xref(second, xero, "CONTACT-1")


def test_a_record_has_one_identity_per_connection() -> None:
    xero = make_connection()
    customer = CustomerFactory.create()
    _xref(customer, xero, "CONTACT-1")
    with (
        pytest.raises(IntegrityError, match="xref_unique_record_per_connection"),
        transaction.atomic(),
    ):
        _xref(customer, xero, "CONTACT-2")


def test_same_external_id_is_allowed_in_another_connection_or_object_type() -> None:
    new_erp = make_connection()
    legacy_erp = make_connection(name="Xero (legacy)")
    customer = CustomerFactory.create()
    project = ProjectFactory.create()
    _xref(customer, new_erp, "42")
    _xref(customer, legacy_erp, "42")
    m.CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(project),
        object_id=project.pk,
        connection=new_erp,
        external_id="42",
    )
    assert m.CrossReference.objects.filter(external_id="42").count() == 3


def test_currency_must_be_iso_4217() -> None:
    with pytest.raises(IntegrityError, match="customer_currency_iso4217"), transaction.atomic():
        CustomerFactory.create(currency="eur")


def test_time_entry_hours_must_be_within_a_day() -> None:
    with pytest.raises(IntegrityError, match="timeentry_hours_range"), transaction.atomic():
        TimeEntryFactory.create(hours=Decimal("25"))
    with pytest.raises(IntegrityError, match="timeentry_hours_range"), transaction.atomic():
        TimeEntryFactory.create(hours=Decimal("0"))


def test_invoice_total_must_equal_subtotal_plus_tax() -> None:
    entity = LegalEntityFactory.create()
    customer = CustomerFactory.create(legal_entity=entity)
    with (
        pytest.raises(IntegrityError, match="invoice_total_is_subtotal_plus_tax"),
        transaction.atomic(),
    ):
        m.Invoice.objects.create(
            legal_entity=entity,
            customer=customer,
            currency="EUR",
            subtotal=Decimal("100.00"),
            tax_total=Decimal("19.00"),
            total=Decimal("120.00"),
        )


def test_invoice_numbers_are_unique_per_legal_entity_but_drafts_have_none() -> None:
    entity = LegalEntityFactory.create()
    customer = CustomerFactory.create(legal_entity=entity)
    for _ in range(2):  # two drafts without a number are fine
        m.Invoice.objects.create(legal_entity=entity, customer=customer, currency="EUR")
    m.Invoice.objects.create(legal_entity=entity, customer=customer, currency="EUR", number="INV-1")
    other = LegalEntityFactory.create()
    m.Invoice.objects.create(legal_entity=other, customer=customer, currency="EUR", number="INV-1")
    with pytest.raises(IntegrityError, match="invoice_unique_entity_number"), transaction.atomic():
        m.Invoice.objects.create(
            legal_entity=entity, customer=customer, currency="EUR", number="INV-1"
        )


def test_billing_event_must_point_at_exactly_the_source_it_names() -> None:
    entry = TimeEntryFactory.create()
    common = {
        "project": entry.project,
        "legal_entity": entry.project.legal_entity,
        "description": "Consulting",
        "unit_amount": Decimal("150"),
        "amount": Decimal("1125"),
        "currency": "EUR",
    }
    with (
        pytest.raises(IntegrityError, match="billingevent_one_matching_source"),
        transaction.atomic(),
    ):
        m.BillingEvent.objects.create(source="expense", time_entry=entry, **common)
    event = m.BillingEvent.objects.create(source="time", time_entry=entry, **common)
    with pytest.raises(IntegrityError), transaction.atomic():  # one billing event per time entry
        m.BillingEvent.objects.create(source="time", time_entry=entry, **common)
    event.status = m.BillingEvent.Status.INVOICED
    with (
        pytest.raises(IntegrityError, match="billingevent_invoiced_has_invoice"),
        transaction.atomic(),
    ):
        event.save()


def test_firm_default_rate_card_is_unique_per_role_and_currency() -> None:
    m.RateCard.objects.create(role="Partner", currency="EUR", bill_rate=Decimal("350"))
    with (
        pytest.raises(IntegrityError, match="ratecard_unique_default_role_currency"),
        transaction.atomic(),
    ):
        m.RateCard.objects.create(role="Partner", currency="EUR", bill_rate=Decimal("360"))


def test_connection_vendor_must_match_its_role() -> None:
    with (
        pytest.raises(IntegrityError, match="connection_vendor_matches_role"),
        transaction.atomic(),
    ):
        m.Connection.objects.create(
            name="odd", role="crm", vendor="xero", base_url="http://127.0.0.1:1/"
        )


def test_ownership_rules_are_seeded_from_the_domain_table() -> None:
    owners = {(r.object_type, r.field): r.owner_role for r in m.OwnershipRule.objects.all()}
    assert owners[("customer", "")] == "crm"
    assert owners[("customer", "tax_number")] == "erp"
    assert owners[("customer", "legal_entity")] == "erp"
    assert owners[("contract", "")] == "crm"
    assert owners[("timeentry", "")] == "psa"
    assert owners[("milestone", "")] == "psa"
    assert owners[("invoice", "")] == "erp"
    assert owners[("payment", "")] == "erp"
    with pytest.raises(IntegrityError), transaction.atomic():
        m.OwnershipRule.objects.create(object_type="customer", field="tax_number", owner_role="crm")
