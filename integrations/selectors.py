"""Reads behind the REST API: one function per list, returning the rows with what they show
loaded up front (the API's filter backend, ordering and paging apply on top of them)."""

from __future__ import annotations

from django.db.models import QuerySet

from exceptions.models import BlockedRecord
from integrations import models as m


def record_list(*, model: type[m.CanonicalRecord]) -> QuerySet[m.CanonicalRecord]:
    return model._default_manager.order_by("pk")


def connection_list() -> QuerySet[m.Connection]:
    return m.Connection.objects.order_by("pk")


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
