"""Connections in the console (/config/connections/): the list with health, adding one, changing
its settings and write-only credentials through the audited service (its refusal of a URL move
shown as a form error), and the test button against the real sandbox; integration admins only."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from django.test import Client
from django_celery_beat.models import PeriodicTask

from integrations.models import AuditEvent, Connection, SyncAttempt
from integrations.roles import FINANCE, INTEGRATION_ADMIN, VIEWER
from tests.factories import UserFactory, make_connection
from tests.integrations import conftest as sandbox_fixtures
from tests.integrations.conftest import HARVEST_TOKEN, SALESFORCE_SECRET, XERO_SECRET, Sandbox

pytestmark = pytest.mark.django_db

# The vendor sandbox (a real process) and fresh limiter state per test, as the connector tests.
sandbox_url = sandbox_fixtures.sandbox_url
sandbox = sandbox_fixtures.sandbox
sandbox_connection = sandbox_fixtures.make_connection
isolated_state = sandbox_fixtures.isolated_state

SECRET = "s3cr3t-value-for-tests"
HX = {"HX-Request": "true"}


@pytest.fixture
def admin() -> Client:
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    return client


def _urls(connection: Connection) -> list[tuple[str, str]]:
    pk = connection.pk
    return [
        ("get", "/config/connections/"),
        ("get", "/config/connections/?format=csv"),
        ("get", "/config/connections/new/?vendor=harvest"),
        ("post", "/config/connections/new/?vendor=harvest"),
        ("get", f"/config/connections/{pk}/"),
        ("post", f"/config/connections/{pk}/"),
        ("post", f"/config/connections/{pk}/test/"),
    ]


@pytest.mark.parametrize("role", [FINANCE, VIEWER, ""])
def test_a_user_without_the_admin_role_is_refused_every_page_and_action(role: str) -> None:
    connection = make_connection()
    client = Client()
    client.force_login(UserFactory.create(role=role))
    for method, url in _urls(connection):
        response = getattr(client, method)(url)
        assert response.status_code == 403, (role, method, url)
    assert not AuditEvent.objects.filter(action="test").exists()


def test_anonymous_is_sent_to_sign_in_from_every_page_and_action() -> None:
    connection = make_connection()
    for method, url in _urls(connection):
        response = getattr(Client(), method)(url)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith("/login/?next=")


def test_the_list_shows_each_connection_with_its_health_and_never_a_secret(
    admin: Client,
) -> None:
    xero = make_connection(name="Xero (new)")
    make_connection(
        name="Harvest",
        role="psa",
        vendor="harvest",
        base_url="https://api.harvestapp.com/v2",
        credentials={"access_token": SECRET, "account_id": "42"},
        enabled=False,
    )
    page = admin.get("/config/connections/")
    text = page.content.decode()
    assert page.status_code == 200
    assert "Xero (new)" in text
    assert "Harvest" in text
    assert f'href="/config/connections/{xero.pk}/"' in text
    assert "every 120 s" in text  # each has its own polling schedule
    assert "no calls yet" in text
    assert SECRET not in text

    only = admin.get("/config/connections/?vendor=harvest&enabled=no", headers=HX)
    assert "Harvest" in only.content.decode()
    assert "Xero (new)" not in only.content.decode()
    assert "<html" not in only.content.decode()  # the results region only

    nothing = admin.get("/config/connections/?q=nothing-like-this")
    assert "No connection matches these filters" in nothing.content.decode()

    exported = admin.get("/config/connections/?vendor=xero&format=csv")
    body = b"".join(exported.streaming_content).decode()  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [r["name"] for r in rows] == ["Xero (new)"]
    assert rows[0]["credential_keys"] == "client_id client_secret"
    assert SECRET not in body


def test_the_empty_list_says_there_is_nothing_and_how_to_add_one(admin: Client) -> None:
    text = admin.get("/config/connections/").content.decode()
    assert "No connections yet" in text
    assert "/config/connections/new/" in text


def test_an_admin_adds_a_connection_with_write_only_credentials(admin: Client) -> None:
    chooser = admin.get("/config/connections/new/")
    assert "Choose the vendor first" in chooser.content.decode()
    form = admin.get("/config/connections/new/?vendor=harvest").content.decode()
    assert "Personal access token" in form
    assert "https://api.harvestapp.com/v2" in form

    response = admin.post(
        "/config/connections/new/?vendor=harvest",
        {
            "vendor": "harvest",
            "name": "Harvest (firm)",
            "base_url": "https://api.harvestapp.com/v2",
            "rate_limit_per_minute": "400",
            "max_concurrency": "5",
            "enabled": "on",
            "cred_access_token": SECRET,
            "cred_account_id": "100001",
        },
    )
    connection = Connection.objects.get(name="Harvest (firm)")
    assert response.status_code == 302
    assert response["Location"] == f"/config/connections/{connection.pk}/"
    assert connection.role == "psa"
    assert dict(connection.credentials) == {"access_token": SECRET, "account_id": "100001"}
    assert connection.credential_origins == ("https://api.harvestapp.com",)
    # Its own polling schedule came with it.
    task = PeriodicTask.objects.get(name=f"poll connection {connection.pk}")
    assert (task.task, task.args, task.enabled) == (
        "integrations.poll_connection",
        f"[{connection.pk}]",
        True,
    )

    page = admin.get(response["Location"])
    text = page.content.decode()
    assert "Connection Harvest (firm) added" in text
    assert SECRET not in text
    assert "100001" not in text
    assert text.count(">stored</span>") == 2
    (created,) = AuditEvent.objects.filter(object_type="connection", action="create")
    assert created.actor_label == "ada"
    assert created.changes["credential_keys"] == [[], ["access_token", "account_id"]]
    assert SECRET not in str(created.changes)


def test_adding_refuses_a_duplicate_name_and_an_unknown_vendor(admin: Client) -> None:
    make_connection(name="Xero (new)")
    response = admin.post(
        "/config/connections/new/?vendor=xero",
        {
            "vendor": "xero",
            "name": "Xero (new)",
            "base_url": "https://api.xero.com/api.xro/2.0",
            "rate_limit_per_minute": "60",
            "max_concurrency": "5",
            "cred_client_secret": SECRET,
        },
    )
    assert response.status_code == 400
    text = response.content.decode()
    assert "Connection with this Name already exists" in text
    assert SECRET not in text  # not even the value just typed comes back
    assert Connection.objects.count() == 1
    unknown = admin.get("/config/connections/new/?vendor=sap")
    assert unknown.status_code == 400
    assert "not a vendor Concord connects to" in unknown.content.decode()


def _settings(connection: Connection, **changes: str) -> dict[str, str]:
    data = {
        "name": connection.name,
        "base_url": connection.base_url,
        "rate_limit_per_minute": str(connection.rate_limit_per_minute),
        "max_concurrency": str(connection.max_concurrency),
        "enabled": "on" if connection.enabled else "",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def test_an_empty_box_keeps_a_credential_a_value_replaces_it_and_clear_removes_it(
    admin: Client,
) -> None:
    connection = make_connection(
        credentials={"client_id": "cid-123456", "client_secret": SECRET, "tenant_id": "t-1"}
    )
    url = f"/config/connections/{connection.pk}/"
    response = admin.post(
        url,
        _settings(
            connection,
            rate_limit_per_minute="30",
            cred_client_secret="n3w-secret-value",
            clear_tenant_id="on",
        ),
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert dict(connection.credentials) == {
        "client_id": "cid-123456",
        "client_secret": "n3w-secret-value",
    }
    assert connection.rate_limit_per_minute == 30
    page = admin.get(url).content.decode()
    assert (
        f"Saved {connection.name}: changed rate limit; credentials replaced: client_secret; "
        "credentials cleared: tenant_id." in page
    )
    assert "n3w-secret-value" not in page
    assert "cid-123456" not in page
    update = AuditEvent.objects.filter(object_type="connection", action="update").get()
    assert update.changes["rate_limit_per_minute"] == [60, 30]
    assert update.changes["credentials_replaced"] == ["client_secret"]
    assert "n3w-secret-value" not in str(update.changes)

    both = admin.post(url, _settings(connection, cred_client_id="x" * 8, clear_client_id="on"))
    assert both.status_code == 400
    assert "Enter a new value or clear it, not both." in both.content.decode()


def test_a_base_url_move_without_the_credentials_again_is_refused_on_the_form(
    admin: Client,
) -> None:
    connection = make_connection(credentials={"client_id": "cid-123456", "client_secret": SECRET})
    url = f"/config/connections/{connection.pk}/"
    moved = "https://elsewhere.example/api.xro/2.0"
    refused = admin.post(url, _settings(connection, base_url=moved))
    text = refused.content.decode()
    assert refused.status_code == 400
    assert "Nothing was saved" in text
    assert "would send the stored credentials to https://elsewhere.example" in text
    assert "type each stored credential again under Credentials below" in text
    connection.refresh_from_db()
    assert connection.base_url != moved
    assert not AuditEvent.objects.filter(object_type="connection", action="update").exists()

    accepted = admin.post(
        url,
        _settings(
            connection,
            base_url=moved,
            cred_client_id="cid-654321",
            cred_client_secret="an0ther-secret",
        ),
    )
    assert accepted.status_code == 302
    connection.refresh_from_db()
    assert connection.base_url == moved
    assert connection.credential_origins == ("https://elsewhere.example",)
    update = AuditEvent.objects.get(object_type="connection", action="update")
    assert update.changes["credential_origins"][1] == ["https://elsewhere.example"]
    assert "an0ther-secret" not in str(update.changes)


def test_enabling_a_connection_again_gives_it_back_a_lost_polling_schedule(
    admin: Client,
) -> None:
    connection = make_connection(enabled=False)
    PeriodicTask.objects.filter(name=f"poll connection {connection.pk}").delete()
    admin.post(f"/config/connections/{connection.pk}/", _settings(connection, enabled="on"))
    assert PeriodicTask.objects.filter(name=f"poll connection {connection.pk}").exists()


# --- The test button, against the sandbox -------------------------------------------------------


def _test(admin: Client, connection: Connection) -> str:
    response = admin.post(f"/config/connections/{connection.pk}/test/", headers=HX)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize(
    ("vendor", "words", "secret"),
    [
        (
            "harvest",
            "Harvest account Concord Sandbox (concord-sandbox.harvestapp.com), active.",
            HARVEST_TOKEN,
        ),
        ("xero", "Xero organisation", XERO_SECRET),
        (
            "salesforce",
            "Salesforce answered the query: the integration user sees",
            SALESFORCE_SECRET,
        ),
    ],
)
def test_the_test_button_makes_one_real_read_and_shows_the_answer(
    admin: Client,
    sandbox: Sandbox,
    sandbox_connection: Callable[..., Connection],
    vendor: str,
    words: str,
    secret: str,
) -> None:
    connection = sandbox_connection(vendor)
    text = _test(admin, connection)
    assert "It works." in text
    assert words in text
    assert "<dt>Status</dt><dd>200</dd>" in text
    assert " ms for the read" in text
    assert secret not in text
    (event,) = AuditEvent.objects.filter(object_type="connection", action="test")
    assert event.actor_label == "ada"
    assert event.changes["outcome"] == "ok"
    assert event.changes["status"] == 200
    assert secret not in str(event.changes)
    attempt = SyncAttempt.objects.filter(connection=connection, operation__startswith="test:").get()
    assert attempt.outcome == "success"
    assert event.changes["latency_ms"] == attempt.latency_ms
    # The earlier tests are listed with the answer.
    assert "Earlier tests" in text
    assert "ada" in text


def test_a_refused_test_shows_the_vendors_words_and_no_secret(
    admin: Client, sandbox: Sandbox, sandbox_connection: Callable[..., Connection]
) -> None:
    connection = sandbox_connection(
        "harvest", credentials={"access_token": "revoked-token-123", "account_id": "100001"}
    )
    text = _test(admin, connection)
    assert "It failed." in text
    assert "The vendor answered 401: Harvest authentication failed." in text
    assert "The vendor said" in text
    assert "revoked-token-123" not in text
    event = AuditEvent.objects.get(object_type="connection", action="test")
    assert event.changes["outcome"] == "failed"
    assert event.changes["status"] == 401
    assert "revoked-token-123" not in str(event.changes)

    # The connection page lists it, and without JavaScript the button posts and comes back.
    plain = admin.post(f"/config/connections/{connection.pk}/test/")
    assert plain.status_code == 302
    page = admin.get(plain["Location"]).content.decode()
    assert f"Test of {connection.name}: The vendor answered 401" in page
    assert page.count("Harvest authentication failed") >= 2


def test_a_test_with_credentials_missing_says_which_and_sends_nothing(admin: Client) -> None:
    connection = make_connection(credentials={})
    text = _test(admin, connection)
    assert "It failed." in text
    assert "connection credentials incomplete: client_id missing" in text
    assert not SyncAttempt.objects.filter(connection=connection).exists()
    assert AuditEvent.objects.get(action="test").changes["outcome"] == "failed"
