"""Inbound mapping of vendor-shaped payloads through the default mappings (no database)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

from integrations.mapping.apply import FieldSpec, compile_mapping, map_inbound
from integrations.mapping.errors import MappingError
from integrations.mapping.transforms import to_microseconds
from tests.integrations.mapping.conftest import compiled_default, default_tables

Payload = Callable[[str], dict[str, Any]]


def test_xero_contact_to_customer(payload: Payload) -> None:
    record = map_inbound(compiled_default("xero", "Contacts"), payload("xero_contact"))
    assert record.errors == []
    assert record.canonical_model == "customer"
    assert record.external_id == "20f2c360-7ef8-4d5b-95a2-5c02832ea288"
    assert record.source_version == 1787907900000 * 1000
    assert record.fields == {
        "name": "Harbor Energy Ltd",
        "tax_number": "UK781802744",
        "billing_email": "billing@harbor4.example",
        "currency": "GBP",
        "country": "GB",
        "billing_address": "197 Main Street\nLondon\nEC1A 1BB\nUnited Kingdom",
        "active": True,
    }


def test_xero_contact_without_optional_fields(payload: Payload) -> None:
    contact = payload("xero_contact")
    # Xero leaves empty fields out of a contact altogether.
    for key in ("TaxNumber", "EmailAddress", "Addresses"):
        del contact[key]
    contact["ContactStatus"] = "ARCHIVED"
    record = map_inbound(compiled_default("xero", "Contacts"), contact)
    assert record.errors == []
    assert record.fields["tax_number"] == ""  # cleared in Xero -> cleared here
    assert record.fields["billing_email"] == ""
    assert record.fields["active"] is False
    assert "country" not in record.fields
    assert "billing_address" not in record.fields


def test_xero_invoice_to_invoice(payload: Payload) -> None:
    record = map_inbound(compiled_default("xero", "Invoices"), payload("xero_invoice"))
    assert record.errors == []
    assert record.external_id == "2585702d-09b8-4a4c-964e-e498716d78b2"
    assert record.source_version == to_microseconds("/Date(1792454400000+0000)/")
    assert record.fields == {
        "number": "INV-00002",
        "status": "paid",
        "customer__external_id": "20f2c360-7ef8-4d5b-95a2-5c02832ea288",
        "currency": "GBP",
        "issue_date": date(2026, 9, 30),
        "due_date": date(2026, 10, 30),
        "subtotal": Decimal("4000.00"),
        "tax_total": Decimal("800.00"),
        "total": Decimal("4800.00"),
        "amount_due": Decimal("0.00"),
    }
    assert all(type(record.fields[k]) is Decimal for k in ("subtotal", "tax_total", "total"))


def test_harvest_time_entry_to_timeentry(payload: Payload) -> None:
    record = map_inbound(compiled_default("harvest", "time_entries"), payload("harvest_time_entry"))
    assert record.errors == []
    assert record.canonical_model == "timeentry"
    assert record.external_id == "1000999"
    assert record.source_version == to_microseconds("2026-10-22T18:01:26Z")
    assert record.fields == {
        "date": date(2026, 10, 15),
        "hours": Decimal("8.00"),
        "approval_state": "approved",
        "billable": True,
        "notes": "Build (PUK-0012)",
        "task": "Project Management",
        "project__external_id": "1000011",
        "resource__external_id": "1000009",
    }


def test_harvest_project_to_project(payload: Payload) -> None:
    project = payload("harvest_project")
    record = map_inbound(compiled_default("harvest", "projects"), project)
    assert record.errors == []
    assert record.fields == {
        "code": "PUK-0012",
        "name": "Crown Redesign",
        "status": "active",
        "budget": Decimal("131000.00"),
        "start_date": date(2026, 8, 21),
        "end_date": None,  # explicit null: no end date
        "currency": "GBP",
        "customer__external_id": "1000011",
    }
    project["is_active"] = False
    assert (
        map_inbound(compiled_default("harvest", "projects"), project).fields["status"] == "closed"
    )


def test_harvest_client_user_and_expense(payload: Payload) -> None:
    client = map_inbound(compiled_default("harvest", "clients"), payload("harvest_client"))
    assert client.errors == []
    assert client.fields == {"name": "Crown Health Ltd", "currency": "GBP", "active": True}

    user = map_inbound(compiled_default("harvest", "users"), payload("harvest_user"))
    assert user.errors == []
    assert user.fields == {
        "name": "Jonas Jensen",
        "email": "jonas.jensen9@concord.example",
        "role": "Consultant",
        "cost_rate": Decimal("70.00"),
        "cost_currency": "USD",
        "active": True,
    }

    expense = map_inbound(compiled_default("harvest", "expenses"), payload("harvest_expense"))
    assert expense.errors == []
    assert expense.fields["amount"] == Decimal("544.00")
    assert expense.fields["category"] == "Travel"
    assert expense.fields["approval_state"] == "approved"
    assert expense.fields["receipt_url"] == ""  # receipt is null
    assert expense.fields["project__external_id"] == "1000011"


def test_salesforce_opportunity(payload: Payload) -> None:
    record = map_inbound(
        compiled_default("salesforce", "Opportunity"), payload("salesforce_opportunity")
    )
    assert record.errors == []
    assert record.canonical_model == "opportunity"
    assert record.external_id == "0065g0000000001AAA"
    assert record.source_version == to_microseconds("2026-08-28T09:00:10.000+0000")
    assert record.fields == {
        "name": "North Logistics Inc. - Delivery 2026",
        "stage": "Closed Won",
        "is_won": True,
        "is_closed": True,
        "close_date": date(2026, 9, 9),
        "amount": Decimal("119000.00"),
        "currency": "USD",
        "billing_model": "tm",
        "region": None,
        "customer__external_id": "0015g0000000001AAA",
        "legal_entity__code": "US01",
        "psa_project_id": "",
        "erp_project_id": "",
    }


def test_salesforce_account_and_contract(payload: Payload) -> None:
    account = map_inbound(compiled_default("salesforce", "Account"), payload("salesforce_account"))
    assert account.errors == []
    assert account.fields == {
        "name": "North Logistics Inc.",
        "currency": "USD",
        "legal_entity__code": "US01",
    }
    contract = map_inbound(
        compiled_default("salesforce", "Contract"), payload("salesforce_contract")
    )
    assert contract.errors == []
    assert contract.fields == {
        "number": "00000100",
        "customer__external_id": "0015g0000000001AAA",
        "legal_entity__code": "US01",
        "billing_model": "tm",
        "currency": "USD",
        "total_value": Decimal("119000.00"),
        "payment_terms_days": 30,
        "start_date": date(2026, 9, 9),
        "end_date": date(2027, 8, 31),
        "status": "active",
    }


def test_a_salesforce_contract_without_payment_terms_maps_to_none(payload: Payload) -> None:
    """Stored as it is (provisioning and milestone billing ask for the terms on a case), not
    refused on the way in."""
    data = payload("salesforce_contract")
    data["Payment_Terms__c"] = None
    contract = map_inbound(compiled_default("salesforce", "Contract"), data)
    assert contract.errors == []
    assert contract.fields["payment_terms_days"] is None


def test_all_field_errors_are_collected(payload: Payload) -> None:
    entry = payload("harvest_time_entry")
    entry["spent_date"] = "15/10/2026"
    entry["hours"] = "eight"
    entry["approval_status"] = "pending"
    del entry["project"]
    entry["notes"] = None
    record = map_inbound(compiled_default("harvest", "time_entries"), entry)
    assert not record.ok
    assert [(e.field, e.path) for e in record.errors] == [
        ("date", "spent_date"),
        ("hours", "hours"),
        ("approval_state", "approval_status"),
        ("project__external_id", "project.id"),
    ]
    assert str(record.errors[0]) == (
        "date (from spent_date): '15/10/2026' is not a date (expected YYYY-MM-DD or "
        "/Date(ms+0000)/)"
    )
    assert str(record.errors[2]) == (
        "approval_state (from approval_status): value 'pending' is not in value map "
        "'harvest_approval' and the map has no default"
    )
    assert str(record.errors[3]) == (
        "project__external_id (from project.id): required path 'project.id' not found: "
        "the payload has no 'project'"
    )
    # The fields that could be mapped still are.
    assert record.fields["resource__external_id"] == "1000009"
    assert record.fields["notes"] == ""


def test_required_fields_missing_or_null(payload: Payload) -> None:
    invoice = payload("xero_invoice")
    invoice["Status"] = None
    invoice["Contact"] = {}
    del invoice["InvoiceID"]
    record = map_inbound(compiled_default("xero", "Invoices"), invoice)
    messages = {e.field: e.message for e in record.errors}
    assert messages == {
        "external_id": "required path 'InvoiceID' not found: the payload has no 'InvoiceID'",
        "status": "required path 'Status' is null",
        "customer__external_id": (
            "required path 'Contact.ContactID' not found: Contact has no 'ContactID'"
        ),
    }
    assert record.external_id == ""
    assert "status" not in record.fields


def test_unreadable_modstamp_is_an_error_not_a_zero_version(payload: Payload) -> None:
    account = payload("salesforce_account")
    account["SystemModstamp"] = "last tuesday"
    record = map_inbound(compiled_default("salesforce", "Account"), account)
    assert [e.field for e in record.errors] == ["source_version"]
    assert record.source_version == 0


def test_configuration_problems_fail_the_field_not_the_record() -> None:
    mapping = compile_mapping(
        object_type="projects",
        canonical_model="project",
        external_id_path="id",
        fields=[
            FieldSpec("name", "name"),
            FieldSpec("status", "state", transform="value_map", options={"value_map": "nope"}),
            FieldSpec("budget", "budget", transform="money", options={"places": "two"}),
        ],
        value_maps=default_tables(),
    )
    assert mapping.problems == (
        "status (state): value map 'nope' does not exist",
        "budget (budget): 'places' must be a whole number from 0 to 8",
    )
    record = map_inbound(mapping, {"id": 1, "name": "P", "state": "x", "budget": 1})
    assert record.fields == {"name": "P"}
    assert record.errors == [
        MappingError("value map 'nope' does not exist", field="status", path="state"),
        MappingError("'places' must be a whole number from 0 to 8", field="budget", path="budget"),
    ]


def test_directions_and_transforms_are_the_field_mapping_choices() -> None:
    from integrations.mapping.apply import ALLOWED_OPTIONS, DIRECTIONS, TRANSFORMS
    from integrations.models import FieldMapping

    assert set(DIRECTIONS) == {"in", "out", "both"} == set(FieldMapping.Direction.values)
    assert set(TRANSFORMS) == set(FieldMapping.Transform.values)
    # A transform added to the model must say which options it takes.
    assert set(ALLOWED_OPTIONS) == set(TRANSFORMS)
    mapping = compile_mapping(
        object_type="projects",
        canonical_model="project",
        external_id_path="id",
        fields=[FieldSpec("name", "name", direction="sideways", transform="upper")],
    )
    assert mapping.problems == (
        "name (name): unknown direction 'sideways'",
        "name (name): unknown transform 'upper'",
    )


def test_a_field_with_an_unparseable_path_is_kept_as_a_failing_field() -> None:
    mapping = compile_mapping(
        object_type="projects",
        canonical_model="project",
        external_id_path="id",
        fields=[FieldSpec("name", "name"), FieldSpec("code", "a..b", required=True)],
    )
    assert mapping.problems == ("code (a..b): path 'a..b' has an empty segment",)
    record = map_inbound(mapping, {"id": 1, "name": "P"})
    assert record.fields == {"name": "P"}
    assert [e.field for e in record.errors] == ["code"]
