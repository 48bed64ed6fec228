"""Beat's periodic tasks (django-celery-beat's ``PeriodicTask`` rows) as integration admins see
and change them, and each connection's own polling task.

**Where a schedule comes from.** The system's periodic work is defined in code
(config/celery.py ``beat_schedule``) and stored in ``PeriodicTask`` rows when beat starts; beat
runs what the rows say. A person may change a row's interval and whether it runs
(``schedule_update``, audited). Beat's scheduler (config/beat.py) keeps an interval a person
set when it starts again, instead of putting the code's back (``schedule_intervals_set_by_people``).

**Polling per connection.** Every connection has a row of its own, ``poll connection <id>``,
that calls ``integrations.poll_connection`` with its id every ``POLL_INTERVAL_S`` until a person
changes it. The row is made when the connection is created, and made again if missing when it
is enabled (``connection_schedule_ensure``); a person pauses it on the schedules page. Beat's
``poll-all`` kick-off polls only the enabled connections that have no row of their own
(integrations/sync/poll_schedules.py), so no connection is polled by both: connections made
before these rows existed keep being polled by ``poll-all`` until migrate gives them theirs
(``connection_schedules_ensure``, integrations/apps.py).

**Reconciliation per ERP connection.** Every ERP connection also has ``reconcile connection
<id>``, calling ``integrations.reconcile_connection`` every ``RECONCILE_INTERVAL_S``
(integrations/workflows/reconciliation.py), made and kept like its polling row.

**When a poll counts as stale** follows its schedule: three of its intervals
(``poll_staleness``), and never while it is not scheduled at all (a paused row, a paused
``poll-all`` for the connections it polls), as for a disabled connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from integrations.models import AuditEvent, Connection, SystemRole
from integrations.services.audit import audit_record

Actor = AbstractBaseUser | AnonymousUser | None

# Polling runs every 120 s unless a person changes a connection's row (or poll-all's): webhooks
# carry the urgent changes, polls catch what webhooks missed or never offered.
POLL_INTERVAL_S = 120
# The task every per-connection row calls: the name is a contract with queued messages and beat
# rows (integrations/tasks.py, integrations/sync/ring.py POLL_CONNECTION; a test checks both).
POLL_CONNECTION_TASK = "integrations.poll_connection"
# Beat's kick-off for the connections that have no row of their own (config/celery.py).
POLL_ALL = "poll-all"
POLL_ROW_PREFIX = "poll connection "
_POLL_ROW = re.compile(rf"^{POLL_ROW_PREFIX}(\d+)$")

# Reconciliation runs hourly per ERP connection unless a person changes its row: a handful of
# set-based queries per run, and a gap found within the hour is soon enough for finance (its
# cases carry a day's SLA at the least).
RECONCILE_INTERVAL_S = 3600
# The task every reconciliation row calls (integrations/tasks.py): a contract, like the above.
RECONCILE_CONNECTION_TASK = "integrations.reconcile_connection"
RECONCILE_ROW_PREFIX = "reconcile connection "
_RECONCILE_ROW = re.compile(rf"^{RECONCILE_ROW_PREFIX}(\d+)$")

# What a person may set. 10 s: below that a poll (a token, one page per object) is hardly done
# before the next is due; a week: a schedule longer than that is a schedule paused by mistake.
MIN_INTERVAL_S = 10
MAX_INTERVAL_S = 7 * 24 * 3600
# A poll is stale after this many of its intervals without a success (one failed poll is noise,
# three in a row a broken connection); CONCORD_POLL_STALE_AFTER_S overrides it (tests).
STALE_AFTER_INTERVALS = 3

_PERIOD_S = {
    IntervalSchedule.DAYS: 86400,
    IntervalSchedule.HOURS: 3600,
    IntervalSchedule.MINUTES: 60,
    IntervalSchedule.SECONDS: 1,
    IntervalSchedule.MICROSECONDS: 1e-6,
}


def poll_task_name(connection_id: int) -> str:
    return f"{POLL_ROW_PREFIX}{connection_id}"


def polled_connection_id(task_name: str) -> int | None:
    """The connection a ``poll connection <id>`` row polls; None for any other row."""
    match = _POLL_ROW.match(task_name)
    return int(match.group(1)) if match else None


def reconcile_task_name(connection_id: int) -> str:
    return f"{RECONCILE_ROW_PREFIX}{connection_id}"


def reconciled_connection_id(task_name: str) -> int | None:
    """The connection a ``reconcile connection <id>`` row reconciles; None for any other row."""
    match = _RECONCILE_ROW.match(task_name)
    return int(match.group(1)) if match else None


def task_connection_id(task_name: str) -> int | None:
    """The connection a connection's own row (polling or reconciliation) works for."""
    return polled_connection_id(task_name) or reconciled_connection_id(task_name)


def interval_seconds(task: PeriodicTask) -> float | None:
    """The row's interval in seconds; None when it runs by another kind of schedule (crontab,
    solar, clocked)."""
    interval = task.interval
    if interval is None:
        return None
    return float(interval.every) * _PERIOD_S.get(interval.period, 1)


def _interval_row(seconds: int) -> IntervalSchedule:
    """An interval of ``seconds``: rows are shared by every task on the same interval, so one
    is looked up (or made), never changed in place."""
    found = IntervalSchedule.objects.filter(every=seconds, period=IntervalSchedule.SECONDS).first()
    return found or IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)


def _seconds_text(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:g} s"


# --- Each connection's polling row -------------------------------------------------------------


def _poll_description(connection: Connection) -> str:
    return f"Polls {connection.name} ({connection.get_vendor_display()}) for changes."


def _reconcile_description(connection: Connection) -> str:
    return (
        f"Reconciles {connection.name} ({connection.get_vendor_display()}) with the PSA and "
        "Concord's billing, per project and month."
    )


def _row_ensure(
    *,
    name: str,
    task_name: str,
    interval_s: int,
    connection: Connection,
    description: str,
    actor: Actor,
) -> PeriodicTask:
    """A connection's own row, made if missing (expiring within its own period, so a lagging
    worker runs the latest and not a pile of old ones). A row that exists keeps its interval
    and whether it runs, as a person set them; only its description follows the connection."""
    task = PeriodicTask.objects.select_related("interval").filter(name=name).first()
    if task is None:
        task = PeriodicTask(
            name=name,
            task=task_name,
            interval=_interval_row(interval_s),
            args=f"[{connection.pk}]",
            expire_seconds=interval_s,
            enabled=True,
            description=description,
        )
        task.save()
        audit_record(
            actor=actor,
            action=AuditEvent.Action.CREATE,
            instance=task,
            changes={
                "task": [None, task_name],
                "connection": [None, connection.pk],
                "interval": [None, _seconds_text(interval_s)],
                "enabled": [None, True],
            },
        )
        return task
    if task.description != description:
        task.description = description
        task.save(update_fields=["description"])
    return task


@transaction.atomic
def connection_schedule_ensure(*, connection: Connection, actor: Actor) -> PeriodicTask:
    """The connection's own polling row (every ``POLL_INTERVAL_S``) and, for an ERP connection,
    its reconciliation row (every ``RECONCILE_INTERVAL_S``), each made if missing and kept as a
    person set it. Returns the polling row."""
    if connection.role == SystemRole.ERP:
        _row_ensure(
            name=reconcile_task_name(connection.pk),
            task_name=RECONCILE_CONNECTION_TASK,
            interval_s=RECONCILE_INTERVAL_S,
            connection=connection,
            description=_reconcile_description(connection),
            actor=actor,
        )
    return _row_ensure(
        name=poll_task_name(connection.pk),
        task_name=POLL_CONNECTION_TASK,
        interval_s=POLL_INTERVAL_S,
        connection=connection,
        description=_poll_description(connection),
        actor=actor,
    )


def connection_schedules_ensure() -> int:
    """Every connection's own rows (polling; reconciliation for ERP connections), where missing
    (after migrate: connections made before the rows existed). Returns how many rows were
    made."""
    names = set(
        PeriodicTask.objects.filter(
            Q(name__startswith=POLL_ROW_PREFIX) | Q(name__startswith=RECONCILE_ROW_PREFIX)
        ).values_list("name", flat=True)
    )
    made = 0
    # Without the credentials: migrate must not need the key that decrypts them.
    for connection in Connection.objects.only("pk", "name", "role", "vendor").order_by("pk"):
        wanted = {poll_task_name(connection.pk)}
        if connection.role == SystemRole.ERP:
            wanted.add(reconcile_task_name(connection.pk))
        missing = wanted - names
        if missing:
            connection_schedule_ensure(connection=connection, actor=None)
            made += len(missing)
    return made


def connections_with_own_schedule() -> set[int]:
    """The connections that have a polling row of their own, running or paused: beat's poll-all
    leaves them alone."""
    names = PeriodicTask.objects.filter(name__startswith=POLL_ROW_PREFIX).values_list(
        "name", flat=True
    )
    return {pk for pk in map(polled_connection_id, names) if pk is not None}


# --- A person's change -------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What the person saw when they chose the change: a change made meanwhile by someone else
    is refused rather than silently overwritten."""

    interval_s: float | None
    enabled: bool


def _last_change_by(task: PeriodicTask) -> str:
    event = (
        AuditEvent.objects.filter(object_type="periodictask", object_id=str(task.pk))
        .order_by("-at", "-id")
        .first()
    )
    if event is None:
        return "Someone"
    return f"{event.actor_label} ({event.at:%Y-%m-%d %H:%M:%S} UTC)"


@transaction.atomic
def schedule_update(
    *,
    task: PeriodicTask,
    actor: Actor,
    interval_s: int | None = None,
    enabled: bool | None = None,
    seen: Seen | None = None,
) -> PeriodicTask:
    """Change how often a periodic task runs and whether it does. ``None`` leaves a value as
    it is. A new interval is at least ``MIN_INTERVAL_S`` (an unchanged one may be shorter: the
    outbox sweeper's 5 s is the code's own), and only a task on an interval has one to change.
    An expiry goes with the interval: the task's message expires within its own period, as the
    code's entries do. Audited with the old and new values; a change made meanwhile by someone
    else (``seen``) is refused in words."""
    locked = (
        PeriodicTask.objects.select_for_update(of=("self",))
        .select_related("interval")
        .get(pk=task.pk)
    )
    before_s = interval_seconds(locked)
    if seen is not None and (seen.interval_s != before_s or seen.enabled != locked.enabled):
        raise ValidationError(
            f"{_last_change_by(locked)} changed this schedule after you opened it: it now runs "
            f"{_every_words(before_s)} and is {'on' if locked.enabled else 'paused'}. "
            "Look again and make your change once more if it still stands."
        )
    changes: dict[str, list[Any]] = {}
    if interval_s is not None and interval_s != before_s:
        if before_s is None:
            raise ValidationError(
                {"interval_s": "This task runs on a calendar schedule, not an interval."}
            )
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ValidationError(
                {
                    "interval_s": f"Run it every {MIN_INTERVAL_S} seconds at the most often and "
                    f"every {MAX_INTERVAL_S // 86400} days at the least; not every {interval_s} s."
                }
            )
        locked.interval = _interval_row(interval_s)
        if locked.expires is None:
            locked.expire_seconds = interval_s
        changes["interval"] = [_seconds_text(before_s), _seconds_text(interval_s)]
    if enabled is not None and enabled != locked.enabled:
        locked.enabled = enabled
        changes["enabled"] = [not enabled, enabled]
    if not changes:
        return locked
    locked.save()
    audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=locked, changes=changes)
    return locked


def _every_words(seconds: float | None) -> str:
    return "on a calendar schedule" if seconds is None else f"every {seconds:g} s"


def schedule_intervals_set_by_people(names: Iterable[str]) -> dict[str, float]:
    """Of these rows, those whose interval a person changed (an audited update naming the
    interval), with the interval they run on now: beat keeps them when it starts again."""
    rows = {
        str(task.pk): task
        for task in PeriodicTask.objects.filter(name__in=list(names)).select_related("interval")
    }
    if not rows:
        return {}
    edited = set(
        AuditEvent.objects.filter(
            object_type="periodictask",
            object_id__in=list(rows),
            action=AuditEvent.Action.UPDATE,
            changes__has_key="interval",
        ).values_list("object_id", flat=True)
    )
    kept = {}
    for pk in edited:
        seconds = interval_seconds(rows[pk])
        if seconds is not None:
            kept[rows[pk].name] = seconds
    return kept


# --- When a task runs next ---------------------------------------------------------------------


def schedule_next_run(task: PeriodicTask, *, now: datetime) -> datetime | None:
    """When beat sends the task next: its last run plus its interval (beat counts a task that
    never ran from its last change), or the next calendar time for a crontab; None when it is
    paused or beat cannot say (solar, clocked). A time in the past means beat is late, or not
    running."""
    if not task.enabled:
        return None
    seconds = interval_seconds(task)
    last = task.last_run_at or task.date_changed
    if seconds is not None:
        return last + timedelta(seconds=seconds)
    if task.crontab is not None:
        schedule = task.crontab.schedule
        return now + schedule.remaining_estimate(last)
    return None


# --- When a poll is stale ----------------------------------------------------------------------


@dataclass(frozen=True)
class PollStaleness:
    """How long each connection's polls may go without a success before they are stale: three
    of its polling intervals; None: it is not scheduled, so it cannot be late."""

    default_after_s: float | None  # connections polled by poll-all
    by_connection: dict[int, float | None] = field(default_factory=dict)

    def after_s(self, connection_id: int) -> float | None:
        if connection_id in self.by_connection:
            return self.by_connection[connection_id]
        return self.default_after_s


def _stale_after(seconds: float | None, enabled: bool) -> float | None:
    override = getattr(settings, "CONCORD_POLL_STALE_AFTER_S", None)
    if not enabled or seconds is None:
        return None
    return float(override) if override is not None else STALE_AFTER_INTERVALS * seconds


def poll_staleness() -> PollStaleness:
    """Read from the polling rows in one query. Before beat has stored poll-all (a fresh
    database), its code default stands."""
    tasks = PeriodicTask.objects.filter(Q(name__startswith=POLL_ROW_PREFIX) | Q(name=POLL_ALL))
    default = _stale_after(POLL_INTERVAL_S, True)
    by_connection: dict[int, float | None] = {}
    for task in tasks.select_related("interval"):
        after = _stale_after(interval_seconds(task), task.enabled)
        if task.name == POLL_ALL:
            default = after
            continue
        pk = polled_connection_id(task.name)
        if pk is not None:
            by_connection[pk] = after
    return PollStaleness(default_after_s=default, by_connection=by_connection)
