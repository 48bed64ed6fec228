"""Reads behind the REST API: one function per list, returning the rows with what they show
loaded up front (the API's filter backend, ordering and paging apply on top of them)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from exceptions.models import BlockedRecord
from integrations import models as m


def record_list(*, model: type[m.CanonicalRecord]) -> QuerySet[m.CanonicalRecord]:
    return model._default_manager.order_by("pk")


def connection_list() -> QuerySet[m.Connection]:
    """With what their health shows (``poll_health``): the breaker's row and the cursors."""
    return m.Connection.objects.select_related("health").prefetch_related("cursors").order_by("pk")


def cross_reference_list() -> QuerySet[m.CrossReference]:
    return m.CrossReference.objects.select_related("content_type").order_by("pk")


def audit_event_list() -> QuerySet[m.AuditEvent]:
    """Newest first."""
    return m.AuditEvent.objects.select_related("actor").order_by("-at", "-id")


def ownership_rule_list() -> QuerySet[m.OwnershipRule]:
    return m.OwnershipRule.objects.order_by("object_type", "field")


def outbox_message_list() -> QuerySet[m.OutboxMessage]:
    """Newest first."""
    return m.OutboxMessage.objects.select_related("content_type").order_by("-id")


def inbound_message_list() -> QuerySet[m.InboundMessage]:
    """Newest first."""
    return m.InboundMessage.objects.order_by("-id")


def sync_attempt_list() -> QuerySet[m.SyncAttempt]:
    """Newest first."""
    return m.SyncAttempt.objects.order_by("-started_at", "-id")


def outbox_parked(
    *, ids: list[int] | None = None, exception_case_id: int | None = None, limit: int
) -> list[m.OutboxMessage]:
    """Parked outbox rows among `ids`, or parked by one exception case; oldest first."""
    rows = m.OutboxMessage.objects.filter(state=m.OutboxMessage.State.PARKED)
    if ids:
        rows = rows.filter(pk__in=ids)
    if exception_case_id:
        rows = rows.filter(exception_case_id=exception_case_id)
    return list(rows.order_by("id")[:limit])


def inbound_held(
    *, ids: list[int] | None = None, exception_case_id: int | None = None, limit: int
) -> list[m.InboundMessage]:
    """Inbound messages by id, or those an exception case holds up (a mapping case names the
    raw messages it could not map); oldest first."""
    rows = m.InboundMessage.objects.all()
    if ids:
        rows = rows.filter(pk__in=ids)
    if exception_case_id:
        held = BlockedRecord.objects.filter(
            case_id=exception_case_id, record_type="inboundmessage"
        ).values("record_id")
        rows = rows.filter(pk__in=held)
    return list(rows.order_by("id")[:limit])


# -- poll health ---------------------------------------------------------------------------------

# Polling runs every 120 s (integrations.sync.polling.POLL_INTERVAL_S, beat's ``poll-all``).
POLL_INTERVAL_S = 120


def poll_stale_after_s() -> float:
    """How old a poll cursor's last success may get before it is a case: three polling
    intervals (one failed poll is noise, three in a row a broken connection);
    ``CONCORD_POLL_STALE_AFTER_S`` overrides it."""
    return float(getattr(settings, "CONCORD_POLL_STALE_AFTER_S", 3 * POLL_INTERVAL_S))


def poll_stale_q(now: datetime | None = None) -> Q:
    """The cursors past their SLA. One that never succeeded is as old as its first poll."""
    limit = (now or timezone.now()) - timedelta(seconds=poll_stale_after_s())
    return Q(last_success_at__lt=limit) | Q(last_success_at__isnull=True, last_polled_at__lt=limit)


@dataclass(frozen=True)
class PollObjectHealth:
    object_type: str
    last_success_at: datetime | None
    failing_since: datetime | None
    last_error: str
    cursor_age_s: int | None  # since the last success (or the first poll, if none yet)
    stale: bool


@dataclass(frozen=True)
class PollHealth:
    """A connection's polls at a glance: ``state`` is "ok", "failing" (a poll raised since
    the last success), "stale" (failing or not, some cursor is past its SLA) or "not polled"."""

    state: str
    failing_since: datetime | None = None
    last_error: str = ""
    cursor_age_s: int | None = None  # of the oldest cursor
    objects: list[PollObjectHealth] = field(default_factory=list)


def poll_health(cursors: Iterable[m.PollCursor], *, now: datetime | None = None) -> PollHealth:
    """From a connection's cursors (prefetched: no query here)."""
    now = now or timezone.now()
    limit = timedelta(seconds=poll_stale_after_s())
    objects = []
    for c in sorted(cursors, key=lambda c: c.object_type):
        since = c.last_success_at or c.last_polled_at
        age = int((now - since).total_seconds()) if since else None
        objects.append(
            PollObjectHealth(
                object_type=c.object_type,
                last_success_at=c.last_success_at,
                failing_since=c.failing_since,
                last_error=c.last_error,
                cursor_age_s=age,
                stale=since is not None and now - since > limit,
            )
        )
    if not objects:
        return PollHealth(state="not polled")
    failing = [o for o in objects if o.failing_since is not None]
    latest = max(
        (c for c in cursors if c.failing_since is not None and c.last_failure_at),
        key=lambda c: c.last_failure_at or now,
        default=None,
    )
    ages = [o.cursor_age_s for o in objects if o.cursor_age_s is not None]
    state = "stale" if any(o.stale for o in objects) else "failing" if failing else "ok"
    return PollHealth(
        state=state,
        failing_since=min((o.failing_since for o in failing if o.failing_since), default=None),
        last_error=f"{latest.object_type}: {latest.last_error}" if latest is not None else "",
        cursor_age_s=max(ages) if ages else None,
        objects=objects,
    )
