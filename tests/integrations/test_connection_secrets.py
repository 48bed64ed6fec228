"""A connection's secret is bound to where it may be sent.

Changing a connection's base URL or token URL to another host needs the credentials entered
again in the same change (API: 400 with words; admin: a form error); an accepted change is
audited with the old and new origins, never the secret. Behind that, the HTTP layer refuses to
send a request of a connection holding credentials to any origin they were not entered for, so
a base URL edited in the database by hand leaks nothing: two real local HTTP servers (the
vendor the credentials were entered for, and another host) record every request they get.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.contenttypes.models import ContentType
from django.db import connection as db
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from exceptions.models import ExceptionCase
from integrations import models as m
from integrations.connectors.errors import CredentialsOriginRefused
from integrations.crypto import decrypt_text, encrypt_text
from integrations.models.connections import VENDOR_FIXED_ORIGINS, url_origin
from integrations.roles import INTEGRATION_ADMIN
from integrations.sync.dispatch import outbox_dispatch
from integrations.vendors import connector_for
from integrations.vendors.xero import connector as xero_module
from tests.factories import UserFactory, make_connection

pytestmark = pytest.mark.django_db

migration = importlib.import_module("integrations.migrations.0016_connection_secret_origin")

HARVEST_TOKEN = "harvest-token-entered-for-home-7c1d"
NEW_HARVEST_TOKEN = "harvest-token-for-the-new-host-3b9e"
XERO_SECRET = "xero-client-secret-entered-for-home-5a2f"
NEW_XERO_SECRET = "xero-client-secret-for-the-new-host-8d4c"

Answer = Callable[[str, str, dict[str, str], str], tuple[int, dict[str, Any]]]


class Recorder:
    """A real HTTP server on a free loopback port that records every request it is sent
    (method, path, headers, body) and answers with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.requests.append(
                    {"method": self.command, "path": self.path, "headers": headers, "body": body}
                )
                status, payload = answer(self.command, self.path, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def harvest_answer(method: str, path: str, headers: dict[str, str], body: str) -> Any:
    if method == "GET" and path.split("?")[0].endswith("/clients"):
        client = {"id": 7, "name": "Acme", "updated_at": "2026-11-30T10:00:00Z"}
        return 200, {"clients": [client], "links": {"next": None}}
    if path.endswith("/connect/token"):
        return 200, {"access_token": "xero-access-token-from-home", "expires_in": 1800}
    return 404, {"message": "not found"}


@pytest.fixture
def servers() -> Iterator[SimpleNamespace]:
    """``home``: the vendor the credentials are entered for; ``elsewhere``: another host."""
    home, elsewhere = Recorder(harvest_answer), Recorder(harvest_answer)
    yield SimpleNamespace(home=home, elsewhere=elsewhere)
    home.close()
    elsewhere.close()


def harvest_at(url: str, **fields: Any) -> m.Connection:
    values: dict[str, Any] = {
        "name": "Harvest",
        "role": "psa",
        "vendor": "harvest",
        "base_url": f"{url}/harvest/v2",
        "credentials": {"access_token": HARVEST_TOKEN, "account_id": "100001"},
    }
    values.update(fields)
    return make_connection(**values)


def xero_at(url: str) -> m.Connection:
    return make_connection(
        base_url=f"{url}/xero/api.xro/2.0",
        credentials={
            "client_id": "concord-xero",
            "client_secret": XERO_SECRET,
            "token_url": f"{url}/xero/connect/token",
            "tenant_id": "tenant-1",
        },
    )


def admin_api() -> tuple[APIClient, Any]:
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    client = APIClient()
    client.force_authenticate(admin)
    return client, admin


def updates(connection: m.Connection) -> list[m.AuditEvent]:
    return list(
        m.AuditEvent.objects.filter(
            object_type="connection", object_id=str(connection.pk), action="update"
        )
    )


# --- The service's rule, through the API ------------------------------------------------------


def test_api_refuses_a_new_base_url_host_without_the_credentials_again(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    client, _ = admin_api()

    response = client.patch(
        f"/api/v1/connections/{harvest.pk}/",
        {"base_url": f"{servers.elsewhere.url}/harvest/v2"},
        format="json",
    )

    assert response.status_code == 400
    (message,) = response.json()["base_url"]
    assert f"would send the stored credentials to {servers.elsewhere.url}" in message
    assert f"they were entered for {servers.home.url}" in message
    assert "Enter them again in the same change: access_token, account_id" in message
    harvest.refresh_from_db()
    assert harvest.base_url == f"{servers.home.url}/harvest/v2"
    assert harvest.credentials == {"access_token": HARVEST_TOKEN, "account_id": "100001"}
    assert harvest.credential_origins == (servers.home.url,)
    assert updates(harvest) == []
    # Giving only some of them again is refused too, naming the one still missing.
    partial = client.patch(
        f"/api/v1/connections/{harvest.pk}/",
        {
            "base_url": f"{servers.elsewhere.url}/harvest/v2",
            "credentials": {"access_token": NEW_HARVEST_TOKEN},
        },
        format="json",
    )
    assert partial.status_code == 400
    assert "same change: account_id (or remove them with null)" in partial.json()["base_url"][0]
    assert servers.elsewhere.requests == []


def test_api_move_with_new_credentials_is_audited_and_reaches_the_new_host(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    client, admin = admin_api()

    response = client.patch(
        f"/api/v1/connections/{harvest.pk}/",
        {
            "base_url": f"{servers.elsewhere.url}/harvest/v2",
            "credentials": {"access_token": NEW_HARVEST_TOKEN, "account_id": "200002"},
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["credential_origins"] == [servers.elsewhere.url]
    (event,) = updates(harvest)
    assert event.actor == admin
    assert event.changes["base_url"] == [
        f"{servers.home.url}/harvest/v2",
        f"{servers.elsewhere.url}/harvest/v2",
    ]
    assert event.changes["credential_origins"] == [[servers.home.url], [servers.elsewhere.url]]
    assert event.changes["credentials"] == [
        f"held for {servers.home.url}",
        f"entered again for {servers.elsewhere.url}: access_token, account_id",
    ]
    audit = client.get(f"/api/v1/audit-events/?object_type=connection&object_id={harvest.pk}")
    for secret in (HARVEST_TOKEN, NEW_HARVEST_TOKEN):
        assert secret.encode() not in audit.content
        assert secret.encode() not in response.content

    # The next call goes to the new host with the new token; the old host hears nothing.
    harvest.refresh_from_db()
    with closing(connector_for(harvest)) as connector:
        pages = list(connector.read_changed("clients", None))
    assert [[r["name"] for r in page] for page in pages] == [["Acme"]]
    assert servers.home.requests == []
    (sent,) = servers.elsewhere.requests
    assert sent["headers"]["authorization"] == f"Bearer {NEW_HARVEST_TOKEN}"
    assert sent["headers"]["harvest-account-id"] == "200002"


def test_api_move_that_removes_the_credentials_is_audited_as_cleared(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    client, _ = admin_api()

    response = client.patch(
        f"/api/v1/connections/{harvest.pk}/",
        {
            "base_url": f"{servers.elsewhere.url}/harvest/v2",
            "credentials": {"access_token": None, "account_id": None},
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["credential_keys"] == []
    assert response.json()["credential_origins"] == []
    (event,) = updates(harvest)
    assert event.changes["credential_origins"] == [[servers.home.url], []]
    assert event.changes["credentials"] == [f"held for {servers.home.url}", "credentials cleared"]
    assert event.changes["base_url"][1] == f"{servers.elsewhere.url}/harvest/v2"
    harvest.refresh_from_db()
    assert harvest.credentials == {}


def test_api_refuses_a_new_xero_token_url_without_the_client_secret_again(
    servers: SimpleNamespace,
) -> None:
    xero = xero_at(servers.home.url)
    client, _ = admin_api()
    elsewhere_token = f"{servers.elsewhere.url}/xero/connect/token"

    response = client.patch(
        f"/api/v1/connections/{xero.pk}/",
        {"credentials": {"token_url": elsewhere_token}},
        format="json",
    )

    assert response.status_code == 400
    (message,) = response.json()["credentials"]
    assert f"would send the stored credentials to {servers.elsewhere.url}" in message
    assert "client_id, client_secret, tenant_id" in message
    xero.refresh_from_db()
    assert xero.credentials["token_url"] == f"{servers.home.url}/xero/connect/token"
    assert xero.credential_origins == (servers.home.url,)
    assert updates(xero) == []

    # Rotation: the new token URL with the client id and secret for it, together, is taken.
    rotated = client.patch(
        f"/api/v1/connections/{xero.pk}/",
        {
            "credentials": {
                "token_url": elsewhere_token,
                "client_id": "concord-xero-2",
                "client_secret": NEW_XERO_SECRET,
                "tenant_id": "tenant-1",
            }
        },
        format="json",
    )
    assert rotated.status_code == 200, rotated.content
    assert rotated.json()["credential_origins"] == sorted([servers.home.url, servers.elsewhere.url])
    (event,) = updates(xero)
    assert event.changes["credential_origins"] == [
        [servers.home.url],
        sorted([servers.home.url, servers.elsewhere.url]),
    ]
    assert NEW_XERO_SECRET not in json.dumps(event.changes)
    assert XERO_SECRET not in json.dumps(event.changes)
    assert servers.elsewhere.requests == []


def test_a_path_change_on_the_same_origin_keeps_the_credentials(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    client, _ = admin_api()

    response = client.patch(
        f"/api/v1/connections/{harvest.pk}/",
        {"base_url": f"{servers.home.url}/harvest/v3"},
        format="json",
    )

    assert response.status_code == 200, response.content
    harvest.refresh_from_db()
    assert harvest.credentials == {"access_token": HARVEST_TOKEN, "account_id": "100001"}
    (event,) = updates(harvest)
    assert "credential_origins" not in event.changes


# --- The admin --------------------------------------------------------------------------------


def admin_post(client: Client, connection: m.Connection, base_url: str, credentials: str) -> Any:
    return client.post(
        f"/admin/integrations/connection/{connection.pk}/change/",
        {
            "name": connection.name,
            "role": "psa",
            "vendor": "harvest",
            "base_url": base_url,
            "rate_limit_per_minute": 60,
            "max_concurrency": 5,
            "enabled": "on",
            "new_credentials": credentials,
        },
    )


def test_admin_form_refuses_a_new_host_without_the_credentials_again(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    client = Client()
    client.force_login(UserFactory.create(role=INTEGRATION_ADMIN, is_staff=True))
    new_base = f"{servers.elsewhere.url}/harvest/v2"

    refused = admin_post(client, harvest, new_base, "")

    assert refused.status_code == 200
    page = refused.content.decode()
    assert "would send the stored credentials to" in page
    assert "Enter them again in the same change: access_token, account_id" in page
    assert HARVEST_TOKEN not in page
    harvest.refresh_from_db()
    assert harvest.base_url == f"{servers.home.url}/harvest/v2"
    assert updates(harvest) == []

    moved = admin_post(
        client,
        harvest,
        new_base,
        json.dumps({"access_token": NEW_HARVEST_TOKEN, "account_id": "200002"}),
    )

    assert moved.status_code == 302, moved.content.decode()[:2000]
    harvest.refresh_from_db()
    assert harvest.base_url == new_base
    assert harvest.credential_origins == (servers.elsewhere.url,)
    (event,) = updates(harvest)
    assert event.changes["credentials"][1].startswith(f"entered again for {servers.elsewhere.url}")
    change_page = client.get(f"/admin/integrations/connection/{harvest.pk}/change/")
    shown = change_page.content.decode()
    assert "Credentials may be sent to" in shown
    assert servers.home.url not in shown  # the old host is gone from the binding shown
    assert NEW_HARVEST_TOKEN not in change_page.content.decode()


# --- The last line: the HTTP layer ------------------------------------------------------------


def test_a_base_url_edited_in_the_database_sends_nothing_to_the_new_host(
    servers: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    harvest = harvest_at(servers.home.url)
    xero = xero_at(servers.home.url)
    for connection, path in ((harvest, "/harvest/v2"), (xero, "/xero/api.xro/2.0")):
        m.Connection.objects.filter(pk=connection.pk).update(
            base_url=f"{servers.elsewhere.url}{path}"
        )
    harvest.refresh_from_db()
    xero.refresh_from_db()

    with (
        closing(connector_for(harvest)) as connector,
        pytest.raises(CredentialsOriginRefused) as harvest_error,
    ):
        list(connector.read_changed("clients", None))
    with closing(connector_for(xero)) as connector, pytest.raises(CredentialsOriginRefused):
        list(connector.read_changed("Currencies", None))

    # Neither the token nor the client secret (nor a token request) went anywhere.
    assert servers.elsewhere.requests == []
    assert servers.home.requests == []
    error = harvest_error.value
    assert error.kind == "permanent"  # an admin's configuration error: never retried
    assert error.never_sent
    assert str(error) == "credentials not sent: the address is not one they were entered for"
    assert f"The request was for {servers.elsewhere.url}" in error.vendor_message
    assert f"entered for {servers.home.url}" in error.vendor_message
    assert error.attempt_id is not None
    attempt = m.SyncAttempt.objects.get(pk=error.attempt_id)
    assert attempt.outcome == "permanent"
    assert attempt.status_code is None
    assert "credentials not sent" in attempt.error
    assert HARVEST_TOKEN not in caplog.text
    assert XERO_SECRET not in caplog.text

    # The tampered row cannot be blessed by the next innocent edit through the service either.
    client, _ = admin_api()
    response = client.patch(
        f"/api/v1/connections/{harvest.pk}/", {"rate_limit_per_minute": 90}, format="json"
    )
    assert response.status_code == 400
    assert servers.elsewhere.url in response.json()["base_url"][0]


def test_a_write_to_a_tampered_connection_parks_at_once_with_a_case(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    m.Connection.objects.filter(pk=harvest.pk).update(
        base_url=f"{servers.elsewhere.url}/harvest/v2"
    )
    message = m.OutboxMessage.objects.create(
        connection=harvest,
        process="provisioning",
        step="psa_client",
        operation="create_client",
        content_type=ContentType.objects.get_for_model(m.Connection),
        object_id=harvest.pk,
        payload={"name": "Acme"},
        idempotency_key="secret-origin-create-client",
        next_attempt_at=timezone.now(),
    )

    outbox_dispatch(connection_id=harvest.pk, worker="test")

    message.refresh_from_db()
    assert message.state == m.OutboxMessage.State.PARKED
    assert message.attempts == 1  # parked on the first failure, not retried
    assert message.error_class == "permanent"
    assert "entered for" in message.last_error
    assert message.exception_case_id is not None
    case = ExceptionCase.objects.get(pk=message.exception_case_id)
    assert case.case_type == "permanent_error"
    assert servers.elsewhere.requests == []


def test_credentials_never_bound_are_sent_nowhere_until_the_migration_binds_them(
    servers: SimpleNamespace,
) -> None:
    harvest = harvest_at(servers.home.url)
    secrets = {"access_token": HARVEST_TOKEN, "account_id": "100001"}
    with db.cursor() as cursor:  # the stored form before this change: secrets alone
        cursor.execute(
            "UPDATE integrations_connection SET credentials = %s WHERE id = %s",
            [encrypt_text(json.dumps(secrets)), harvest.pk],
        )
    harvest.refresh_from_db()
    assert harvest.credentials == secrets
    assert harvest.credential_origins is None
    with closing(connector_for(harvest)) as connector, pytest.raises(CredentialsOriginRefused):
        list(connector.read_changed("clients", None))
    assert servers.home.requests == []

    migration.bind_existing(django_apps, SimpleNamespace(connection=db))

    harvest.refresh_from_db()
    assert harvest.credential_origins == (servers.home.url,)
    with closing(connector_for(harvest)) as connector:
        assert len(list(connector.read_changed("clients", None))) == 1
    assert len(servers.home.requests) == 1

    migration.unbind(django_apps, SimpleNamespace(connection=db))
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT credentials FROM integrations_connection WHERE id = %s", [harvest.pk]
        )
        (raw,) = cursor.fetchone()
    assert json.loads(decrypt_text(raw)) == secrets


def test_the_binding_is_encrypted_with_the_secrets() -> None:
    harvest = harvest_at("https://api.harvestapp.com")
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT credentials FROM integrations_connection WHERE id = %s", [harvest.pk]
        )
        (raw,) = cursor.fetchone()
    assert "harvestapp" not in raw
    assert json.loads(decrypt_text(raw))["__origins__"] == ["https://api.harvestapp.com"]


def test_xero_default_token_host_is_a_fixed_origin() -> None:
    # Xero's connector sends the client secret to this host when no token_url is given: it is
    # allowed in code, so no connection row can point the default elsewhere.
    assert url_origin(xero_module.DEFAULT_TOKEN_URL) in VENDOR_FIXED_ORIGINS["xero"]
    assert url_origin("HTTPS://API.Xero.com:443/api.xro/2.0") == "https://api.xero.com"
    assert url_origin("https://api.xero.com@evil.example/x") == "https://evil.example"
    assert url_origin("not a url") == ""


# --- Never logged, never stored ---------------------------------------------------------------


def echo_answer(method: str, path: str, headers: dict[str, str], body: str) -> Any:
    """A vendor that echoes what it was sent in its error answers."""
    authorization = headers.get("authorization", "")
    if path.endswith("/connect/token"):
        encoded = authorization.split(" ", 1)[-1]
        return 401, {
            "error": "invalid_client",
            "error_description": f"no client for {encoded} ({base64.b64decode(encoded).decode()})",
            "form": body,
        }
    return 401, {"message": f"bad token {authorization.split(' ', 1)[-1]}", "seen": authorization}


def test_secrets_a_vendor_echoes_back_are_not_kept_in_attempts_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = Recorder(echo_answer)
    try:
        harvest = harvest_at(echo.url)
        xero = xero_at(echo.url)
        with (
            closing(connector_for(harvest)) as connector,
            pytest.raises(Exception, match="Harvest auth"),
        ):
            list(connector.read_changed("clients", None))
        with (
            closing(connector_for(xero)) as connector,
            pytest.raises(Exception, match="OAuth token"),
        ):
            list(connector.read_changed("Currencies", None))
    finally:
        echo.close()

    basic = base64.b64encode(f"concord-xero:{XERO_SECRET}".encode()).decode()
    # The vendor did get (and echo) the secrets: what follows is about what Concord keeps.
    sent = json.dumps(echo.requests)
    assert HARVEST_TOKEN in sent
    assert basic in sent
    attempts = m.SyncAttempt.objects.filter(connection__in=[harvest, xero])
    assert {a.operation for a in attempts} == {"read:clients", "oauth_token", "read:Currencies"}
    kept = " ".join(f"{a.error} {a.vendor_response}" for a in attempts)
    assert "[redacted]" in kept
    for secret in (HARVEST_TOKEN, XERO_SECRET, basic):
        assert secret not in kept
        assert secret not in caplog.text
    # An attempt row has no place for request headers or bodies at all.
    fields = {f.name for f in m.SyncAttempt._meta.get_fields()}
    assert not {"headers", "request", "request_headers", "request_body"} & fields
