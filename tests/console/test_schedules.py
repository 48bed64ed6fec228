"""Schedules: each connection polled by a periodic task of its own (made with the connection,
kept when it is enabled), beat's poll-all left with only the connections that have none (no
connection polled twice), an admin's change of interval and pause validated, audited and kept
by beat when it restarts, the last and next runs on the page, and stale polls judged by each
connection's own interval; integration admins only."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from config.beat import beat_entries
from config.celery import app as celery_app
from integrations import tasks  # noqa: F401 - registers the task names with the app
from integrations.models import AuditEvent, Connection, PollCursor
from integrations.roles import FINANCE, INTEGRATION_ADMIN, VIEWER
from integrations.selectors import poll_health, poll_stale_q
from integrations.services.connections import connection_update
from integrations.services.schedules import (
    POLL_CONNECTION_TASK,
    RECONCILE_CONNECTION_TASK,
    Seen,
    connection_schedules_ensure,
    poll_staleness,
    schedule_next_run,
    schedule_update,
)
from integrations.sync import ring
from integrations.sync.poll_schedules import polling_kick_off_unscheduled
from tests.factories import UserFactory, make_connection

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}


def _own(connection: Connection) -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(
        name=f"poll connection {connection.pk}"
    )


def _reconciles(connection: Connection) -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(
        name=f"reconcile connection {connection.pk}"
    )


def _system_rows() -> None:
    """The code's schedule stored as beat's scheduler stores it when it starts (its entries,
    row by row: a scheduler object itself closes the test's database connection when it
    syncs)."""
    for name, entry in beat_entries(celery_app.conf.beat_schedule).items():
        ModelEntry.from_entry(name, app=celery_app, **entry)


@pytest.fixture
def admin() -> Client:
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    return client


# --- Each connection's own polling task ---------------------------------------------------------


def test_a_new_connection_gets_its_own_polling_task() -> None:
    connection = make_connection()
    task = _own(connection)
    assert task.task == POLL_CONNECTION_TASK == ring.POLL_CONNECTION
    assert POLL_CONNECTION_TASK in celery_app.tasks
    assert task.args == f"[{connection.pk}]"
    assert (task.interval.every, task.interval.period) == (120, IntervalSchedule.SECONDS)
    assert task.expire_seconds == 120  # a lagging worker runs the latest poll, not a pile
    assert task.enabled
    assert task.description == f"Polls {connection.name} (Xero) for changes."
    (made,) = AuditEvent.objects.filter(
        object_type="periodictask", action="create", object_id=str(task.pk)
    )
    assert made.changes["connection"] == [None, connection.pk]


def test_the_task_is_kept_when_the_connection_is_enabled_and_follows_its_name() -> None:
    connection = make_connection(enabled=False)
    schedule_update(task=_own(connection), actor=None, enabled=False, interval_s=600)
    connection_update(connection=connection, enabled=True, name="Xero (renamed)")
    task = _own(connection)
    # A person's pause and interval stand; only the description follows the connection.
    assert (task.enabled, task.interval.every) == (False, 600)
    assert task.description == "Polls Xero (renamed) (Xero) for changes."
    task.delete()
    connection_update(connection=connection, enabled=True)
    assert _own(connection).enabled


def test_migrate_gives_connections_made_before_their_own_task() -> None:
    old = Connection(
        name="Legacy ERP", role="erp", vendor="xero", base_url="https://api.xero.com/api.xro/2.0"
    )
    old.save()
    assert connection_schedules_ensure() == 2  # an ERP connection: polling and reconciliation
    assert _own(old).enabled
    assert _reconciles(old).enabled
    assert connection_schedules_ensure() == 0


def test_poll_all_polls_only_the_enabled_connections_without_a_task_of_their_own(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    sent: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        ring.current_app, "send_task", lambda name, args=(), **kw: sent.append((name, args))
    )
    own = make_connection(name="Own schedule")
    paused = make_connection(name="Own schedule, paused")
    schedule_update(task=_own(paused), actor=None, enabled=False)
    legacy = Connection(
        name="No schedule", role="psa", vendor="harvest", base_url="https://h.example/v2"
    )
    legacy.save()
    off = Connection(
        name="Disabled",
        role="psa",
        vendor="harvest",
        base_url="https://h.example/v2",
        enabled=False,
    )
    off.save()
    with django_capture_on_commit_callbacks(execute=True):
        assert polling_kick_off_unscheduled() == 1
    assert sent == [(ring.POLL_CONNECTION, (legacy.pk,))]
    assert own.pk not in {args[0] for _, args in sent}


# --- A person's change ---------------------------------------------------------------------------


def test_an_interval_change_is_validated_audited_and_brings_its_expiry() -> None:
    task = _own(make_connection())
    with pytest.raises(ValidationError, match="every 10 seconds at the most often"):
        schedule_update(task=task, actor=None, interval_s=5)
    with pytest.raises(ValidationError, match="not every 700000 s"):
        schedule_update(task=task, actor=None, interval_s=700_000)
    user = UserFactory.create(username="ada")
    changed = schedule_update(task=task, actor=user, interval_s=300, enabled=False)
    assert (changed.interval.every, changed.expire_seconds, changed.enabled) == (300, 300, False)
    event = AuditEvent.objects.filter(object_type="periodictask", action="update").get()
    assert event.actor_label == "ada"
    assert event.changes == {"interval": ["120 s", "300 s"], "enabled": [True, False]}
    # Nothing to change: nothing audited.
    schedule_update(task=changed, actor=user, interval_s=300, enabled=False)
    assert AuditEvent.objects.filter(object_type="periodictask", action="update").count() == 1


def test_the_code_s_short_interval_may_stay_while_the_task_is_paused() -> None:
    _system_rows()
    sweeper = PeriodicTask.objects.get(name="sweep-outbox")
    paused = schedule_update(task=sweeper, actor=None, interval_s=5, enabled=False)
    assert (paused.interval.every, paused.enabled) == (5, False)


def test_a_calendar_task_has_no_interval_to_change() -> None:
    crontab = CrontabSchedule.objects.create(minute="0", hour="4")
    task = PeriodicTask.objects.create(
        name="nightly", task="celery.backend_cleanup", crontab=crontab
    )
    with pytest.raises(ValidationError, match="calendar schedule"):
        schedule_update(task=task, actor=None, interval_s=60)
    assert schedule_next_run(task, now=timezone.now()) is not None


def test_a_change_made_meanwhile_by_someone_else_is_refused_in_words() -> None:
    task = _own(make_connection())
    schedule_update(task=task, actor=UserFactory.create(username="bob"), interval_s=600)
    with pytest.raises(ValidationError, match=r"bob .* changed this schedule after you opened it"):
        schedule_update(task=task, actor=None, interval_s=30, seen=Seen(120.0, True))
    assert _own(Connection.objects.get()).interval.every == 600


def test_beat_keeps_an_interval_a_person_set_and_stores_the_code_s_expiries() -> None:
    _system_rows()
    rows = {t.name: t for t in PeriodicTask.objects.select_related("interval")}
    # django-celery-beat reads only expire_seconds; the code's `expires` is stored as that.
    assert rows["sweep-outbox"].expire_seconds == 5
    assert rows["poll-all"].expire_seconds == 120
    schedule_update(task=rows["poll-all"], actor=None, interval_s=600)
    _system_rows()  # beat starts again
    poll_all = PeriodicTask.objects.select_related("interval").get(name="poll-all")
    assert (poll_all.interval.every, poll_all.expire_seconds) == (600, 600)
    billing = PeriodicTask.objects.select_related("interval").get(name="billing-run")
    assert billing.interval.every == 60  # the code's, as no person changed it


def test_the_next_run_is_the_last_run_plus_the_interval() -> None:
    task = _own(make_connection())
    now = timezone.now()
    task.last_run_at = now - timedelta(seconds=30)
    task.save()
    assert schedule_next_run(task, now=now) == now + timedelta(seconds=90)
    task.enabled = False
    assert schedule_next_run(task, now=now) is None


# --- Stale polls by each connection's own interval -----------------------------------------------


def test_a_poll_is_stale_after_three_of_its_own_intervals_and_never_while_paused() -> None:
    slow, fast, paused = (make_connection(name=n) for n in ("slow", "fast", "paused"))
    schedule_update(task=_own(slow), actor=None, interval_s=600)  # stale after 30 minutes
    schedule_update(task=_own(paused), actor=None, enabled=False)
    seven_minutes_ago = timezone.now() - timedelta(minutes=7)
    for connection in (slow, fast, paused):
        PollCursor.objects.create(
            connection=connection, object_type="Invoices", last_success_at=seven_minutes_ago
        )
    stale = PollCursor.objects.filter(poll_stale_q())
    assert list(stale.values_list("connection__name", flat=True)) == ["fast"]
    staleness = poll_staleness()
    assert staleness.after_s(slow.pk) == 1800
    assert staleness.after_s(paused.pk) is None
    assert poll_health(slow.cursors.all(), staleness=staleness).state == "ok"
    assert poll_health(fast.cursors.all(), staleness=staleness).state == "stale"
    assert poll_health(paused.cursors.all(), staleness=staleness).state == "ok"


# --- The page -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [FINANCE, VIEWER])
def test_a_user_without_the_admin_role_cannot_see_or_change_schedules(role: str) -> None:
    task = _own(make_connection())
    client = Client()
    client.force_login(UserFactory.create(role=role))
    assert client.get("/config/schedules/").status_code == 403
    assert client.get("/config/schedules/?format=csv").status_code == 403
    response = client.post(f"/config/schedules/{task.pk}/", {"interval_s": "30"})
    assert response.status_code == 403
    assert _own(Connection.objects.get()).interval.every == 120
    anonymous = Client().post(f"/config/schedules/{task.pk}/", {"interval_s": "30"})
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/login/")


def test_the_page_lists_every_periodic_task_with_its_last_and_next_run(admin: Client) -> None:
    _system_rows()
    connection = make_connection(name="Xero (new)")
    task = _own(connection)
    task.last_run_at = timezone.now() - timedelta(seconds=20)
    task.save()
    text = admin.get("/config/schedules/").content.decode()
    for name in ("sweep-outbox", "poll-all", "billing-run", f"poll connection {connection.pk}"):
        assert name in text
    assert "Polls Xero (new) (Xero)." in text
    assert "Reconciliation per connection" in text
    assert "not built yet" not in text
    assert f"reconcile connection {connection.pk}" in text
    row = text[text.index(f'id="schedule-{task.pk}"') :]
    row = row[: row.index("</tr>")]
    assert 'value="120"' in row
    assert "in 1 min 40 s" in row or "in 1 min 39 s" in row

    polling = admin.get("/config/schedules/?kind=polling", headers=HX).content.decode()
    assert f"poll connection {connection.pk}" in polling
    assert "sweep-outbox" not in polling
    mine = admin.get(f"/config/schedules/?connection={connection.pk}").content.decode()
    assert "2 periodic tasks" in mine  # its polling and its reconciliation

    body = b"".join(admin.get("/config/schedules/?format=csv").streaming_content).decode()  # type: ignore[attr-defined]
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(body))}
    assert rows[f"poll connection {connection.pk}"]["interval_s"] == "120"
    assert rows[f"poll connection {connection.pk}"]["connection"] == "Xero (new)"
    assert rows["sweep-outbox"]["interval_s"] == "5"


def test_an_admin_changes_a_row_in_place_and_sees_the_result(admin: Client) -> None:
    task = _own(make_connection())
    url = f"/config/schedules/{task.pk}/"
    seen = {"seen_interval_s": "120", "seen_enabled": "True"}
    refused = admin.post(url, {"interval_s": "5", "enabled": "on", **seen}, headers=HX)
    assert refused.status_code == 400
    text = refused.content.decode()
    assert text.strip().startswith(f'<tr id="schedule-{task.pk}"')
    assert "was not changed: Run it every 10 seconds at the most often" in text
    assert 'hx-swap-oob="true"' in text
    assert _own(Connection.objects.get()).interval.every == 120

    saved = admin.post(url, {"interval_s": "300", "enabled": "on", **seen}, headers=HX)
    assert saved.status_code == 200
    text = saved.content.decode()
    assert f"{task.name} now runs every 300 s (was 120 s)" in text
    assert 'value="300"' in text
    assert _own(Connection.objects.get()).interval.every == 300

    # Someone else changed it meanwhile: refused with their name, nothing overwritten.
    stale = admin.post(url, {"interval_s": "60", "enabled": "on", **seen}, headers=HX)
    assert stale.status_code == 400
    assert "ada (" in stale.content.decode()
    assert "changed this schedule after you opened it" in stale.content.decode()

    # Without JavaScript: a plain post, then the list with the result as a message.
    plain = admin.post(
        url,
        {
            "enabled": "",
            "seen_interval_s": "300",
            "seen_enabled": "True",
            "next": "/config/schedules/?kind=polling",
        },
    )
    assert plain.status_code == 302
    assert plain["Location"] == "/config/schedules/?kind=polling"
    assert "is paused" in admin.get(plain["Location"]).content.decode()
    assert not _own(Connection.objects.get()).enabled
    assert AuditEvent.objects.filter(object_type="periodictask", action="update").count() == 2


# --- Reconciliation per ERP connection ------------------------------------------------------------


def test_an_erp_connection_gets_an_hourly_reconciliation_task_and_a_psa_none() -> None:
    erp = make_connection()
    task = _reconciles(erp)
    assert task.task == RECONCILE_CONNECTION_TASK == "integrations.reconcile_connection"
    assert RECONCILE_CONNECTION_TASK in celery_app.tasks
    assert task.args == f"[{erp.pk}]"
    assert (task.interval.every, task.interval.period) == (3600, IntervalSchedule.SECONDS)
    assert task.expire_seconds == 3600
    assert task.enabled
    assert task.description == (
        f"Reconciles {erp.name} (Xero) with the PSA and Concord's billing, per project and month."
    )
    made = AuditEvent.objects.get(
        object_type="periodictask", action="create", object_id=str(task.pk)
    )
    assert made.changes["task"] == [None, RECONCILE_CONNECTION_TASK]
    psa = make_connection(
        name="Harvest", role="psa", vendor="harvest", base_url="https://api.harvestapp.com/v2"
    )
    assert not PeriodicTask.objects.filter(name=f"reconcile connection {psa.pk}").exists()
    # A person's pause and interval stand when the connection changes; the name follows it.
    schedule_update(task=task, actor=None, enabled=False, interval_s=7200)
    connection_update(connection=erp, name="Xero (renamed)")
    kept = _reconciles(erp)
    assert (kept.enabled, kept.interval.every) == (False, 7200)
    assert kept.description.startswith("Reconciles Xero (renamed) (Xero)")
    # Its own row is no polling row: poll-all and the staleness check leave it alone.
    assert poll_staleness().after_s(erp.pk) == 360  # by its polling row, not this one
    kept.delete()
    connection_update(connection=erp, enabled=True)
    assert _reconciles(erp).enabled


def test_the_page_lists_and_filters_the_reconciliation_rows(admin: Client) -> None:
    _system_rows()
    erp = make_connection(name="Xero (new)")
    task = _reconciles(erp)
    text = admin.get("/config/schedules/?kind=reconciliation", headers=HX).content.decode()
    assert f"reconcile connection {erp.pk}" in text
    assert "Reconciles Xero (new) (Xero) with the PSA and Concord&#x27;s billing" in text
    assert f"poll connection {erp.pk}" not in text
    assert "sweep-outbox" not in text
    polling = admin.get("/config/schedules/?kind=polling", headers=HX).content.decode()
    assert f"reconcile connection {erp.pk}" not in polling
    system = admin.get("/config/schedules/?kind=system", headers=HX).content.decode()
    assert "sweep-outbox" in system
    assert f"reconcile connection {erp.pk}" not in system
    saved = admin.post(
        f"/config/schedules/{task.pk}/",
        {"interval_s": "1800", "enabled": "on", "seen_interval_s": "3600", "seen_enabled": "True"},
        headers=HX,
    )
    assert saved.status_code == 200
    assert f"reconcile connection {erp.pk} now runs every 1800 s (was 3600 s)" in (
        saved.content.decode()
    )
    body = b"".join(admin.get("/config/schedules/?format=csv").streaming_content).decode()  # type: ignore[attr-defined]
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(body))}
    assert rows[f"reconcile connection {erp.pk}"]["connection"] == "Xero (new)"
    assert rows[f"reconcile connection {erp.pk}"]["interval_s"] == "1800"
