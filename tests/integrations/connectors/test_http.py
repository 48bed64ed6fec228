"""The shared HTTP layer: classification, Retry-After across workers, timeouts, token refresh,
SyncAttempt rows and redaction."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone

from integrations.connectors import http as http_module
from integrations.connectors.errors import PermanentError, TransientError
from integrations.models import Connection, OutboxMessage, SyncAttempt
from integrations.vendors import connector_for
from tests.integrations.conftest import (
    HARVEST_TOKEN,
    SALESFORCE_SECRET,
    XERO_SECRET,
    Sandbox,
)

pytestmark = pytest.mark.django_db


def test_5xx_is_transient_and_recorded(sandbox: Sandbox, harvest_connection: Connection) -> None:
    sandbox.faults("harvest", error_rate=1.0)
    with pytest.raises(TransientError, match="vendor error 500") as error:
        list(connector_for(harvest_connection).read_changed("clients", None))
    assert error.value.kind == "transient"
    assert error.value.status_code == 500
    assert "sandbox fault" in error.value.vendor_message
    assert error.value.attempt_id is not None
    attempt = SyncAttempt.objects.get(pk=error.value.attempt_id)
    assert attempt.outcome == "transient"
    assert attempt.status_code == 500
    assert attempt.operation == "read:clients"
    assert "Internal error" in attempt.vendor_response


def test_429_retry_after_pauses_every_worker(sandbox: Sandbox, xero_connection: Connection) -> None:
    worker_a, worker_b = connector_for(xero_connection), connector_for(xero_connection)
    list(worker_a.read_changed("Currencies", None))
    sandbox.faults("xero", throttle_rate=1.0)
    with pytest.raises(TransientError, match="429") as error:
        list(worker_a.read_changed("Currencies", None))
    assert error.value.retry_after == 1.0
    sandbox.faults("xero", throttle_rate=0.0)
    # The pause every worker sees is the vendor's Retry-After, no longer: B's wait is bounded by it.
    limits = worker_b.http.limits  # type: ignore[attr-defined]
    paused = limits.store.pause_left(limits.key("pause"))
    assert 0 < paused <= error.value.retry_after

    started = time.monotonic()
    assert list(worker_b.read_changed("Currencies", None))
    waited = time.monotonic() - started

    # Worker B never saw the 429 itself but held off until Retry-After had passed.
    assert waited >= 0.8
    assert limits.store.pause_left(limits.key("pause")) == 0
    stats = sandbox.stats("xero", "Currencies")
    assert stats["requests"] == 3
    assert stats["throttled"] == 1


def test_retry_after_longer_than_the_wait_budget_is_not_waited_for(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = connector_for(xero_connection, acquire_timeout=0.2)
    connector.http.limits.pause(30)  # type: ignore[attr-defined]
    with pytest.raises(TransientError, match="local limit wait exceeded") as error:
        list(connector.read_changed("Currencies", None))
    assert error.value.retry_after is not None
    assert 29 < error.value.retry_after <= 30
    assert sandbox.stats("xero", "Currencies") == {}
    assert error.value.attempt_id is not None
    assert SyncAttempt.objects.get(pk=error.value.attempt_id).status_code is None


def test_timeout_is_transient(sandbox: Sandbox, harvest_connection: Connection) -> None:
    sandbox.faults("harvest", latency_ms=1500)
    connector = connector_for(harvest_connection, timeout=httpx.Timeout(0.4))
    started = time.monotonic()
    with pytest.raises(TransientError, match="read timeout") as error:
        list(connector.read_changed("clients", None))
    # Cut off by the 0.4 s timeout (a wait for the 1.5 s answer would have read it), once: the
    # call is neither retried in place nor waited out.
    assert time.monotonic() - started >= 0.4
    assert sandbox.stats("harvest", "clients")["requests"] == 1
    assert error.value.attempt_id is not None
    attempt = SyncAttempt.objects.get(pk=error.value.attempt_id)
    assert attempt.outcome == "transient"
    assert attempt.status_code is None


def test_connection_refused_is_transient(make_connection: Any) -> None:
    connection = make_connection("harvest", base_url="http://127.0.0.1:9/harvest/v2")
    with pytest.raises(TransientError, match="connection error"):
        list(connector_for(connection).read_changed("clients", None))


def test_expired_token_is_refreshed_once(sandbox: Sandbox, xero_connection: Connection) -> None:
    connector = connector_for(xero_connection)
    list(connector.read_changed("Currencies", None))
    for key in list(http_module._tokens):
        http_module._tokens[key] = ("revoked-token-value", time.monotonic() + 600)

    assert list(connector.read_changed("Currencies", None))

    outcomes = list(
        SyncAttempt.objects.filter(operation="read:Currencies")
        .order_by("started_at", "id")
        .values_list("status_code", "outcome")
    )
    assert outcomes == [(200, "success"), (401, "transient"), (200, "success")]
    assert sandbox.stats("xero", "connect")["requests"] == 2


def test_401_after_a_refresh_is_permanent(xero_connection: Connection) -> None:
    calls: list[str] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t-" + str(len(calls))})
        return httpx.Response(401, json={"Title": "Unauthorized", "Detail": "TokenExpired"})

    connector = connector_for(xero_connection, transport=httpx.MockTransport(vendor))
    with pytest.raises(PermanentError, match="Xero authentication failed") as error:
        list(connector.read_changed("Currencies", None))
    assert error.value.vendor_message == "TokenExpired"
    assert [c.rsplit("/", 1)[-1] for c in calls] == ["token", "Currencies", "token", "Currencies"]


def test_every_call_is_recorded_and_linked_to_its_outbox_rows(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    message = OutboxMessage.objects.create(
        connection=harvest_connection,
        process="provisioning",
        step="psa_client",
        operation="create_client",
        content_type=ContentType.objects.get_for_model(Connection),
        object_id=harvest_connection.pk,
        idempotency_key="test-create-client",
        next_attempt_at=timezone.now(),
    )
    # Every Harvest answer takes at least 120 ms: the recorded latency must show it.
    sandbox.faults("harvest", latency_ms=120)
    connector = connector_for(harvest_connection)
    started = time.monotonic()
    result = connector.write(
        "create_client", [{"name": "Acme"}], idempotency_key="k", message_ids=[message.pk]
    )[0]
    elapsed_ms = (time.monotonic() - started) * 1000
    assert result.ok

    attempts = SyncAttempt.objects.filter(connection=harvest_connection).order_by("id")
    # A first attempt posts without a look-up (only a retry that may have landed looks first).
    assert [a.operation for a in attempts] == ["create_client"]
    create = attempts.last()
    assert create is not None
    assert create.outcome == "success"
    assert create.status_code == 201
    assert 120 <= create.latency_ms <= elapsed_ms
    assert '"name":"Acme"' in create.vendor_response
    assert list(create.messages.all()) == [message]


def test_calls_inside_a_transaction_are_refused(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    connector = connector_for(harvest_connection)
    with transaction.atomic(), pytest.raises(RuntimeError, match="inside a database transaction"):
        list(connector.read_changed("clients", None))
    assert sandbox.stats("harvest", "clients") == {}


def test_no_secret_reaches_logs_or_sync_attempts(
    sandbox: Sandbox,
    xero_connection: Connection,
    harvest_connection: Connection,
    salesforce_connection: Connection,
    make_connection: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    xero = connector_for(xero_connection)
    list(xero.read_changed("Currencies", None))
    token = next(iter(http_module._tokens.values()))[0]
    sandbox.faults("xero", error_rate=1.0)
    with pytest.raises(TransientError):
        list(xero.read_changed("Currencies", None))
    sandbox.faults("xero", error_rate=0.0)
    list(connector_for(harvest_connection).read_changed("clients", None))
    list(connector_for(salesforce_connection).read_changed("Account", None))
    sf_token = next(t for t, _ in http_module._tokens.values() if t != token)
    wrong = make_connection(
        "xero",
        credentials={**xero_connection.credentials, "client_secret": "wrong-secret-value"},
    )
    http_module.forget_tokens()
    with pytest.raises(PermanentError, match="OAuth token refused: invalid_client"):
        list(connector_for(wrong).read_changed("Currencies", None))

    rows = SyncAttempt.objects.all()
    stored = " ".join(f"{a.error} {a.vendor_response}" for a in rows)
    assert rows.filter(operation="oauth_token").count() == 3
    token_body = rows.filter(operation="oauth_token", outcome="success").first()
    assert token_body is not None
    assert '"access_token":"[redacted]"' in token_body.vendor_response
    for secret in (XERO_SECRET, HARVEST_TOKEN, SALESFORCE_SECRET, "wrong-secret-value"):
        assert secret not in stored
        assert secret not in caplog.text
    for live_token in (token, sf_token):
        assert live_token not in stored
        assert live_token not in caplog.text
