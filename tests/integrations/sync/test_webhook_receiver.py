"""The webhook receiver in front of Django (integrations/wsgi.py): what it answers itself, what
it leaves to Django, a dropped database connection, and real concurrency under gunicorn."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.test import override_settings

from integrations.models import InboundMessage
from integrations.wsgi import with_webhook_receiver
from tests.factories import make_connection
from tests.integrations.sync.wsgi_client import post_at_once, wsgi_call, wsgi_post
from tests.processes import (
    free_port,
    gunicorn_proc,
    process_env,
    running,
    wait_for_http,
)
from tests.processes import test_database_url as database_url

SECRET = "whsec-receiver-test"


def _signed(event_id: str, record_id: int = 4711) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "system": "harvest",
            "events": [
                {"id": event_id, "object": "time_entries", "record_id": record_id, "version": 1}
            ],
        }
    ).encode()
    ts = str(int(time.time()))
    signature = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return body, {
        "x-sandbox-timestamp": ts,
        "x-sandbox-signature": f"v1={signature}",
        "x-sandbox-event-id": f"delivery-{event_id}",
    }


def _environ_headers(headers: dict[str, str]) -> dict[str, str]:
    return {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}


def _harvest():
    return make_connection(
        name="Harvest",
        role="psa",
        vendor="harvest",
        base_url="http://127.0.0.1:8100/harvest/v2",
        credentials={"webhook_secret": SECRET},
    )


@pytest.mark.django_db
def test_everything_but_a_webhook_post_is_left_to_django() -> None:
    harvest = _harvest()
    get = wsgi_call("GET", f"/webhooks/{harvest.pk}/")
    assert get.status_code == 405  # Django's require_POST on the view
    assert wsgi_call("POST", "/webhooks/not-a-number/").status_code == 404
    # Django's /healthz answers: with no worker or beat heartbeat in this test's database it
    # says degraded (503), having reached the database through Django's own stack.
    health = wsgi_call("GET", "/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert health.json()["checks"]["database"]["status"] == "ok"
    assert health.json()["checks"]["worker"]["status"] == "down"


@pytest.mark.django_db
def test_an_oversized_body_is_refused_before_it_is_read() -> None:
    harvest = _harvest()
    answer = wsgi_call("POST", f"/webhooks/{harvest.pk}/", b"{}", CONTENT_LENGTH=str(5_000_000))
    assert answer.status_code == 413
    assert "over the" in answer.json()["error"]
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.django_db
def test_an_internal_error_is_a_500_that_says_nothing_was_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from integrations import wsgi

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(wsgi, "webhook_answer", broken)
    harvest = _harvest()
    body, headers = _signed("evt-500")
    answer = wsgi_post(f"/webhooks/{harvest.pk}/", body, **_environ_headers(headers))
    assert answer.status_code == 500
    assert "Send it again" in answer.json()["error"]


@pytest.mark.django_db
@override_settings(
    SECURE_SSL_REDIRECT=True, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")
)
def test_with_https_required_a_plain_http_webhook_goes_to_django_and_is_redirected() -> None:
    # Built under these settings (Django's middleware reads them once, when it is loaded).
    app = with_webhook_receiver(get_wsgi_application())
    harvest = _harvest()
    body, headers = _signed("evt-tls")
    plain = wsgi_post(f"/webhooks/{harvest.pk}/", body, app, **_environ_headers(headers))
    assert plain.status_code == 301
    assert plain.headers["location"].startswith("https://")
    assert not InboundMessage.objects.exists()
    behind_proxy = wsgi_post(
        f"/webhooks/{harvest.pk}/",
        body,
        app,
        HTTP_X_FORWARDED_PROTO="https",
        **_environ_headers(headers),
    )
    assert behind_proxy.status_code == 200
    assert InboundMessage.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_database_dropped_is_replaced_and_the_delivery_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harvest = _harvest()
    connection.ensure_connection()
    backend = connection.cursor().connection.info.backend_pid
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])
    body, headers = _signed("evt-after-drop")
    answer = wsgi_post(f"/webhooks/{harvest.pk}/", body, **_environ_headers(headers))
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"accepted": 1, "duplicates": 0}
    assert "reconnecting once" in caplog.text
    assert InboundMessage.objects.filter(dedupe_key="event:evt-after-drop").count() == 1


@pytest.mark.django_db(transaction=True)
def test_under_gunicorn_the_same_delivery_eight_times_at_once_is_one_row(tmp_path: Path) -> None:
    harvest = _harvest()
    port = free_port()
    server = gunicorn_proc(port, process_env(), tmp_path / "gunicorn.log", workers=2, threads=4)
    with running(server):
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        body, headers = _signed("evt-race")
        url = f"http://127.0.0.1:{port}/webhooks/{harvest.pk}/"
        answers = post_at_once(url, body, headers)
    assert len(answers) == 8
    assert sum(a["accepted"] for a in answers) == 1
    assert sum(a["duplicates"] for a in answers) == 7
    assert InboundMessage.objects.filter(dedupe_key="event:evt-race").count() == 1


@pytest.mark.django_db
def test_a_chunked_delivery_is_read_whole_by_the_receiver() -> None:
    harvest = _harvest()
    body, headers = _signed("evt-chunked")
    answer = wsgi_call(
        "POST",
        f"/webhooks/{harvest.pk}/",
        body,
        CONTENT_LENGTH="",
        HTTP_TRANSFER_ENCODING="chunked",
        **_environ_headers(headers),
    )
    assert answer.status_code == 200, answer.content
    assert answer.json() == {"accepted": 1, "duplicates": 0}
    assert InboundMessage.objects.filter(dedupe_key="event:evt-chunked").count() == 1


@pytest.mark.django_db
def test_a_chunked_delivery_over_the_limit_is_refused() -> None:
    harvest = _harvest()
    answer = wsgi_call(
        "POST",
        f"/webhooks/{harvest.pk}/",
        b"x" * 1_000_001,
        CONTENT_LENGTH="",
        HTTP_TRANSFER_ENCODING="chunked",
    )
    assert answer.status_code == 413
    assert InboundMessage.objects.count() == 0


@pytest.mark.django_db
def test_django_view_refuses_a_chunked_delivery_with_411_not_a_signature_error() -> None:
    harvest = _harvest()
    body, headers = _signed("evt-chunked-django")
    answer = wsgi_call(
        "POST",
        f"/webhooks/{harvest.pk}/",
        body,
        app=get_wsgi_application(),
        CONTENT_LENGTH="",
        HTTP_TRANSFER_ENCODING="chunked",
        **_environ_headers(headers),
    )
    assert answer.status_code == 411
    assert "Content-Length" in answer.json()["error"]
    assert InboundMessage.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_under_gunicorn_a_chunked_delivery_is_stored(tmp_path: Path) -> None:
    harvest = _harvest()
    port = free_port()
    server = gunicorn_proc(port, process_env(), tmp_path / "gunicorn.log", workers=1, threads=2)
    with running(server):
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        body, headers = _signed("evt-chunked-gunicorn")
        # A generator body: httpx sends it with Transfer-Encoding: chunked, no Content-Length.
        answer = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/{harvest.pk}/",
            content=iter([body[:10], body[10:]]),
            headers={**headers, "content-type": "application/json"},
            timeout=10,
        )
    assert answer.request.headers.get("transfer-encoding") == "chunked"
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 1, "duplicates": 0}
    assert InboundMessage.objects.filter(dedupe_key="event:evt-chunked-gunicorn").count() == 1
