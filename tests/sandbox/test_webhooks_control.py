"""Signed webhooks out of the sandbox, and the control API (seed, records, stats)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator

from .conftest import LEGACY_TENANT, NEW_TENANT, REPO
from .test_xero_contract import API, invoice_body


class Receiver:
    """A tiny local HTTP server that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                else:
                    outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, f"got {len(self.received)} deliveries, wanted {count}"
        return self.received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_xero_webhook_is_signed_and_spec_shaped(
    xero: httpx.Client, client: httpx.Client, receiver: Receiver, xero_webhooks_spec: dict[str, Any]
) -> None:
    key = "xero-webhook-key"
    assert (
        client.post(
            "/_control/webhooks", json={"system": "xero", "url": receiver.url, "secret": key}
        ).status_code
        == 201
    )
    contact = xero.put("/xero/api.xro/2.0/Contacts", json={"Name": "Hooked Ltd"}).json()[
        "Contacts"
    ][0]
    headers, body = receiver.wait()[0]
    expected = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["x-xero-signature"], expected)
    payload = json.loads(body)
    OAS31Validator(xero_webhooks_spec["components"]["schemas"]["WebhookEvent"]).validate(payload)
    event = payload["events"][0]
    assert event["resourceId"] == contact["ContactID"]
    assert event["eventCategory"] == "CONTACT"
    assert event["eventType"] == "CREATE"
    assert event["tenantId"] == xero.headers["Xero-Tenant-Id"]
    assert event["resourceUrl"].endswith(f"/Contacts/{contact['ContactID']}")
    assert payload["firstEventSequence"] == payload["lastEventSequence"] == 1


def _xero_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [e for _, body in list(receiver.received) for e in json.loads(body)["events"]]


def _wait_for_event(receiver: Receiver, resource_id: str, event_type: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(
            (e["resourceId"], e["eventType"]) == (resource_id, event_type)
            for e in _xero_events(receiver)
        ):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {event_type} of {resource_id}: {_xero_events(receiver)}")


def test_a_payment_entered_in_xero_settles_its_invoice_and_each_tenant_hears_its_own(
    xero: httpx.Client, client: httpx.Client, receiver: Receiver
) -> None:
    """A customer's payment entered in Xero's UI (``POST /_control/records/xero/Payments``):
    Xero's own rules, its invoice settled and announced by an INVOICE webhook; a subscription
    for one organisation hears only that organisation's events."""
    legacy = Receiver()
    try:
        for url, tenant in ((receiver.url, NEW_TENANT), (legacy.url, LEGACY_TENANT)):
            made = client.post(
                "/_control/webhooks",
                json={"system": "xero", "url": url, "secret": "k", "tenant": tenant},
            )
            assert made.status_code == 201, made.text
            assert made.json()["tenant"] == tenant
        unknown = {"system": "xero", "url": receiver.url, "secret": "k", "tenant": "nope"}
        assert client.post("/_control/webhooks", json=unknown).status_code == 400

        contact = xero.put(f"{API}/Contacts", json={"Name": "Paying Ltd"}).json()["Contacts"][0]
        body = invoice_body(contact["ContactID"], "PAY-1", Status="AUTHORISED")
        invoice = xero.put(f"{API}/Invoices", json={"Invoices": [body]}).json()["Invoices"][0]
        invoice_id, total = invoice["InvoiceID"], invoice["Total"]
        _wait_for_event(receiver, invoice_id, "CREATE")

        entered = client.post(
            "/_control/records/xero/Payments",
            json={
                "Invoice": {"InvoiceNumber": invoice["InvoiceNumber"]},
                "Account": {"Code": "090"},
                "Date": "2024-04-10",
                "Amount": 500.0,
                "Reference": "BACS 7",
            },
        )
        assert entered.status_code == 201, entered.text
        raw = entered.json()
        assert (raw["tenant"], raw["data"]["InvoiceID"]) == (NEW_TENANT, invoice_id)
        # Served by the Accounting API as any payment is, and its invoice settled by it.
        served = xero.get(f"{API}/Payments/{raw['id']}").json()["Payments"][0]
        assert (served["Amount"], served["Reference"], served["Invoice"]["InvoiceID"]) == (
            500.0,
            "BACS 7",
            invoice_id,
        )
        after = xero.get(f"{API}/Invoices/{invoice_id}").json()["Invoices"][0]
        assert (after["Status"], after["AmountPaid"], after["AmountDue"]) == (
            "AUTHORISED",
            500.0,
            total - 500.0,
        )
        # A payment is announced as its invoice's UPDATE (Xero has no payment events).
        _wait_for_event(receiver, invoice_id, "UPDATE")

        # Xero's rules hold: no more than is due; the invoice must exist; only payments.
        too_much = {
            "Invoice": {"InvoiceID": invoice_id},
            "Account": {"Code": "090"},
            "Amount": total,
        }
        over = client.post("/_control/records/xero/Payments", json=too_much)
        assert over.status_code == 400
        assert "exceeds the amount outstanding" in over.json()["error"]
        missing = {"Invoice": {"InvoiceNumber": "NO-SUCH"}, "Amount": 1.0}
        assert client.post("/_control/records/xero/Payments", json=missing).status_code == 400
        other = client.post("/_control/records/xero/Contacts", json={"Name": "Not here"})
        assert other.status_code == 405

        # The legacy organisation's subscription heard nothing of the new one's, and hears its own.
        legacy_contact = xero.put(
            f"{API}/Contacts",
            json={"Name": "Legacy GmbH"},
            headers={"Xero-Tenant-Id": LEGACY_TENANT},
        ).json()["Contacts"][0]
        _wait_for_event(legacy, legacy_contact["ContactID"], "CREATE")
        assert {e["tenantId"] for e in _xero_events(legacy)} == {LEGACY_TENANT}
        assert {e["tenantId"] for e in _xero_events(receiver)} == {NEW_TENANT}
    finally:
        legacy.server.shutdown()


def test_change_feed_is_signed_and_retried(
    harvest: httpx.Client, client: httpx.Client, receiver: Receiver
) -> None:
    secret = "feed-secret"
    client.post(
        "/_control/webhooks", json={"system": "harvest", "url": receiver.url, "secret": secret}
    )
    receiver.fail_first = 1  # the first attempt is refused: the sandbox must retry
    created = harvest.post("/harvest/v2/clients", json={"name": "Hooked Inc"}).json()
    headers, body = receiver.wait()[0]
    signed = hmac.new(
        secret.encode(), headers["x-sandbox-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-sandbox-signature"] == f"v1={signed}"
    assert abs(int(headers["x-sandbox-timestamp"]) - time.time()) < 60
    assert headers["x-sandbox-event-id"]
    event = json.loads(body)["events"][0]
    assert event["object"] == "clients"
    assert event["record_id"] == created["id"]
    assert event["type"] == "created"
    # The receiver has the request; the sandbox records the delivery once the response is in.
    deadline = time.monotonic() + 5
    deliveries = client.get("/_control/webhooks").json()["deliveries"]
    while not deliveries[0]["delivered"] and time.monotonic() < deadline:
        time.sleep(0.05)
        deliveries = client.get("/_control/webhooks").json()["deliveries"]
    assert deliveries[0]["delivered"] is True
    assert deliveries[0]["attempts"] == 2
    assert deliveries[0]["id"] == headers["x-sandbox-event-id"]


def test_salesforce_change_feed_and_out_of_band_change(
    salesforce: httpx.Client, client: httpx.Client, receiver: Receiver
) -> None:
    client.post(
        "/_control/webhooks", json={"system": "salesforce", "url": receiver.url, "secret": "s"}
    )
    account = salesforce.post(
        "/salesforce/services/data/v60.0/sobjects/Account", json={"Name": "Feed Corp"}
    ).json()
    receiver.wait()
    changed = client.patch(
        f"/_control/records/salesforce/Account/{account['id']}", json={"Industry": "Retail"}
    )
    assert changed.status_code == 200
    assert changed.json()["version"] == 2
    events = [e for _, body in receiver.wait(2) for e in json.loads(body)["events"]]
    assert [e["type"] for e in events] == ["created", "updated"]
    assert events[1]["version"] == 2


def test_seed_builds_a_flawed_firm_deterministically(client: httpx.Client) -> None:
    first = client.post(
        "/_control/seed", json={"scale": 2, "seed": 7, "anchor": "2024-06-03"}
    ).json()
    assert first["counts"]["harvest.time_entries"] == 2000
    assert first["counts"]["customers"] == 24
    flaws = {f["flaw"].split(" (")[0].split(":")[0] for f in first["flawed"]}
    assert any("no VAT number" in f for f in flaws)
    assert any("archived" in f for f in flaws)
    records = client.get("/_control/records/harvest/time_entries", params={"limit": 3}).json()
    again = client.post(
        "/_control/seed", json={"scale": 2, "seed": 7, "anchor": "2024-06-03"}
    ).json()
    assert again["flawed"] == first["flawed"]
    assert again["counts"] == first["counts"]
    assert (
        client.get("/_control/records/harvest/time_entries", params={"limit": 3}).json()["records"]
        == records["records"]
    )
    flawed_contact = next(f for f in first["flawed"] if f["object"] == "Contacts")
    contact = client.get(f"/_control/records/xero/Contacts/{flawed_contact['id']}").json()
    assert "TaxNumber" not in contact["data"]
    stats = client.get("/_control/stats").json()["systems"]
    assert (
        stats.get("harvest", {}).get("time_entries", {}).get("created", 0) == 0
    )  # seeding is not "received"


def test_seed_names_each_engagement_across_systems_and_the_deals_closing_later(
    client: httpx.Client,
) -> None:
    """The demo firm `make run` shows: each engaged account names its Harvest client and Xero
    contact (how Concord knows them as one customer), and the seed's ``later`` changes close
    the prospects' deals, one of them on a contract that is still a draft."""
    result = client.post("/_control/seed", json={"scale": 1, "anchor": "2024-06-03"}).json()
    assert result["counts"]["prospects"] == 4
    accounts = client.get("/_control/records/salesforce/Account").json()["records"]
    clients = {
        str(r["id"]): r["data"]["name"]
        for r in client.get("/_control/records/harvest/clients").json()["records"]
    }
    contacts = {
        r["id"]: r["data"]["Name"]
        for r in client.get("/_control/records/xero/Contacts").json()["records"]
    }
    engaged = [a["data"] for a in accounts if a["data"]["Type"] == "Customer"]
    assert len(engaged) == 12
    for account in engaged:
        assert clients[account["PSA_Client_Id__c"]] == account["Name"]
        assert contacts[account["ERP_Customer_Id__c"]] == account["Name"]

    later = result["later"]
    assert [c["after_s"] for c in later] == sorted(c["after_s"] for c in later)
    assert {(c["system"], c["object"]) for c in later} == {("salesforce", "Opportunity")}
    drafts = [f for f in result["flawed"] if "still Draft" in f["flaw"]]
    assert len(drafts) == 1
    for change in later:
        url = f"/_control/records/{change['system']}/{change['object']}/{change['id']}"
        before = client.get(url).json()["data"]
        assert before["StageName"] == "Negotiation/Review"
        assert not before["IsWon"]
        after = client.patch(url, json=change["changes"]).json()["data"]
        assert after["IsWon"]
        assert after["StageName"] == "Closed Won"


def test_seed_of_100k_time_entries_is_served_page_by_page(client: httpx.Client) -> None:
    # How fast seeding is, is the benchmark figure sandbox_seed_100k_s.
    result = client.post("/_control/seed", json={"scale": 100}, timeout=60).json()
    assert result["counts"]["harvest.time_entries"] == 100_000
    page = client.get(
        "/harvest/v2/time_entries",
        params={"per_page": 2000, "page": 50},
        headers={"Authorization": "Bearer sandbox-harvest-token", "Harvest-Account-Id": "100001"},
    ).json()
    assert page["total_entries"] == 100_000
    assert len(page["time_entries"]) == 2000
    assert page["next_page"] is None


def test_sandbox_never_imports_django() -> None:
    code = (
        "import sys, sandbox.app, sandbox.bench\n"
        "assert not [m for m in sys.modules if m.startswith('django')]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
