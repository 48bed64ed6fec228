"""Faults, throttling and their traces in /_control/stats."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

API = "/xero/api.xro/2.0"


def test_injected_errors_and_throttles_are_counted(
    harvest: httpx.Client, client: httpx.Client
) -> None:
    assert (
        client.post("/_control/faults", json={"system": "harvest", "error_rate": 1.0}).status_code
        == 200
    )
    failed = harvest.get("/harvest/v2/clients")
    assert failed.status_code == 500
    assert failed.json()["code"] == 500
    client.post(
        "/_control/faults", json={"system": "harvest", "error_rate": 0.0, "throttle_rate": 1.0}
    )
    throttled = harvest.get("/harvest/v2/clients")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"
    client.post("/_control/faults", json={"system": "harvest", "throttle_rate": 0.0})
    assert harvest.get("/harvest/v2/clients").status_code == 200
    stats = client.get("/_control/stats").json()["systems"]["harvest"]["clients"]
    assert stats["requests"] == 3
    assert stats["throttled"] == 1
    assert stats["refused"]["by_reason"] == {"fault_error": 1}
    assert stats["refused"]["by_status"] == {"500": 1}
    faults = client.get("/_control/faults").json()
    assert faults["harvest"]["error_rate"] == 0.0
    assert faults["xero"]["throttle_rate"] == 0.0


def test_fault_settings_survive_until_reset(client: httpx.Client) -> None:
    client.post("/_control/faults", json={"xero": {"latency_ms": 5, "error_rate": 0.25}})
    assert client.get("/_control/faults").json()["xero"]["error_rate"] == 0.25
    client.post("/_control/seed", json={"scale": 1})
    assert client.get("/_control/faults").json()["xero"]["error_rate"] == 0.25
    client.post("/_control/reset", json={})
    assert client.get("/_control/faults").json()["xero"]["error_rate"] == 0.0
    assert (
        client.post("/_control/faults", json={"system": "xero", "error_rate": 2}).status_code == 400
    )


def test_outage_window(harvest: httpx.Client, client: httpx.Client) -> None:
    client.post("/_control/faults", json={"system": "harvest", "outage": {"duration_s": 60}})
    down = harvest.get("/harvest/v2/clients")
    assert down.status_code == 503
    assert int(down.headers["Retry-After"]) > 50
    client.post("/_control/faults", json={"system": "harvest", "outage": None})
    assert harvest.get("/harvest/v2/clients").status_code == 200
    assert (
        client.get("/_control/stats").json()["systems"]["harvest"]["clients"]["refused"][
            "by_reason"
        ]["outage"]
        == 1
    )


def test_timeout_fault_hangs_without_writing(harvest: httpx.Client, client: httpx.Client) -> None:
    client.post("/_control/faults", json={"system": "harvest", "timeout_rate": 1.0, "timeout_s": 2})
    with pytest.raises(httpx.ReadTimeout):
        harvest.post("/harvest/v2/clients", json={"name": "Slow"}, timeout=0.3)
    client.post("/_control/faults", json={"system": "harvest", "timeout_rate": 0.0})
    assert client.get("/_control/records/harvest/clients").json()["count"] == 0


def test_dropped_response_after_write_then_idempotent_replay(
    xero: httpx.Client, client: httpx.Client
) -> None:
    contact = xero.put(f"{API}/Contacts", json={"Name": "Acme Ltd", "TaxNumber": "GB1"}).json()[
        "Contacts"
    ][0]
    body = {
        "Invoices": [
            {
                "Type": "ACCREC",
                "Contact": {"ContactID": contact["ContactID"]},
                "Reference": "DROP-1",
                "LineItems": [
                    {
                        "Description": "Work",
                        "Quantity": 1,
                        "UnitAmount": 100,
                        "AccountCode": "200",
                        "TaxType": "OUTPUT2",
                    }
                ],
            }
        ]
    }
    client.post("/_control/faults", json={"system": "xero", "drop_response_rate": 1.0})
    with pytest.raises(httpx.RemoteProtocolError):
        xero.put(f"{API}/Invoices", json=body, headers={"Idempotency-Key": "outbox-42"})
    client.post("/_control/faults", json={"system": "xero", "drop_response_rate": 0.0})
    # The write happened although the caller never saw the answer ...
    assert client.get("/_control/records/xero/Invoices").json()["count"] == 1
    # ... so the retry with the same key gets the original answer instead of a second invoice.
    retry = xero.put(f"{API}/Invoices", json=body, headers={"Idempotency-Key": "outbox-42"})
    assert retry.status_code == 200
    assert retry.json()["Invoices"][0]["Reference"] == "DROP-1"
    stats = client.get("/_control/stats").json()["systems"]["xero"]["Invoices"]
    assert stats["created"] == 1
    assert stats["idempotent_replays"] == 1
    assert stats["dropped_responses"] == 1
    assert stats["duplicates_detected"] == 0
    # Without a key, a blind retry posts twice, and the sandbox says so.
    xero.put(f"{API}/Invoices", json=body)
    stats = client.get("/_control/stats").json()["systems"]["xero"]["Invoices"]
    assert stats["created"] == 2
    assert stats["duplicates_detected"] == 1


def test_xero_minute_limit_returns_429_with_retry_after(
    xero: httpx.Client, client: httpx.Client
) -> None:
    client.post(
        "/_control/limits",
        json={"system": "xero", "windows": {"minute": {"limit": 3, "seconds": 60}}},
    )
    statuses = [xero.get(f"{API}/Currencies") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[0].headers["X-MinLimit-Remaining"] == "2"
    assert statuses[3].headers["X-Rate-Limit-Problem"] == "minute"
    assert 1 <= int(statuses[3].headers["Retry-After"]) <= 60
    # The limit is per tenant: the other organisation still has its budget.
    other = xero.get(
        f"{API}/Currencies", headers={"Xero-Tenant-Id": "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"}
    )
    assert other.status_code == 200
    assert client.get("/_control/stats").json()["systems"]["xero"]["Currencies"]["throttled"] == 1
    client.post("/_control/limits", json={"system": "xero", "enabled": False})
    assert all(xero.get(f"{API}/Currencies").status_code == 200 for _ in range(5))


def test_xero_concurrency_cap(sandbox_url: str, xero: httpx.Client, client: httpx.Client) -> None:
    client.post("/_control/faults", json={"system": "xero", "latency_ms": 400})
    headers = dict(xero.headers)

    def call(_: int) -> httpx.Response:
        with httpx.Client(base_url=sandbox_url, headers=headers, timeout=10) as c:
            return c.get(f"{API}/Currencies")

    with concurrent.futures.ThreadPoolExecutor(max_workers=7) as pool:
        responses = list(pool.map(call, range(7)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 5, codes
    assert codes.count(429) == 2, codes
    assert all(
        r.headers["X-Rate-Limit-Problem"] == "concurrent" for r in responses if r.status_code == 429
    )


def test_harvest_and_salesforce_limits(harvest: httpx.Client, client: httpx.Client) -> None:
    limits = client.get("/_control/limits").json()
    assert limits["harvest"]["windows"]["15s"] == {"limit": 100, "seconds": 15.0, "app_wide": False}
    assert limits["salesforce"]["concurrent"] == 25
    assert limits["xero"]["concurrent"] == 5
    client.post("/_control/limits", json={"system": "harvest", "windows": {"15s": {"limit": 2}}})
    codes = [harvest.get("/harvest/v2/clients").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    client.post("/_control/limits", json={"system": "salesforce", "windows": {"day": {"limit": 1}}})
    token = client.post(
        "/salesforce/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "concord-salesforce",
            "client_secret": "sandbox-salesforce-secret",
        },
    ).json()["access_token"]
    sf = {"Authorization": f"Bearer {token}"}
    ok = client.get(
        "/salesforce/services/data/v60.0/query", params={"q": "SELECT Id FROM Account"}, headers=sf
    )
    assert ok.status_code == 200
    assert ok.headers["Sforce-Limit-Info"] == "api-usage=1/1"
    over = client.get(
        "/salesforce/services/data/v60.0/query", params={"q": "SELECT Id FROM Account"}, headers=sf
    )
    assert over.status_code == 403
    assert over.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
