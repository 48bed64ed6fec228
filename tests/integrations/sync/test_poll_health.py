"""A poll that raises is recorded against its connection and shown: on the integration admin
page and in the API (last error, failing since, cursor age); a cursor older than its SLA is a
case for the integration admins, which closes when the poll succeeds again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, PollCursor, TimeEntry
from integrations.roles import INTEGRATION_ADMIN
from integrations.sync.polling import poll_connection, poll_stale_check
from tests.factories import UserFactory
from tests.integrations.conftest import HARVEST_TOKEN, Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def harvest(make_connection: Callable[..., Connection], sandbox: Sandbox) -> Connection:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    connection = make_connection("harvest", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=connection)
    return connection


def _break_credentials(connection: Connection) -> None:
    connection.credentials = {"access_token": "revoked-token", "account_id": "100001"}
    connection.save()


def _mend_credentials(connection: Connection) -> None:
    connection.credentials = {"access_token": HARVEST_TOKEN, "account_id": "100001"}
    connection.save()


def test_a_broken_poll_shows_on_the_admin_page_and_in_the_api(
    harvest: Connection, api_client_as: Callable[..., APIClient]
) -> None:
    poll_connection(connection_id=harvest.pk)  # a healthy first poll: cursors with a success
    _break_credentials(harvest)

    reports = poll_connection(connection_id=harvest.pk)

    # Every object was tried (one failure does not skip the rest) and each one says why.
    assert set(reports) >= {"clients", "users", "projects", "time_entries"}
    assert all("Harvest authentication failed" in r.error for r in reports.values())
    cursor = PollCursor.objects.get(connection=harvest, object_type="time_entries")
    assert cursor.failing_since is not None
    assert cursor.last_success_at is not None
    assert "Harvest authentication failed" in cursor.last_error
    assert "access token provided is expired" in cursor.last_error  # the vendor's words

    page = Client()
    page.force_login(UserFactory.create(role=INTEGRATION_ADMIN))
    html = page.get("/integration-admin/").content.decode()
    assert "poll failing" in html
    assert "failing since" in html
    assert "Harvest authentication failed" in html

    body = api_client_as(INTEGRATION_ADMIN).get(f"/api/v1/connections/{harvest.pk}/").json()
    poll = body["health"]["poll"]
    assert poll["state"] == "failing"
    assert poll["failing_since"] is not None
    assert "Harvest authentication failed" in poll["last_error"]
    assert poll["cursor_age_s"] >= 0
    entries = next(o for o in poll["objects"] if o["object_type"] == "time_entries")
    assert entries["failing_since"] is not None
    assert entries["stale"] is False


def test_failing_since_is_the_first_failure_and_a_success_clears_it(harvest: Connection) -> None:
    _break_credentials(harvest)
    poll_connection(connection_id=harvest.pk)
    cursor = PollCursor.objects.get(connection=harvest, object_type="clients")
    first = cursor.failing_since
    assert first is not None
    assert cursor.last_success_at is None

    poll_connection(connection_id=harvest.pk)
    cursor.refresh_from_db()
    assert cursor.failing_since == first
    assert cursor.last_failure_at is not None
    assert cursor.last_failure_at > first

    _mend_credentials(harvest)
    reports = poll_connection(connection_id=harvest.pk)
    assert not any(r.error for r in reports.values())
    cursor.refresh_from_db()
    assert cursor.failing_since is None
    assert cursor.last_error == ""
    assert cursor.last_success_at is not None
    assert TimeEntry.objects.exists()


def test_a_cursor_past_its_sla_is_a_case_that_closes_when_polls_succeed(
    harvest: Connection, settings: pytest.FixtureRequest
) -> None:
    settings.CONCORD_POLL_STALE_AFTER_S = 360  # type: ignore[attr-defined]
    _break_credentials(harvest)
    poll_connection(connection_id=harvest.pk)
    assert poll_stale_check() == {"stale": 0, "connections": 0}  # failing, but within the SLA

    # Seven minutes later (three polling intervals have gone by): stale.
    PollCursor.objects.filter(connection=harvest).update(
        last_polled_at=timezone.now() - timedelta(minutes=7)
    )
    result = poll_stale_check()
    cursors = PollCursor.objects.filter(connection=harvest).count()
    assert result == {"stale": cursors, "connections": 1}
    case = ExceptionCase.objects.get(case_type="poll_stale", status="open")
    assert case.queue == "integration_admin"
    assert case.connection_id == harvest.pk
    assert harvest.name in case.message
    assert "not read successfully for more than 6 minutes" in case.message
    assert case.blocked_records.count() == cursors
    labels = set(case.blocked_records.values_list("label", flat=True))
    assert any(label.startswith("time_entries: Harvest authentication failed") for label in labels)

    poll_stale_check()  # checked again: the same case, nothing added twice
    assert ExceptionCase.objects.filter(case_type="poll_stale").count() == 1
    case.refresh_from_db()
    assert case.blocked_records.count() == cursors

    _mend_credentials(harvest)
    poll_connection(connection_id=harvest.pk)
    case.refresh_from_db()
    assert case.status == "resolved"
    assert poll_stale_check() == {"stale": 0, "connections": 0}
