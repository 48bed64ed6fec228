"""Xero's values as Xero sends them: versions in one unit (microseconds) on every path (a
push's result, a poll, a cross-reference written before this rule), and what a tenant implies
(the legal entity of its invoices, the currency of its contacts). Payloads have the shapes of
../shared/specs/xero-accounting.yaml; the flows run against the sandbox's legacy tenant."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import closing
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.contenttypes.models import ContentType

from integrations.connectors.base import ItemResult
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    Connection,
    CrossReference,
    Customer,
    Invoice,
    LegalEntity,
    RoutingRule,
)
from integrations.sync.polling import poll_object
from integrations.sync.upsert import is_stale
from integrations.vendors import connector_for
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db

LEGACY_TENANT = "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"
# The spec's own example invoice (xero-accounting.yaml, PUT /Invoices response): Xero writes
# UpdatedDateUTC with the offset; other examples leave it out.
SPEC_INVOICE: dict[str, Any] = {
    "Type": "ACCREC",
    "InvoiceID": "4bc8ed30-84b8-4a5e-8e2f-dc0a0b8b54f6",
    "InvoiceNumber": "INV-0011",
    "Reference": "INV-0011",
    "CurrencyCode": "USD",
    "Status": "DRAFT",
    "DateString": "2019-03-11T00:00:00",
    "Date": "/Date(1552262400000+0000)/",
    "UpdatedDateUTC": "/Date(1573755038314+0000)/",
}
SPEC_MICROS = 1573755038314 * 1000


def test_a_push_result_carries_xeros_stamp_as_micros() -> None:
    result = ItemResult(
        ok=True,
        external_id=SPEC_INVOICE["InvoiceID"],
        external_version=SPEC_INVOICE["UpdatedDateUTC"],
        data=SPEC_INVOICE,
    )
    assert result.external_version == str(SPEC_MICROS)
    # Without the offset part, as some of Xero's examples write it: the same instant.
    assert ItemResult(ok=True, external_version="/Date(1573755038314)/").external_version == str(
        SPEC_MICROS
    )
    # Set after construction (a look-up's record), Salesforce's and Harvest's stamps alike.
    found = ItemResult(ok=True)
    found.external_version = "2026-08-28T09:00:10.250+0000"
    assert found.external_version == "1787907610250000"
    found.external_version = "2017-06-26T21:52:18Z"
    assert found.external_version == "1498513938000000"
    assert ItemResult(ok=True, external_version="").external_version == ""
    assert ItemResult(ok=True, external_version="not a stamp").external_version == ""


def _xref(version: str) -> CrossReference:
    return CrossReference(external_id="x", external_version=version)


def test_is_stale_reads_versions_stored_in_any_unit() -> None:
    # What pushes stored before versions had one unit: Xero's own string.
    assert is_stale(SPEC_MICROS, _xref("/Date(1573755038314+0000)/"))
    assert is_stale(SPEC_MICROS - 1, _xref("/Date(1573755038314)/"))
    assert not is_stale(SPEC_MICROS + 1000, _xref("/Date(1573755038314+0000)/"))
    assert is_stale(SPEC_MICROS, _xref(str(SPEC_MICROS)))
    assert not is_stale(SPEC_MICROS, _xref(""))
    assert not is_stale(SPEC_MICROS, _xref("garbled"))
    assert not is_stale(SPEC_MICROS, None)


def test_the_migration_turns_stored_stamps_into_micros(connection_row: Connection) -> None:
    migration = importlib.import_module("integrations.migrations.0011_poll_health_versions")
    customer = Customer.objects.create(name="Granite Retail Ltd", currency="GBP")
    kind = ContentType.objects.get_for_model(Customer)
    values = {
        "a": "/Date(1796153857772+0000)/",
        "b": "/Date(1796153857772)/",
        "c": "2026-08-28T09:00:10.000+0000",
        "d": "1796153857772000",
        "e": "",
        "f": "garbled",
    }
    for n, (external_id, version) in enumerate(values.items()):
        other = customer if n == 0 else Customer.objects.create(name=f"C{n}", currency="GBP")
        CrossReference.objects.create(
            content_type=kind,
            object_id=other.pk,
            connection=connection_row,
            external_id=external_id,
            external_version=version,
        )

    migration.versions_to_micros(django_apps, None)

    stored = dict(CrossReference.objects.values_list("external_id", "external_version"))
    assert stored == {
        "a": "1796153857772000",
        "b": "1796153857772000",
        "c": "1787907610000000",
        "d": "1796153857772000",
        "e": "",
        "f": "",
    }


@pytest.fixture
def connection_row(make_connection: Callable[..., Connection]) -> Connection:
    return make_connection("xero")


@pytest.fixture
def legacy(make_connection: Callable[..., Connection], sandbox: Sandbox) -> Connection:
    """The legacy tenant (the US and German entities, base USD) next to the new one (UK)."""
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    legacy = make_connection("xero", rate_limit_per_minute=10_000)
    legacy.credentials = {**legacy.credentials, "tenant_id": LEGACY_TENANT}
    legacy.save()
    new = make_connection("xero", rate_limit_per_minute=10_000)
    entities = {
        code: LegalEntity.objects.create(
            code=code, name=code, country=country, base_currency=currency
        )
        for code, country, currency in (
            ("US01", "US", "USD"),
            ("DE01", "DE", "EUR"),
            ("UK01", "GB", "GBP"),
        )
    }
    RoutingRule.objects.create(role="erp", connection=legacy)  # the default: US and DE
    RoutingRule.objects.create(role="erp", legal_entity=entities["UK01"], connection=new)
    mapping_defaults_install(connection=legacy)
    return legacy


def test_polled_contacts_and_invoices_take_what_the_tenant_implies(
    legacy: Connection, sandbox: Sandbox
) -> None:
    contacts = sandbox.records("xero", "Contacts", tenant=LEGACY_TENANT)
    without_currency = [c for c in contacts if not c["data"].get("DefaultCurrency")]
    assert without_currency  # the seeded firm's client billed in CHF has none

    report = poll_object(connection_id=legacy.pk, object_type="Contacts")
    assert report.failed == 0
    assert report.applied == len(contacts)
    xref = CrossReference.objects.get(connection=legacy, external_id=without_currency[0]["id"])
    assert Customer.objects.get(pk=xref.object_id).currency == "USD"  # the tenant's base

    invoices = sandbox.records("xero", "Invoices", tenant=LEGACY_TENANT)
    report = poll_object(connection_id=legacy.pk, object_type="Invoices")
    assert report.failed == 0
    assert report.applied == len(invoices)
    entity_of = dict(Invoice.objects.values_list("currency", "legal_entity__code").distinct())
    assert entity_of == {"USD": "US01", "EUR": "DE01"}


def test_an_invoice_pushed_and_polled_back_is_the_same_version(
    legacy: Connection, sandbox: Sandbox
) -> None:
    """The outbox stores the push result's version on the cross-reference; the next poll
    reads the invoice back at that version: stale (our own write), not a crash."""
    poll_object(connection_id=legacy.pk, object_type="Contacts")
    poll_object(connection_id=legacy.pk, object_type="Invoices")
    customer = Customer.objects.filter(currency="USD").order_by("pk").first()
    assert customer is not None
    contact_id = CrossReference.objects.get(
        connection=legacy, content_type__model="customer", object_id=customer.pk
    ).external_id
    with closing(connector_for(legacy)) as xero:
        [result] = xero.write(
            "put_invoices",
            [
                {
                    "Type": "ACCREC",
                    "Contact": {"ContactID": contact_id},
                    "CurrencyCode": "USD",
                    "Reference": "CONCORD-INV-900001",
                    "Status": "DRAFT",
                    "Date": "2026-09-01",
                    "LineItems": [
                        {
                            "Description": "Consulting",
                            "Quantity": 1.0,
                            "UnitAmount": 1200.0,
                            "AccountCode": "200",
                            "TaxType": "TAX001",
                        }
                    ],
                }
            ],
            idempotency_key="test-push-then-poll",
        )
    assert result.ok, result.error
    assert result.data["UpdatedDateUTC"].startswith("/Date(")
    assert result.external_version.isdigit()
    draft = Invoice.objects.create(
        legal_entity=LegalEntity.objects.get(code="US01"),
        customer=customer,
        currency="USD",
        subtotal=Decimal("1200"),
        tax_total=Decimal("0"),
        total=Decimal("1200"),
    )
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Invoice),
        object_id=draft.pk,
        connection=legacy,
        external_id=result.external_id,
        external_version=result.external_version,
    )

    report = poll_object(connection_id=legacy.pk, object_type="Invoices")

    assert report.error == ""
    assert report.failed == 0
    assert report.read == 1
    assert report.stale == 1
    draft.refresh_from_db()
    assert draft.total == Decimal("1200")
