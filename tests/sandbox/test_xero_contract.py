"""Xero identity and Accounting: every endpoint the ERP connector uses, validated against
xero-identity.yaml and xero-accounting.yaml."""

from __future__ import annotations

from typing import Any

import httpx
from openapi_schema_validator import OAS30Validator

from .conftest import LEGACY_TENANT, NEW_TENANT, Contract

API = "/xero/api.xro/2.0"


def make_contact(
    x: httpx.Client, c: Contract, name: str = "Acme Ltd", tax_number: str | None = "GB123456789"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Name": name,
        "ContactNumber": f"C-{name}",
        "EmailAddress": "ap@acme.example",
        "Addresses": [
            {
                "AddressType": "STREET",
                "AddressLine1": "1 High St",
                "City": "London",
                "Country": "United Kingdom",
            }
        ],
    }
    if tax_number:
        body["TaxNumber"] = tax_number
    return dict(c.check(x.put(f"{API}/Contacts", json={"Contacts": [body]}))["Contacts"][0])


def make_project_option(x: httpx.Client, c: Contract, name: str = "P-1") -> dict[str, Any]:
    category = c.check(x.put(f"{API}/TrackingCategories", json={"Name": "Project"}))[
        "TrackingCategories"
    ][0]
    option = c.check(
        x.put(
            f"{API}/TrackingCategories/{category['TrackingCategoryID']}/Options",
            json={"Options": [{"Name": name}]},
        )
    )
    return {"category": category, "option": option["Options"][0]}


def invoice_body(contact_id: str, reference: str, **extra: Any) -> dict[str, Any]:
    return {
        "Type": "ACCREC",
        "Contact": {"ContactID": contact_id},
        "Reference": reference,
        "Date": "2024-03-31",
        "DueDate": "2024-04-30",
        "LineItems": [
            {
                "Description": "Consulting, March",
                "Quantity": 10.0,
                "UnitAmount": 150.0,
                "AccountCode": "200",
                "TaxType": "OUTPUT2",
            }
        ],
        **extra,
    }


def test_identity_token_and_connections(
    client: httpx.Client, xero_identity_contract: Contract, xero_identity_spec: dict[str, Any]
) -> None:
    token = client.post(
        "/xero/connect/token",
        auth=("concord-xero", "sandbox-xero-secret"),
        data={"grant_type": "client_credentials", "scope": "accounting.transactions"},
    )
    assert token.status_code == 200
    body = token.json()
    OAS30Validator(xero_identity_spec["components"]["schemas"]["AccessToken"]).validate(body)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    bad = client.post(
        "/xero/connect/token",
        data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    )
    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid_client"}
    connections = xero_identity_contract.check(
        client.get("/xero/connections", headers={"Authorization": f"Bearer {body['access_token']}"})
    )
    assert {c["tenantId"] for c in connections} == {LEGACY_TENANT, NEW_TENANT}
    assert {c["tenantName"] for c in connections} == {"Concord Legacy ERP", "Concord ERP"}


def test_reference_data(xero: httpx.Client, xero_contract: Contract) -> None:
    c = xero_contract
    rates = c.check(xero.get(f"{API}/TaxRates"))["TaxRates"]
    assert {r["TaxType"] for r in rates} >= {"OUTPUT2", "ECZROUTPUTSERVICES"}
    currencies = c.check(xero.get(f"{API}/Currencies"))["Currencies"]
    assert {x["Code"] for x in currencies} == {"GBP", "EUR", "USD"}
    organisation = c.check(xero.get(f"{API}/Organisation"))["Organisations"][0]
    assert organisation["BaseCurrency"] == "GBP"
    assert {a["Code"] for a in c.check(xero.get(f"{API}/Accounts"))["Accounts"]} >= {"090", "200"}


def test_contacts_create_get_update_list(xero: httpx.Client, xero_contract: Contract) -> None:
    c = xero_contract
    contact = make_contact(xero, c)
    assert contact["TaxNumber"] == "GB123456789"
    assert contact["Addresses"][0]["City"] == "London"
    assert contact["UpdatedDateUTC"].startswith("/Date(")
    assert contact["UpdatedDateUTC"].endswith("+0000)/")
    got = c.check(xero.get(f"{API}/Contacts/{contact['ContactID']}"))["Contacts"][0]
    assert got["ContactID"] == contact["ContactID"]
    updated = c.check(
        xero.post(
            f"{API}/Contacts/{contact['ContactID']}", json={"Contacts": [{"TaxNumber": "GB999"}]}
        )
    )["Contacts"][0]
    assert updated["TaxNumber"] == "GB999"
    upsert = c.check(
        xero.post(
            f"{API}/Contacts",
            json={
                "Contacts": [
                    {"ContactID": contact["ContactID"], "EmailAddress": "new@acme.example"}
                ]
            },
        )
    )
    assert upsert["Contacts"][0]["EmailAddress"] == "new@acme.example"
    make_contact(xero, c, "Beta GmbH")
    page = c.check(xero.get(f"{API}/Contacts", params={"page": 1, "pageSize": 1}))
    assert page["pagination"] == {"page": 1, "pageSize": 1, "pageCount": 2, "itemCount": 2}
    assert len(page["Contacts"]) == 1
    everything = c.check(xero.get(f"{API}/Contacts"))
    assert len(everything["Contacts"]) == 2
    assert "pagination" not in everything
    found = c.check(xero.get(f"{API}/Contacts", params={"where": 'Name=="Beta GmbH"'}))
    assert [x["Name"] for x in found["Contacts"]] == ["Beta GmbH"]
    duplicate = xero.put(f"{API}/Contacts", json={"Contacts": [{"Name": "Beta GmbH"}]})
    assert duplicate.status_code == 400
    assert "must be unique" in c.check(duplicate)["Elements"][0]["ValidationErrors"][0]["Message"]


def test_if_modified_since(
    xero: httpx.Client, xero_contract: Contract, client: httpx.Client
) -> None:
    c = xero_contract
    first = make_contact(xero, c, "First")
    later = make_contact(xero, c, "Later")
    since = client.get(f"/_control/records/xero/Contacts/{later['ContactID']}").json()["updated"]
    from datetime import UTC, datetime

    # A poller's watermark is the UpdatedDateUTC it saw: milliseconds, rounded down.
    header = datetime.fromtimestamp(int(since * 1000) / 1000, UTC).isoformat(
        timespec="milliseconds"
    )
    changed = c.check(xero.get(f"{API}/Contacts", headers={"If-Modified-Since": header}))[
        "Contacts"
    ]
    assert [x["Name"] for x in changed] == ["Later"]
    assert first["Name"] not in [x["Name"] for x in changed]
    rfc = c.check(
        xero.get(f"{API}/Contacts", headers={"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"})
    )["Contacts"]
    assert len(rfc) == 2


def test_tracking_categories_and_options(xero: httpx.Client, xero_contract: Contract) -> None:
    c = xero_contract
    made = make_project_option(xero, c)
    category_id = made["category"]["TrackingCategoryID"]
    listed = c.check(xero.get(f"{API}/TrackingCategories"))["TrackingCategories"]
    assert listed[0]["Options"][0]["Name"] == "P-1"
    c.check(xero.get(f"{API}/TrackingCategories/{category_id}"))
    renamed = c.check(
        xero.post(
            f"{API}/TrackingCategories/{category_id}/Options/{made['option']['TrackingOptionID']}",
            json={"Name": "P-1 Platform"},
        )
    )
    assert renamed["Options"][0]["Name"] == "P-1 Platform"
    c.check(xero.post(f"{API}/TrackingCategories/{category_id}", json={"Name": "Projects"}))
    duplicate = xero.put(
        f"{API}/TrackingCategories/{category_id}/Options", json={"Name": "P-1 Platform"}
    )
    assert duplicate.status_code == 400
    c.check(duplicate)


def test_invoices_lifecycle(xero: httpx.Client, xero_contract: Contract) -> None:
    c = xero_contract
    contact = make_contact(xero, c)
    made = make_project_option(xero, c)
    body = invoice_body(contact["ContactID"], "BILL-1")
    body["LineItems"][0]["Tracking"] = [{"Name": "Project", "Option": "P-1"}]
    invoice = c.check(xero.put(f"{API}/Invoices", json={"Invoices": [body]}))["Invoices"][0]
    assert invoice["Status"] == "DRAFT"
    assert invoice["SubTotal"] == 1500.0
    assert invoice["TotalTax"] == 300.0
    assert invoice["Total"] == 1800.0
    assert (
        invoice["LineItems"][0]["Tracking"][0]["TrackingOptionID"]
        == made["option"]["TrackingOptionID"]
    )
    assert invoice["Date"] == "/Date(1711843200000+0000)/"
    assert invoice["InvoiceNumber"].startswith("INV-")
    iid = invoice["InvoiceID"]
    for status in ("SUBMITTED", "AUTHORISED"):
        moved = c.check(
            xero.post(f"{API}/Invoices/{iid}", json={"Invoices": [{"Status": status}]})
        )["Invoices"][0]
        assert moved["Status"] == status
    got = c.check(xero.get(f"{API}/Invoices/{iid}"))["Invoices"][0]
    assert got["AmountDue"] == 1800.0
    paid = c.check(
        xero.put(
            f"{API}/Payments",
            json={
                "Payments": [
                    {
                        "Invoice": {"InvoiceID": iid},
                        "Account": {"Code": "090"},
                        "Date": "2024-04-10",
                        "Amount": 1800.0,
                    }
                ]
            },
        )
    )["Payments"][0]
    assert paid["Status"] == "AUTHORISED"
    c.check(xero.get(f"{API}/Payments/{paid['PaymentID']}"))
    assert len(c.check(xero.get(f"{API}/Payments"))["Payments"]) == 1
    after = c.check(xero.get(f"{API}/Invoices/{iid}"))["Invoices"][0]
    assert after["Status"] == "PAID"
    assert after["AmountDue"] == 0.0
    assert after["Payments"][0]["PaymentID"] == paid["PaymentID"]
    by_status = c.check(xero.get(f"{API}/Invoices", params={"Statuses": "PAID", "page": 1}))
    assert [i["InvoiceID"] for i in by_status["Invoices"]] == [iid]
    assert by_status["pagination"]["itemCount"] == 1
    refused = xero.post(f"{API}/Invoices/{iid}", json={"Invoices": [{"Status": "VOIDED"}]})
    assert refused.status_code == 400
    c.check(refused)
    reversed_payment = c.check(
        xero.post(f"{API}/Payments/{paid['PaymentID']}", json={"Status": "DELETED"})
    )
    assert reversed_payment["Payments"][0]["Status"] == "DELETED"
    voided = c.check(xero.post(f"{API}/Invoices/{iid}", json={"Invoices": [{"Status": "VOIDED"}]}))[
        "Invoices"
    ][0]
    assert voided["Status"] == "VOIDED"


def test_validation_error_for_missing_tax_number(
    xero: httpx.Client, xero_contract: Contract
) -> None:
    c = xero_contract
    contact = make_contact(xero, c, "Acme GmbH", tax_number=None)
    body = invoice_body(contact["ContactID"], "BILL-EC")
    body["LineItems"][0]["TaxType"] = "ECZROUTPUTSERVICES"
    refused = xero.put(f"{API}/Invoices", json={"Invoices": [body]})
    assert refused.status_code == 400
    error = c.check(refused)
    assert error["Type"] == "ValidationException"
    assert error["ErrorNumber"] == 10
    messages = [m["Message"] for m in error["Elements"][0]["ValidationErrors"]]
    assert any("tax number" in m for m in messages), messages
    assert c.check(xero.get(f"{API}/Invoices"))["Invoices"] == []


def test_batch_of_50_and_summarize_errors(
    xero: httpx.Client, xero_contract: Contract, client: httpx.Client
) -> None:
    c = xero_contract
    contact = make_contact(xero, c)
    batch = [invoice_body(contact["ContactID"], f"BATCH-{n}") for n in range(50)]
    created = c.check(xero.put(f"{API}/Invoices", json={"Invoices": batch}))["Invoices"]
    assert len(created) == 50
    assert len({i["InvoiceNumber"] for i in created}) == 50
    too_many = xero.put(f"{API}/Invoices", json={"Invoices": [*batch, batch[0]]})
    assert too_many.status_code == 400
    c.check(too_many)
    mixed = [
        invoice_body(contact["ContactID"], "OK-1"),
        invoice_body("00000000-0000-0000-0000-000000000001", "BAD-1"),
    ]
    summarized = xero.put(f"{API}/Invoices", json={"Invoices": mixed})
    assert summarized.status_code == 400
    c.check(summarized)
    partial = c.check(
        xero.put(f"{API}/Invoices", params={"summarizeErrors": "false"}, json={"Invoices": mixed})
    )["Invoices"]
    assert [i["StatusAttributeString"] for i in partial] == ["OK", "ERROR"]
    assert partial[1]["HasErrors"] is True
    assert client.get("/_control/stats").json()["systems"]["xero"]["Invoices"]["created"] == 51


def test_tenants_are_separate_and_required(xero: httpx.Client, xero_contract: Contract) -> None:
    make_contact(xero, xero_contract)
    legacy = xero.get(f"{API}/Contacts", headers={"Xero-Tenant-Id": LEGACY_TENANT})
    assert xero_contract.check(legacy)["Contacts"] == []
    missing = xero.get(f"{API}/Contacts", headers={"Xero-Tenant-Id": ""})
    assert missing.status_code == 403
    assert missing.json()["Title"] == "Forbidden"
    unauthorised = xero.get(f"{API}/Contacts", headers={"Authorization": "Bearer nope"})
    assert unauthorised.status_code == 401
    assert unauthorised.json()["Detail"] == "AuthenticationUnsuccessful"
    not_found = xero.get(f"{API}/Invoices/00000000-0000-0000-0000-000000000009")
    assert not_found.status_code == 404


def test_idempotency_key_replay_and_conflict(
    xero: httpx.Client, xero_contract: Contract, client: httpx.Client
) -> None:
    c = xero_contract
    contact = make_contact(xero, c)
    body = {"Invoices": [invoice_body(contact["ContactID"], "IDEM-1")]}
    first = xero.put(f"{API}/Invoices", json=body, headers={"Idempotency-Key": "concord-outbox-1"})
    replay = xero.put(f"{API}/Invoices", json=body, headers={"Idempotency-Key": "concord-outbox-1"})
    assert first.status_code == replay.status_code == 200
    assert first.content == replay.content
    c.check(replay)
    body["Invoices"][0]["Reference"] = "IDEM-2"
    conflict = xero.put(
        f"{API}/Invoices", json=body, headers={"Idempotency-Key": "concord-outbox-1"}
    )
    assert conflict.status_code == 400
    assert "Idempotency-Key" in c.check(conflict)["Elements"][0]["ValidationErrors"][0]["Message"]
    stats = client.get("/_control/stats").json()["systems"]["xero"]["Invoices"]
    assert stats["created"] == 1
    assert stats["idempotent_replays"] == 1
    assert stats["refused"]["by_reason"]["idempotency_conflict"] == 1
    assert len(c.check(xero.get(f"{API}/Invoices"))["Invoices"]) == 1


def test_where_with_or_finds_a_batch_of_references(
    xero: httpx.Client, xero_contract: Contract
) -> None:
    c = xero_contract
    contact = make_contact(xero, c)
    batch = [invoice_body(contact["ContactID"], f"REF-{n}") for n in range(5)]
    c.check(xero.put(f"{API}/Invoices", json={"Invoices": batch}))
    where = " OR ".join(f'Reference=="REF-{n}"' for n in (1, 3, 9))
    found = c.check(xero.get(f"{API}/Invoices", params={"where": where}))["Invoices"]
    assert sorted(i["Reference"] for i in found) == ["REF-1", "REF-3"]
    both = '(Reference=="REF-1" AND Status=="AUTHORISED") OR Reference=="REF-2"'
    found = c.check(xero.get(f"{API}/Invoices", params={"where": both}))["Invoices"]
    assert [i["Reference"] for i in found] == ["REF-2"]
