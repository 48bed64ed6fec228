"""Signed webhooks in: verified, deduplicated, stored before the 2xx; refused clearly otherwise."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from integrations.models import InboundMessage
from tests.factories import make_connection
from tests.integrations.sync.wsgi_client import post_at_once, wsgi_post

SECRET = "whsec-test-0123456789"


def _xero_body(resource_id: str = "inv-1", when: str = "2026-11-20T10:00:00.000") -> bytes:
    return json.dumps(
        {
            "events": [
                {
                    "resourceUrl": f"https://api.xero.com/api.xro/2.0/Invoices/{resource_id}",
                    "resourceId": resource_id,
                    "tenantId": "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02",
                    "tenantType": "ORGANISATION",
                    "eventCategory": "INVOICE",
                    "eventType": "UPDATE",
                    "eventDateUtc": when,
                }
            ],
            "firstEventSequence": 1,
            "lastEventSequence": 1,
            "entropy": "S0M3R4ND0MSTR1NG",
        }
    ).encode()


def _xero_sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _feed(event_id: str = "evt-1", version: int = 3) -> bytes:
    return json.dumps(
        {
            "system": "harvest",
            "events": [
                {
                    "id": event_id,
                    "object": "time_entries",
                    "record_id": 4711,
                    "type": "updated",
                    "version": version,
                    "occurred_at": "2026-11-20T10:00:00Z",
                    "resource_url": "http://127.0.0.1:8100/harvest/v2/time_entries/4711",
                }
            ],
        }
    ).encode()


def _feed_headers(body: bytes, *, age_s: int = 0, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()) - age_s)
    sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {
        "HTTP_X_SANDBOX_TIMESTAMP": ts,
        "HTTP_X_SANDBOX_SIGNATURE": f"v1={sig}",
        "HTTP_X_SANDBOX_EVENT_ID": "delivery-1",
    }


@pytest.fixture
def xero(db: None):
    return make_connection(credentials={"webhook_secret": SECRET})


@pytest.fixture
def harvest(db: None):
    return make_connection(
        name="Harvest",
        role="psa",
        vendor="harvest",
        base_url="http://127.0.0.1:8100/harvest/v2",
        credentials={"webhook_secret": SECRET},
    )


@pytest.fixture(params=["production WSGI", "Django view"])
def post(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Every test here runs twice: through config.wsgi.application (what gunicorn serves: the
    webhook receiver in front of Django) and through Django's own stack (the view)."""
    if request.param == "Django view":

        def through_django(url: str, body: bytes, **headers: str) -> Any:
            return Client().post(url, data=body, content_type="application/json", **headers)  # type: ignore[arg-type]

        return through_django
    return wsgi_post


def test_signed_xero_delivery_is_stored_once_and_acknowledged(
    xero, monkeypatch: pytest.MonkeyPatch, post: Callable[..., Any]
) -> None:
    from integrations.sync import webhooks

    rung: list[int] = []
    monkeypatch.setattr(
        webhooks, "ring_inbound", lambda connection_ids, **kw: rung.extend(connection_ids)
    )
    body = _xero_body()
    response = post(f"/webhooks/{xero.pk}/", body, HTTP_X_XERO_SIGNATURE=_xero_sign(body))
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert rung == [xero.pk]  # a worker is asked to process it
    message = InboundMessage.objects.get()
    assert message.object_type == "Invoices"
    assert message.external_id == "inv-1"
    assert message.payload["eventType"] == "UPDATE"

    again = post(f"/webhooks/{xero.pk}/", body, HTTP_X_XERO_SIGNATURE=_xero_sign(body))
    assert again.json() == {"accepted": 0, "duplicates": 1}
    assert InboundMessage.objects.count() == 1
    assert rung == [xero.pk]  # nothing new, no new ring


def test_xero_events_are_kept_by_the_connection_serving_their_organisation(
    db: None, monkeypatch: pytest.MonkeyPatch, post: Callable[..., Any]
) -> None:
    """One Xero app's webhook carries every connected organisation's events: each is stored
    under the connection whose tenant it names, and one no connection serves is not stored."""
    from integrations.sync import webhooks

    monkeypatch.setattr(webhooks, "_tenants", {})
    rung: list[int] = []
    monkeypatch.setattr(
        webhooks, "ring_inbound", lambda connection_ids, **kw: rung.extend(connection_ids)
    )
    uk = make_connection(credentials={"webhook_secret": SECRET, "tenant_id": "tenant-uk"})
    us = make_connection(
        name="Xero (US)", credentials={"webhook_secret": SECRET, "tenant_id": "tenant-us"}
    )
    events = [
        {**json.loads(_xero_body(resource_id=f"inv-{tenant}"))["events"][0], "tenantId": tenant}
        for tenant in ("tenant-uk", "tenant-us", "tenant-elsewhere")
    ]
    body = json.dumps({"events": events}).encode()
    response = post(f"/webhooks/{uk.pk}/", body, HTTP_X_XERO_SIGNATURE=_xero_sign(body))
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 0, "ignored": 1}
    stored = dict(InboundMessage.objects.values_list("external_id", "connection_id"))
    assert stored == {"inv-tenant-uk": uk.pk, "inv-tenant-us": us.pk}
    assert sorted(rung) == sorted([uk.pk, us.pk])  # each connection's worker is asked


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({}, 401, "unsigned"),
        ({"HTTP_X_XERO_SIGNATURE": "bm90IHRoZSBzaWduYXR1cmU="}, 401, "does not match"),
    ],
)
def test_unsigned_or_wrongly_signed_xero_delivery_is_refused(
    xero, headers: dict[str, str], status: int, words: str, post: Callable[..., Any]
) -> None:
    response = post(f"/webhooks/{xero.pk}/", _xero_body(), **headers)
    assert response.status_code == status
    assert words in response.json()["error"]
    assert not InboundMessage.objects.exists()


def test_tampered_body_is_refused(xero, post: Callable[..., Any]) -> None:
    body = _xero_body()
    tampered = body.replace(b"inv-1", b"inv-2")
    response = post(f"/webhooks/{xero.pk}/", tampered, HTTP_X_XERO_SIGNATURE=_xero_sign(body))
    assert response.status_code == 401
    assert not InboundMessage.objects.exists()


def test_signed_feed_delivery_keeps_its_version(harvest, post: Callable[..., Any]) -> None:
    body = _feed(version=7)
    response = post(f"/webhooks/{harvest.pk}/", body, **_feed_headers(body))
    assert response.status_code == 200, response.content
    message = InboundMessage.objects.get()
    assert (message.object_type, message.external_id, message.source_version) == (
        "time_entries",
        "4711",
        7,
    )


def test_stale_feed_delivery_is_refused_as_a_replay(harvest, post: Callable[..., Any]) -> None:
    body = _feed()
    response = post(f"/webhooks/{harvest.pk}/", body, **_feed_headers(body, age_s=3600))
    assert response.status_code == 400
    assert "stale" in response.json()["error"]
    assert not InboundMessage.objects.exists()


def test_feed_signed_with_another_secret_is_refused(harvest, post: Callable[..., Any]) -> None:
    body = _feed()
    response = post(f"/webhooks/{harvest.pk}/", body, **_feed_headers(body, secret="other"))
    assert response.status_code == 401
    assert not InboundMessage.objects.exists()


def test_malformed_json_is_refused_with_a_reason(xero, post: Callable[..., Any]) -> None:
    body = b"{not json"
    response = post(f"/webhooks/{xero.pk}/", body, HTTP_X_XERO_SIGNATURE=_xero_sign(body))
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_connection_without_secret_refuses_everything(db: None, post: Callable[..., Any]) -> None:
    connection = make_connection(credentials={"client_id": "x"})
    body = _xero_body()
    response = post(f"/webhooks/{connection.pk}/", body, HTTP_X_XERO_SIGNATURE=_xero_sign(body, ""))
    assert response.status_code == 403
    assert "no webhook secret" in response.json()["error"]


def test_unknown_connection_is_404(db: None, post: Callable[..., Any]) -> None:
    assert post("/webhooks/999999/", _xero_body()).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_same_delivery_twice_at_once_gives_one_record(live_server) -> None:
    connection = make_connection(credentials={"webhook_secret": SECRET})
    body = _xero_body("inv-race")
    url = f"{live_server.url}/webhooks/{connection.pk}/"
    results = post_at_once(url, body, {"x-xero-signature": _xero_sign(body)})
    assert len(results) == 8
    assert sum(r["accepted"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 7
    assert InboundMessage.objects.filter(external_id="inv-race").count() == 1
