"""Harvest invoice payments (``/invoices/{id}/payments``), validated against harvest-v2.yaml:
a payment lowers the invoice's amount due and the one that settles it marks it paid; one more
is refused. And the sandbox's writable ``is_billed`` on an approved time entry."""

from __future__ import annotations

import httpx

from .conftest import Contract
from .test_harvest_contract import build_project


def test_payments_settle_an_invoice(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    built = build_project(harvest, c)
    invoice = c.check(
        harvest.post(
            "/harvest/v2/invoices",
            json={
                "client_id": built["client"]["id"],
                "number": "INV-7",
                "tax": 20.0,
                "line_items": [
                    {
                        "kind": "Service",
                        "project_id": built["project"]["id"],
                        "description": "Workshop",
                        "quantity": 7.5,
                        "unit_price": 140.0,
                        "taxed": True,
                    }
                ],
            },
        )
    )
    assert (invoice["amount"], invoice["due_amount"]) == (1260.0, 1260.0)
    path = f"/harvest/v2/invoices/{invoice['id']}/payments"

    first = c.check(
        harvest.post(path, json={"amount": 1000, "paid_date": "2026-11-20", "notes": "ERP 1"})
    )
    assert (first["amount"], first["paid_date"], first["notes"]) == (1000.0, "2026-11-20", "ERP 1")
    after = c.check(harvest.get(f"/harvest/v2/invoices/{invoice['id']}"))
    assert (after["state"], after["due_amount"]) == ("draft", 260.0)

    too_much = harvest.post(path, json={"amount": 300, "paid_date": "2026-11-21"})
    assert too_much.status_code == 422, too_much.text

    c.check(harvest.post(path, json={"amount": 260, "paid_at": "2026-11-27T10:00:00Z"}))
    paid = c.check(harvest.get(f"/harvest/v2/invoices/{invoice['id']}"))
    assert (paid["state"], paid["due_amount"], paid["paid_date"]) == ("paid", 0.0, "2026-11-27")
    listed = c.check(harvest.get(path))
    assert [p["amount"] for p in listed["invoice_payments"]] == [260.0, 1000.0]  # newest first

    assert harvest.post(path, json={"amount": 1}).status_code == 422  # paid already
    assert harvest.get("/harvest/v2/invoice_payments").status_code == 404  # nested only
    assert harvest.get("/harvest/v2/invoices/999999/payments").status_code == 404


def test_an_approved_entry_can_be_marked_billed(
    harvest: httpx.Client, harvest_contract: Contract
) -> None:
    c = harvest_contract
    built = build_project(harvest, c)
    entry = c.check(
        harvest.post(
            "/harvest/v2/time_entries",
            json={
                "project_id": built["project"]["id"],
                "task_id": built["task"]["id"],
                "user_id": built["user"]["id"],
                "spent_date": "2026-11-02",
                "hours": 7.5,
            },
        )
    )
    url = f"/harvest/v2/time_entries/{entry['id']}"
    c.check(harvest.patch(url, json={"approval_status": "approved"}))
    assert harvest.patch(url, json={"hours": 8}).status_code == 422  # approved: locked
    billed = c.check(harvest.patch(url, json={"is_billed": True}))
    assert (billed["is_billed"], billed["is_locked"]) == (True, True)
