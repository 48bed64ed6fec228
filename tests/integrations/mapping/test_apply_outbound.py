"""Outbound mapping (canonical -> vendor payload) and round trips through the default mappings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from integrations.mapping.apply import FieldSpec, compile_mapping, map_inbound, map_outbound
from integrations.mapping.defaults import DEFAULT_MAPPINGS
from integrations.mapping.errors import OutboundMappingError
from tests.integrations.mapping.conftest import compiled_default, default_tables

Payload = Callable[[str], dict[str, Any]]

FIXTURE_FOR = {
    ("xero", "Contacts"): "xero_contact",
    ("xero", "Invoices"): "xero_invoice",
    ("harvest", "time_entries"): "harvest_time_entry",
    ("harvest", "projects"): "harvest_project",
    ("harvest", "clients"): "harvest_client",
    ("harvest", "users"): "harvest_user",
    ("harvest", "expenses"): "harvest_expense",
    ("salesforce", "Account"): "salesforce_account",
    ("salesforce", "Opportunity"): "salesforce_opportunity",
    ("salesforce", "Contract"): "salesforce_contract",
}


def test_every_default_mapping_has_a_fixture() -> None:
    declared = {(v, m.object_type) for v, ms in DEFAULT_MAPPINGS.items() for m in ms}
    assert declared == set(FIXTURE_FOR)


@pytest.mark.parametrize(("vendor", "object_type"), sorted(FIXTURE_FOR))
def test_round_trip_of_two_way_fields(vendor: str, object_type: str, payload: Payload) -> None:
    mapping = compiled_default(vendor, object_type)
    spec = next(m for m in DEFAULT_MAPPINGS[vendor] if m.object_type == object_type)
    two_way = {f.canonical_field for f in spec.fields if f.direction == "both"}

    first = map_inbound(mapping, payload(FIXTURE_FOR[(vendor, object_type)]))
    assert first.errors == []
    vendor_payload = map_outbound(mapping, first.fields)
    again = map_inbound(mapping, vendor_payload)

    assert two_way, "a default mapping with nothing to write back"
    for name in two_way & set(first.fields):
        assert again.fields.get(name) == first.fields[name], name


def test_xero_invoice_outbound_payload(payload: Payload) -> None:
    mapping = compiled_default("xero", "Invoices")
    fields = map_inbound(mapping, payload("xero_invoice")).fields
    assert map_outbound(mapping, fields) == {
        "InvoiceNumber": "INV-00002",
        "Status": "PAID",
        "Contact": {"ContactID": "20f2c360-7ef8-4d5b-95a2-5c02832ea288"},
        "CurrencyCode": "GBP",
        "Date": "2026-09-30",
        "DueDate": "2026-10-30",
    }  # totals are Xero's to compute: inbound only
    assert map_outbound(mapping, {"status": "voided"}, partial=True) == {"Status": "VOIDED"}


def test_harvest_time_entry_outbound_uses_flat_ids() -> None:
    mapping = compiled_default("harvest", "time_entries")
    body = map_outbound(
        mapping,
        {
            "date": date(2026, 11, 2),
            "hours": Decimal("7.50"),
            "billable": True,
            "notes": None,
            "project__external_id": "1000011",
            "resource__external_id": "1000009",
            "approval_state": "approved",  # inbound only: Harvest approves in its own UI
        },
    )
    assert body == {
        "spent_date": "2026-11-02",
        "hours": 7.5,
        "billable": True,
        "notes": "",
        "project_id": 1000011,
        "user_id": 1000009,
    }


def test_partial_canonical_gives_partial_payload() -> None:
    opportunity = compiled_default("salesforce", "Opportunity")
    # Project provisioning writes the new ids back to the opportunity.
    ids = {"psa_project_id": "1000123", "erp_project_id": "TC-9"}
    assert map_outbound(opportunity, ids, partial=True) == {
        "PSA_Project_Id__c": "1000123",
        "ERP_Project_Id__c": "TC-9",
    }
    project = compiled_default("harvest", "projects")
    assert map_outbound(project, {"status": "on_hold"}, partial=True) == {"is_active": True}
    assert map_outbound(project, {"status": "closed"}, partial=True) == {"is_active": False}


def test_outbound_errors_are_collected() -> None:
    mapping = compiled_default("xero", "Invoices")
    with pytest.raises(OutboundMappingError) as caught:
        map_outbound(
            mapping,
            {"status": "lost", "issue_date": "someday", "customer__external_id": None},
        )
    assert [(e.field, e.path, e.message) for e in caught.value.errors] == [
        (
            "status",
            "Status",
            "canonical value 'lost' has no vendor value in value map 'xero_invoice_status'",
        ),
        ("customer__external_id", "Contact.ContactID", "required canonical value is empty"),
        ("currency", "CurrencyCode", "required canonical value missing"),
        ("issue_date", "Date", "'someday' is not a date (expected YYYY-MM-DD or /Date(ms+0000)/)"),
    ]


def test_outbound_required_field_missing() -> None:
    mapping = compile_mapping(
        object_type="time_entries",
        canonical_model="timeentry",
        external_id_path="id",
        fields=[FieldSpec("project__external_id", "project_id", "out", required=True)],
        value_maps=default_tables(),
    )
    with pytest.raises(OutboundMappingError, match="required canonical value missing"):
        map_outbound(mapping, {})


def test_concatenation_is_inbound_only() -> None:
    users = compiled_default("harvest", "users")
    assert "name" not in {f.name for f in users.outbound}
    assert map_outbound(users, {"name": "Jonas Jensen", "email": "j@x.example"}, partial=True) == {
        "email": "j@x.example"
    }


def test_money_outbound_as_string_option() -> None:
    mapping = compile_mapping(
        object_type="x",
        canonical_model="invoice",
        external_id_path="id",
        fields=[FieldSpec("total", "Total", transform="money", options={"as": "string"})],
    )
    assert map_outbound(mapping, {"total": Decimal("10.10")}) == {"Total": "10.10"}
