"""Secondary indexes follow every write: a value a record gave up is free again and no longer
finds it, whether the change came through the vendor API or the control API's PATCH."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import Contract
from .test_harvest_contract import build_project
from .test_xero_contract import API, invoice_body, make_contact

SF = "/salesforce/services/data/v60.0"


# -- Salesforce --------------------------------------------------------------------------------


def test_salesforce_external_id_renamed_frees_the_old_value(salesforce: httpx.Client) -> None:
    first = salesforce.post(
        f"{SF}/sobjects/Account", json={"Name": "Acme", "External_Id__c": "EXT-1"}
    ).json()["id"]
    renamed = salesforce.patch(f"{SF}/sobjects/Account/{first}", json={"External_Id__c": "EXT-2"})
    assert renamed.status_code == 204
    # The old value finds nothing: an upsert by it creates a new record ...
    upsert = salesforce.patch(f"{SF}/sobjects/Account/External_Id__c/EXT-1", json={"Name": "New"})
    assert upsert.status_code == 201, upsert.text
    assert upsert.json()["created"] is True
    assert upsert.json()["id"] != first
    # ... and the new value finds the renamed record.
    again = salesforce.patch(f"{SF}/sobjects/Account/External_Id__c/EXT-2", json={"Phone": "1"})
    assert again.status_code == 200
    assert again.json() == {"id": first, "success": True, "errors": [], "created": False}


def test_salesforce_create_with_a_freed_external_id(salesforce: httpx.Client) -> None:
    first = salesforce.post(
        f"{SF}/sobjects/Account", json={"Name": "Acme", "External_Id__c": "EXT-1"}
    ).json()["id"]
    taken = salesforce.post(
        f"{SF}/sobjects/Account", json={"Name": "Other", "External_Id__c": "EXT-1"}
    )
    assert taken.status_code == 400
    assert taken.json()[0]["errorCode"] == "DUPLICATE_VALUE"
    salesforce.patch(f"{SF}/sobjects/Account/{first}", json={"External_Id__c": "EXT-2"})
    created = salesforce.post(
        f"{SF}/sobjects/Account", json={"Name": "Other", "External_Id__c": "EXT-1"}
    )
    assert created.status_code == 201, created.text


def test_salesforce_control_patch_reindexes_and_derives(
    salesforce: httpx.Client, client: httpx.Client
) -> None:
    account = salesforce.post(
        f"{SF}/sobjects/Account", json={"Name": "Acme", "External_Id__c": "EXT-1"}
    ).json()["id"]
    opportunity = salesforce.post(
        f"{SF}/sobjects/Opportunity",
        json={
            "Name": "Deal",
            "StageName": "Prospecting",
            "CloseDate": "2024-06-30",
            "AccountId": account[:15],  # a 15-character id is expanded by its checksum
        },
    )
    assert opportunity.status_code == 201, opportunity.text
    opp_id = opportunity.json()["id"]
    assert salesforce.get(f"{SF}/sobjects/Opportunity/{opp_id[:15]}").json()["AccountId"] == (
        account
    )
    patched = client.patch(
        f"/_control/records/salesforce/Account/{account}", json={"External_Id__c": "EXT-9"}
    )
    assert patched.status_code == 200
    assert patched.json()["version"] == 2
    free = salesforce.post(f"{SF}/sobjects/Account", json={"Name": "B", "External_Id__c": "EXT-1"})
    assert free.status_code == 201, free.text
    won = client.patch(
        f"/_control/records/salesforce/Opportunity/{opp_id}", json={"StageName": "Closed Won"}
    ).json()
    assert won["data"]["IsWon"] is True
    assert won["data"]["IsClosed"] is True


# -- Xero --------------------------------------------------------------------------------------


def test_xero_invoice_renumbered_frees_its_old_number(
    xero: httpx.Client, xero_contract: Contract
) -> None:
    contact = make_contact(xero, xero_contract)
    body = invoice_body(contact["ContactID"], "R-1", InvoiceNumber="A-1")
    invoice = xero_contract.check(xero.put(f"{API}/Invoices", json={"Invoices": [body]}))
    invoice_id = invoice["Invoices"][0]["InvoiceID"]
    renumbered = xero.post(f"{API}/Invoices/{invoice_id}", json={"InvoiceNumber": "A-2"})
    assert renumbered.status_code == 200, renumbered.text
    assert xero.get(f"{API}/Invoices/A-1").status_code == 404
    assert xero.get(f"{API}/Invoices/A-2").json()["Invoices"][0]["InvoiceID"] == invoice_id
    reused = xero.put(
        f"{API}/Invoices",
        json={"Invoices": [invoice_body(contact["ContactID"], "R-2", InvoiceNumber="A-1")]},
    )
    assert reused.status_code == 200, reused.text
    assert reused.json()["Invoices"][0]["InvoiceID"] != invoice_id


def test_xero_contact_renumbered_and_renamed_frees_both(
    xero: httpx.Client, xero_contract: Contract
) -> None:
    contact = make_contact(xero, xero_contract, "Acme")
    key = contact["ContactID"]
    moved = xero.post(f"{API}/Contacts/{key}", json={"Name": "Acme Two", "ContactNumber": "N-2"})
    assert moved.status_code == 200, moved.text
    assert xero.get(f"{API}/Contacts/C-Acme").status_code == 404
    assert xero.get(f"{API}/Contacts/N-2").json()["Contacts"][0]["ContactID"] == key
    again = xero.put(f"{API}/Contacts", json={"Contacts": [{"Name": "Acme"}]})
    assert again.status_code == 200, again.text


def test_xero_control_patch_reindexes_and_recomputes_totals(
    xero: httpx.Client, client: httpx.Client, xero_contract: Contract
) -> None:
    contact = make_contact(xero, xero_contract)
    body = invoice_body(contact["ContactID"], "R-1", InvoiceNumber="A-1")
    invoice = xero.put(f"{API}/Invoices", json={"Invoices": [body]}).json()["Invoices"][0]
    assert invoice["Total"] == 1800.0  # 10 x 150 + 20% VAT
    url = f"/_control/records/xero/Invoices/{invoice['InvoiceID']}"
    patched = client.patch(
        url,
        json={
            "InvoiceNumber": "A-9",
            "LineItems": [
                {
                    "Description": "Consulting",
                    "Quantity": 2.0,
                    "UnitAmount": 100.0,
                    "AccountCode": "200",
                    "TaxType": "OUTPUT2",
                }
            ],
        },
    )
    assert patched.status_code == 200, patched.text
    got = xero.get(f"{API}/Invoices/A-9").json()["Invoices"][0]
    assert got["InvoiceID"] == invoice["InvoiceID"]
    assert (got["SubTotal"], got["TotalTax"], got["Total"]) == (200.0, 40.0, 240.0)
    assert xero.get(f"{API}/Invoices/A-1").status_code == 404
    bad = client.patch(url, json={"LineItems": [{"Quantity": "many"}]})
    assert bad.status_code == 400
    assert xero.get(f"{API}/Invoices/A-9").json()["Invoices"][0]["Total"] == 240.0


def _authorised(xero: httpx.Client, contact_id: str, **extra: Any) -> dict[str, Any]:
    body = invoice_body(contact_id, "R", Status="AUTHORISED", **extra)
    response = xero.put(f"{API}/Invoices", json={"Invoices": [body]})
    assert response.status_code == 200, response.text
    return dict(response.json()["Invoices"][0])


def _pay(xero: httpx.Client, invoice_id: str, amount: float) -> httpx.Response:
    return xero.put(
        f"{API}/Payments",
        json={
            "Payments": [
                {
                    "Invoice": {"InvoiceID": invoice_id},
                    "Account": {"Code": "090"},
                    "Date": "2024-04-10",
                    "Amount": amount,
                }
            ]
        },
    )


def test_xero_payments_settle_their_invoice_and_carry_its_type(
    xero: httpx.Client, client: httpx.Client, xero_contract: Contract
) -> None:
    contact = make_contact(xero, xero_contract)
    sale = _authorised(xero, contact["ContactID"])
    first = xero_contract.check(_pay(xero, sale["InvoiceID"], 800.0))["Payments"][0]
    assert first["PaymentType"] == "ACCRECPAYMENT"
    second = _pay(xero, sale["InvoiceID"], 1000.0).json()["Payments"][0]
    paid = xero.get(f"{API}/Invoices/{sale['InvoiceID']}").json()["Invoices"][0]
    assert paid["Status"] == "PAID"
    assert [p["PaymentID"] for p in paid["Payments"]] == [first["PaymentID"], second["PaymentID"]]
    deleted = xero.post(f"{API}/Payments/{first['PaymentID']}", json={"Status": "DELETED"})
    assert deleted.status_code == 200
    reopened = xero.get(f"{API}/Invoices/{sale['InvoiceID']}").json()["Invoices"][0]
    assert (reopened["Status"], reopened["AmountPaid"]) == ("AUTHORISED", 1000.0)
    assert [p["PaymentID"] for p in reopened["Payments"]] == [second["PaymentID"]]
    # An out-of-band change of a payment's amount settles its invoice again.
    client.patch(f"/_control/records/xero/Payments/{second['PaymentID']}", json={"Amount": 1800.0})
    settled = xero.get(f"{API}/Invoices/{sale['InvoiceID']}").json()["Invoices"][0]
    assert (settled["Status"], settled["AmountPaid"]) == ("PAID", 1800.0)

    bill = _authorised(xero, contact["ContactID"], Type="ACCPAY", InvoiceNumber="SUP-1")
    payable = _pay(xero, bill["InvoiceID"], 100.0)
    assert payable.status_code == 200, payable.text
    assert payable.json()["Payments"][0]["PaymentType"] == "ACCPAYPAYMENT"


def test_xero_lists_filter_and_page_the_same_either_way(
    xero: httpx.Client, xero_contract: Contract
) -> None:
    contact = make_contact(xero, xero_contract)
    other = make_contact(xero, xero_contract, "Other Ltd")
    ids = []
    for n in range(5):
        who = contact if n % 2 == 0 else other
        status = "AUTHORISED" if n < 3 else "DRAFT"
        body = invoice_body(who["ContactID"], f"R-{n}", Status=status)
        ids.append(
            xero.put(f"{API}/Invoices", json={"Invoices": [body]}).json()["Invoices"][0][
                "InvoiceID"
            ]
        )
    everything = [i["InvoiceID"] for i in xero.get(f"{API}/Invoices").json()["Invoices"]]
    assert everything == ids
    # IDs in any order come back in creation order, as the unfiltered list has them.
    named = xero.get(f"{API}/Invoices", params={"IDs": f"{ids[3]},{ids[0]},{ids[1].upper()}"})
    assert [i["InvoiceID"] for i in named.json()["Invoices"]] == [ids[0], ids[1], ids[3]]
    params = {"Statuses": "AUTHORISED", "ContactIDs": contact["ContactID"], "pageSize": "1"}
    page = xero_contract.check(xero.get(f"{API}/Invoices", params={**params, "page": "2"}))
    assert [i["InvoiceID"] for i in page["Invoices"]] == [ids[2]]
    assert page["pagination"] == {"page": 2, "pageSize": 1, "pageCount": 2, "itemCount": 2}
    # The same through the render-everything path (an order) gives the same page.
    ordered = xero.get(
        f"{API}/Invoices", params={**params, "page": "2", "order": "Reference ASC"}
    ).json()
    assert ordered["Invoices"] == page["Invoices"]
    assert ordered["pagination"] == page["pagination"]


# -- Harvest -----------------------------------------------------------------------------------


def test_harvest_assignment_update_takes_only_the_spec_fields(
    harvest: httpx.Client, harvest_contract: Contract
) -> None:
    p = build_project(harvest, harvest_contract)
    pid = p["project"]["id"]
    other_task = harvest.post("/harvest/v2/tasks", json={"name": "Design"}).json()
    moved = harvest.patch(
        f"/harvest/v2/projects/{pid}/task_assignments/{p['ta']['id']}",
        json={"task_id": other_task["id"]},
    )
    assert moved.status_code == 422
    assert moved.json() == {"message": "Task can't be changed on an existing task assignment"}
    moved_user = harvest.patch(
        f"/harvest/v2/projects/{pid}/user_assignments/{p['ua']['id']}",
        json={"user_id": 1, "hourly_rate": 99.0},
    )
    assert moved_user.status_code == 422
    assert "User can't be changed" in moved_user.json()["message"]
    rate = harvest_contract.check(
        harvest.patch(
            f"/harvest/v2/projects/{pid}/task_assignments/{p['ta']['id']}",
            json={"hourly_rate": 120.0, "is_active": True},
        )
    )
    assert rate["hourly_rate"] == 120.0
    assert rate["task"]["id"] == p["task"]["id"]
    # The pair is still indexed: assigning the same task again is a duplicate.
    twice = harvest.post(
        f"/harvest/v2/projects/{pid}/task_assignments", json={"task_id": p["task"]["id"]}
    )
    assert twice.status_code == 422


def test_harvest_external_reference_changed_frees_the_old_one(
    harvest: httpx.Client, harvest_contract: Contract, client: httpx.Client
) -> None:
    p = build_project(harvest, harvest_contract)

    def entry(ref: str) -> dict[str, Any]:
        response = harvest.post(
            "/harvest/v2/time_entries",
            json={
                "project_id": p["project"]["id"],
                "task_id": p["task"]["id"],
                "user_id": p["user"]["id"],
                "spent_date": "2024-03-01",
                "hours": 1.0,
                "external_reference": {"id": ref, "group_id": "g", "permalink": "https://x"},
            },
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def duplicates() -> int:
        stats = client.get("/_control/stats", params={"system": "harvest"}).json()
        return int(stats["systems"]["harvest"]["time_entries"]["duplicates_detected"])

    first = entry("R-1")
    changed = harvest.patch(
        f"/harvest/v2/time_entries/{first['id']}",
        json={"external_reference": {"id": "R-2", "group_id": "g", "permalink": "https://x"}},
    )
    assert changed.status_code == 200
    entry("R-1")
    assert duplicates() == 0
    entry("R-2")
    assert duplicates() == 1


def test_harvest_client_renamed_by_control_patch_frees_its_name(
    harvest: httpx.Client, client: httpx.Client
) -> None:
    acme = harvest.post("/harvest/v2/clients", json={"name": "Acme"}).json()
    assert harvest.post("/harvest/v2/clients", json={"name": "Acme"}).status_code == 422
    patched = client.patch(f"/_control/records/harvest/clients/{acme['id']}", json={"name": "Zed"})
    assert patched.status_code == 200
    assert harvest.post("/harvest/v2/clients", json={"name": "Acme"}).status_code == 201
    assert harvest.post("/harvest/v2/clients", json={"name": "zed"}).status_code == 422
    assert harvest.get("/harvest/v2/users/me").json()["first_name"] == "Sandbox"


def test_control_records_pages_without_listing_everything(
    harvest: httpx.Client, client: httpx.Client
) -> None:
    for n in range(5):
        harvest.post("/harvest/v2/clients", json={"name": f"C{n}"})
    page = client.get("/_control/records/harvest/clients", params={"limit": 2, "offset": 3}).json()
    assert page["count"] == 5
    assert [r["data"]["name"] for r in page["records"]] == ["C3", "C4"]
    negative = client.get("/_control/records/harvest/clients", params={"offset": -1})
    assert negative.status_code == 400
