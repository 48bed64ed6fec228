"""Credentials are encrypted at rest and never shown back: not by the API, the admin or the logs."""

from __future__ import annotations

import logging

import pytest
from django.db import connection as db
from django.test import Client
from rest_framework.test import APIClient

from integrations import models as m
from integrations.roles import INTEGRATION_ADMIN
from tests.factories import UserFactory, make_connection

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-value-for-tests"
NEW_SECRET = "rotated-secret-9f8e7d"


def test_credentials_are_encrypted_in_the_database() -> None:
    connection = make_connection()
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT credentials FROM integrations_connection WHERE id = %s", [connection.pk]
        )
        (raw,) = cursor.fetchone()
    assert SECRET not in raw
    assert "client_secret" not in raw
    assert m.Connection.objects.get(pk=connection.pk).credentials["client_secret"] == SECRET


def test_api_never_returns_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = UserFactory.create(role=INTEGRATION_ADMIN)
    client = APIClient()
    client.force_authenticate(admin)

    created = client.post(
        "/api/v1/connections/",
        {
            "name": "Harvest",
            "role": "psa",
            "vendor": "harvest",
            "base_url": "http://127.0.0.1:8100/harvest/v2",
            "credentials": {"access_token": SECRET, "account_id": "12345"},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["credential_keys"] == ["access_token", "account_id"]
    pk = created.json()["id"]

    patched = client.patch(
        f"/api/v1/connections/{pk}/",
        {"credentials": {"access_token": NEW_SECRET, "account_id": None}},
        format="json",
    )
    assert patched.status_code == 200, patched.content
    assert patched.json()["credential_keys"] == ["access_token"]
    assert m.Connection.objects.get(pk=pk).credentials == {"access_token": NEW_SECRET}

    for response in (
        created,
        patched,
        client.get("/api/v1/connections/"),
        client.get(f"/api/v1/connections/{pk}/"),
        client.get("/api/v1/schema/"),
    ):
        assert SECRET.encode() not in response.content
        assert NEW_SECRET.encode() not in response.content
    assert SECRET not in caplog.text
    assert NEW_SECRET not in caplog.text
    assert "credential" in caplog.text  # the writes were logged, just not their values

    audit = client.get(f"/api/v1/audit-events/?object_type=connection&object_id={pk}")
    events = audit.json()["results"]
    assert [e["action"] for e in events] == ["update", "create"]
    assert events[0]["actor_label"] == admin.username
    assert events[0]["changes"]["credentials_replaced"] == ["access_token"]
    assert events[0]["changes"]["credential_keys"] == [
        ["access_token", "account_id"],
        ["access_token"],
    ]
    assert SECRET.encode() not in audit.content
    assert NEW_SECRET.encode() not in audit.content


def test_admin_stores_new_credentials_without_showing_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    connection = make_connection()
    admin = UserFactory.create(role=INTEGRATION_ADMIN, is_staff=True)
    client = Client()
    client.force_login(admin)
    url = f"/admin/integrations/connection/{connection.pk}/change/"

    page = client.get(url)
    assert page.status_code == 200
    assert SECRET.encode() not in page.content
    assert b"client_secret" in page.content  # the key names are shown

    response = client.post(
        url,
        {
            "name": connection.name,
            "role": "erp",
            "vendor": "xero",
            "base_url": connection.base_url,
            "rate_limit_per_minute": 60,
            "max_concurrency": 5,
            "enabled": "on",
            "new_credentials": f'{{"client_secret": "{NEW_SECRET}"}}',
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    connection.refresh_from_db()
    assert connection.credentials == {"client_id": "cid", "client_secret": NEW_SECRET}
    assert NEW_SECRET.encode() not in client.get(url).content
    assert NEW_SECRET not in caplog.text


def test_admin_refuses_malformed_credentials_with_a_clear_message() -> None:
    connection = make_connection()
    admin = UserFactory.create(role=INTEGRATION_ADMIN, is_staff=True)
    client = Client()
    client.force_login(admin)
    response = client.post(
        f"/admin/integrations/connection/{connection.pk}/change/",
        {
            "name": connection.name,
            "role": "erp",
            "vendor": "xero",
            "base_url": connection.base_url,
            "rate_limit_per_minute": 60,
            "max_concurrency": 5,
            "new_credentials": "{not json",
        },
    )
    assert response.status_code == 200
    assert b"Not valid JSON" in response.content
    connection.refresh_from_db()
    assert connection.credentials["client_secret"] == SECRET


def test_api_refuses_a_vendor_in_the_wrong_role() -> None:
    client = APIClient()
    client.force_authenticate(UserFactory.create(role=INTEGRATION_ADMIN))
    response = client.post(
        "/api/v1/connections/",
        {"name": "x", "role": "crm", "vendor": "xero", "base_url": "http://127.0.0.1:1/"},
        format="json",
    )
    assert response.status_code == 400
    assert "plays the erp role" in response.content.decode()


def test_api_refuses_a_role_change_that_does_not_fit_the_vendor() -> None:
    # The service's check (also the admin's) answers with the same 400 the serializer once did.
    connection = make_connection()
    client = APIClient()
    client.force_authenticate(UserFactory.create(role=INTEGRATION_ADMIN))
    response = client.patch(f"/api/v1/connections/{connection.pk}/", {"role": "psa"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"role": ["A xero connection plays the erp role, not psa."]}
    connection.refresh_from_db()
    assert connection.role == "erp"
    assert not m.AuditEvent.objects.filter(object_type="connection", action="update").exists()


def test_admin_assumes_https_for_a_base_url_without_a_scheme() -> None:
    admin = UserFactory.create(role=INTEGRATION_ADMIN, is_staff=True)
    client = Client()
    client.force_login(admin)
    assert client.get("/admin/integrations/connection/add/").status_code == 200
    response = client.post(
        "/admin/integrations/connection/add/",
        {
            "name": "Harvest",
            "role": "psa",
            "vendor": "harvest",
            "base_url": "api.harvestapp.com/v2",
            "rate_limit_per_minute": 100,
            "max_concurrency": 5,
            "enabled": "on",
            "new_credentials": '{"access_token": "t"}',
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    created = m.Connection.objects.get(name="Harvest")
    assert created.base_url == "https://api.harvestapp.com/v2"
    assert created.credentials == {"access_token": "t"}
