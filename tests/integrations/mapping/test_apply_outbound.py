"""Outbound mapping (canonical -> vendor payload) and round trips through the default mappings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from integrations.mapping.apply import FieldSpec, compile_mapping, map_inbound, map_outbound
from integrations.mapping.errors import OutboundMappingError
from integrations.mapping.transforms import ValueMapTable
from integrations.vendors import VENDORS
from tests.integrations.mapping.conftest import compiled_default, default_spec, default_tables

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
    ("harvest", "x_rate_cards"): "harvest_rate_card",
    ("harvest", "x_milestones"): "harvest_milestone",
    ("xero", "TaxRates"): "xero_tax_rate",
    ("xero", "TrackingOptions"): "xero_tracking_option",
    ("xero", "Payments"): "xero_payment",
    ("harvest", "invoices"): "harvest_invoice",
    ("harvest", "invoice_payments"): "harvest_invoice_payment",
    ("harvest", "task_assignments"): "harvest_task_assignment",
    ("harvest", "user_assignments"): "harvest_user_assignment",
    ("salesforce", "Contract_Rate__c"): "salesforce_contract_rate",
}


def test_every_default_mapping_has_a_fixture() -> None:
    declared = {(v, m.object_type) for v, entry in VENDORS.items() for m in entry.mappings}
    assert declared == set(FIXTURE_FOR)


@pytest.mark.parametrize(("vendor", "object_type"), sorted(FIXTURE_FOR))
def test_round_trip_of_two_way_fields(vendor: str, object_type: str, payload: Payload) -> None:
    mapping = compiled_default(vendor, object_type)
    spec = default_spec(vendor, object_type)
    two_way = {f.canonical_field for f in spec.fields if f.direction == "both"}

    first = map_inbound(mapping, payload(FIXTURE_FOR[(vendor, object_type)]))
    assert first.errors == []
    # Partial: what the vendor sent back carries no outbound-only values (an invoice's lines).
    vendor_payload = map_outbound(mapping, first.fields, partial=True)
    again = map_inbound(mapping, vendor_payload)

    assert two_way, "a default mapping with nothing to write back"
    for name in two_way & set(first.fields):
        assert again.fields.get(name) == first.fields[name], name


def test_xero_invoice_outbound_payload(payload: Payload) -> None:
    mapping = compiled_default("xero", "Invoices")
    fields = map_inbound(mapping, payload("xero_invoice")).fields
    assert map_outbound(mapping, fields, partial=True) == {
        "InvoiceNumber": "INV-00002",
        "Status": "PAID",
        "Contact": {"ContactID": "20f2c360-7ef8-4d5b-95a2-5c02832ea288"},
        "CurrencyCode": "GBP",
        "Date": "2026-09-30",
        "DueDate": "2026-10-30",
    }  # totals are Xero's to compute: inbound only
    assert map_outbound(mapping, {"status": "voided"}, partial=True) == {"Status": "VOIDED"}


def _billing_run_invoice(**changes: Any) -> dict[str, Any]:
    """A draft invoice as the billing run hands it to the sync layer."""
    return {
        "reference": "CONCORD-INV-7",
        "status": "draft",
        "currency": "GBP",
        "issue_date": date(2026, 11, 21),
        "due_date": date(2026, 12, 21),
        "legal_entity__code": "UK01",
        "customer__name": "Globex Ltd",
        "customer__tax_number": "GB123456789",
        "tax_rate__code": "OUTPUT2",
        "lines": [
            {
                "description": "TE-1 2026-11-02 Ada Byron (7.50 h)",
                "quantity": Decimal("7.50"),
                "unit_amount": Decimal("140.00"),
                "amount": Decimal("1050.00"),
            },
            {
                "description": "TE-2 2026-11-03 Ada Byron (0.25 h)",
                "quantity": Decimal("0.25"),
                "unit_amount": Decimal("140.00"),
                "amount": Decimal("35.00"),
            },
        ],
        **changes,
    }


def test_xero_invoice_from_the_billing_run_renders_the_whole_draft() -> None:
    mapping = compiled_default("xero", "Invoices")
    line = {"AccountCode": "200", "TaxType": "OUTPUT2", "UnitAmount": 140}
    assert map_outbound(mapping, _billing_run_invoice()) == {
        "Type": "ACCREC",
        "Status": "DRAFT",
        # An unknown contact: by name and tax number, which Xero matches or creates.
        "Contact": {"Name": "Globex Ltd", "TaxNumber": "GB123456789"},
        "CurrencyCode": "GBP",
        "Date": "2026-11-21",
        "DueDate": "2026-12-21",
        "LineAmountTypes": "Exclusive",
        "Reference": "CONCORD-INV-7",
        "LineItems": [
            {**line, "Description": "TE-1 2026-11-02 Ada Byron (7.50 h)", "Quantity": 7.5},
            {**line, "Description": "TE-2 2026-11-03 Ada Byron (0.25 h)", "Quantity": 0.25},
        ],
    }


def test_a_known_contact_is_sent_by_id_alone() -> None:
    mapping = compiled_default("xero", "Invoices")
    known = map_outbound(mapping, _billing_run_invoice(customer__external_id="c-42"))
    assert known["Contact"] == {"ContactID": "c-42"}


def test_account_code_per_legal_entity_from_a_value_map_keyed_by_the_entity() -> None:
    tables = default_tables()
    tables["xero_sales_account"] = ValueMapTable.build("xero_sales_account", {"US01": "260"}, "200")
    spec = default_spec("xero", "Invoices")
    mapping = compile_mapping(
        object_type="Invoices",
        canonical_model="invoice",
        external_id_path="InvoiceID",
        fields=spec.fields,
        value_maps=tables,
    )
    us = map_outbound(mapping, _billing_run_invoice(legal_entity__code="US01"))
    uk = map_outbound(mapping, _billing_run_invoice(legal_entity__code="UK01"))
    assert {line["AccountCode"] for line in us["LineItems"]} == {"260"}
    assert {line["AccountCode"] for line in uk["LineItems"]} == {"200"}  # the map's default


def test_a_value_map_gap_fails_the_render_naming_field_map_and_value() -> None:
    tables = default_tables()
    tables["xero_sales_account"] = ValueMapTable.build("xero_sales_account", {"UK01": "200"}, None)
    mapping = compile_mapping(
        object_type="Invoices",
        canonical_model="invoice",
        external_id_path="InvoiceID",
        fields=default_spec("xero", "Invoices").fields,
        value_maps=tables,
    )
    with pytest.raises(OutboundMappingError) as caught:
        map_outbound(mapping, _billing_run_invoice(legal_entity__code="DE01"))
    # Once for the invoice, not once per line: the shared value is converted once.
    assert [(e.field, e.path, e.message) for e in caught.value.errors] == [
        (
            "legal_entity__code",
            "AccountCode",
            "value 'DE01' is not in value map 'xero_sales_account' and the map has no default",
        )
    ]


def test_line_errors_name_the_line() -> None:
    mapping = compiled_default("xero", "Invoices")
    lines = _billing_run_invoice()["lines"]
    lines[1] = {"description": "TE-2", "quantity": "lots", "unit_amount": Decimal("1")}
    with pytest.raises(OutboundMappingError) as caught:
        map_outbound(mapping, _billing_run_invoice(lines=lines))
    assert [(e.field, e.path, e.message) for e in caught.value.errors] == [
        ("lines[1].quantity", "Quantity", "'lots' is not an amount")
    ]


def test_lists_write_nested_item_paths_into_each_item_separately() -> None:
    mapping = compile_mapping(
        object_type="Invoices",
        canonical_model="invoice",
        external_id_path="InvoiceID",
        fields=[
            FieldSpec("lines[].description", "LineItems[].Description", "out"),
            FieldSpec("lines[].project__code", "LineItems[].Tracking.0.Option", "out"),
            FieldSpec(
                "kind", "LineItems[].Tracking.0.Name", "out", "default", {"default": "Project"}
            ),
        ],
    )
    body = map_outbound(
        mapping,
        {"lines": [{"description": "a", "project__code": "P-1"}, {"description": "b"}]},
    )
    assert body == {
        "LineItems": [
            {"Description": "a", "Tracking": [{"Name": "Project", "Option": "P-1"}]},
            {"Description": "b", "Tracking": [{"Name": "Project"}]},
        ]
    }


def test_list_and_condition_mistakes_are_configuration_problems() -> None:
    mapping = compile_mapping(
        object_type="Invoices",
        canonical_model="invoice",
        external_id_path="InvoiceID",
        fields=[
            FieldSpec("lines[].quantity", "LineItems[].Quantity", "both"),
            FieldSpec("lines[].amount", "LineAmount", "out"),
            FieldSpec("lines[].x", "A[].B[].C", "out"),
            FieldSpec("name", "Name", "out", options={"when": "lines[].x"}),
            FieldSpec("status", "Status", "in", options={"unless": "number"}),
            FieldSpec(
                "legal_entity__code",
                "Account",
                "both",
                "value_map",
                {"value_map": "xero_sales_account", "keyed_by": "canonical"},
            ),
        ],
        value_maps=default_tables(),
    )
    assert mapping.problems == (
        "lines[].quantity (LineItems[].Quantity): list paths ('[]') are written outbound only: "
        "set the direction to out",
        "lines[].amount (LineAmount): a canonical list item needs a vendor list path "
        "(e.g. LineItems[].X)",
        "lines[].x (A[].B[].C): path 'A[].B[].C' has '[]' twice: lists inside lists are not "
        "supported",
        "name (Name): 'when' names a list item, but this field is not one",
        "status (Status): 'unless' applies outbound only: set the direction to out",
        "legal_entity__code (Account): a value map keyed by the canonical value reads one way: "
        "map it outbound only",
    )


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
        # No contact id: the name is then required.
        ("customer__name", "Contact.Name", "required canonical value missing"),
        ("currency", "CurrencyCode", "required canonical value missing"),
        ("issue_date", "Date", "'someday' is not a date (expected YYYY-MM-DD or /Date(ms+0000)/)"),
        ("reference", "Reference", "required canonical value missing"),
        ("lines", "LineItems", "required canonical value missing"),
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
