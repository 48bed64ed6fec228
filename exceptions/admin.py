"""The cases, read-only (every change to a case goes through exceptions/actions.py, which
audits it); the queues, routing rules, SLA policies and alert thresholds, edited by integration
admins through the audited configuration service; the audit trail, read-only for good."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from exceptions.access import case_access
from exceptions.models import (
    AlertThreshold,
    BlockedRecord,
    CaseAlert,
    CaseComment,
    CaseEvent,
    CaseRoute,
    ExceptionCase,
    SlaPolicy,
    WorkQueue,
)
from integrations.admin import ConfigRowAdmin


class _CaseReadOnly(admin.ModelAdmin[Any]):
    """Shown to whoever may see cases (their queues' only; integration admins all), changed by
    nobody here. `case_field` is the path from the row to its case's queue."""

    case_field = "case__"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return not case_access(request.user).none

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not case_access(request.user).none

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(case_access(request.user).q(self.case_field))


@admin.register(ExceptionCase)
class ExceptionCaseAdmin(_CaseReadOnly):
    case_field = ""
    list_display = [
        "id",
        "queue",
        "status",
        "case_type",
        "record_count",
        "amounts",
        "hours_blocked",
        "occurrences",
        "last_seen_at",
        "message",
    ]
    list_filter = ["queue", "status", "process", "case_type"]
    search_fields = ["message", "fingerprint"]
    # The totals move with the blocked records (exceptions.services); edited here they would
    # no longer add up.
    readonly_fields = [
        "fingerprint",
        "subject",
        "record_count",
        "blocked_records_link",
        "hours_blocked",
        "amounts",
        "amount_blocked",
        "currency",
        "first_seen_at",
        "last_seen_at",
        "occurrences",
    ]

    @admin.display(description="Blocked records")
    def blocked_records_link(self, case: ExceptionCase) -> str:
        # A link to the filtered list, not an inline: a case can hold 50,000 records.
        url = reverse("admin:exceptions_blockedrecord_changelist") + f"?case__id__exact={case.pk}"
        return format_html('<a href="{}">{} records</a>', url, case.record_count)


@admin.register(BlockedRecord)
class BlockedRecordAdmin(_CaseReadOnly):
    list_display = [
        "id",
        "case",
        "record_type",
        "record_id",
        "label",
        "amount",
        "currency",
        "hours",
    ]
    list_filter = ["record_type"]
    list_select_related = ["case"]
    search_fields = ["label", "=record_id"]
    raw_id_fields = ["case"]

    # Records join and leave a case through exceptions.services only, which keeps its totals
    # (read-only: see _CaseReadOnly).


@admin.register(CaseEvent)
class CaseEventAdmin(_CaseReadOnly):
    """The audit trail: append-only. No add, change or delete here (and none in code: see
    CaseEvent)."""

    list_display = ["id", "case", "at", "actor_label", "action", "revision"]
    list_filter = ["action"]
    list_select_related = ["case"]
    search_fields = ["=case__id", "actor_label"]
    raw_id_fields = ["case", "actor"]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}  # not even "delete selected"


@admin.register(CaseComment)
class CaseCommentAdmin(_CaseReadOnly):
    list_display = ["id", "case", "author", "at", "text"]
    raw_id_fields = ["case", "author"]


@admin.register(CaseAlert)
class CaseAlertAdmin(_CaseReadOnly):
    list_display = ["id", "case", "kind", "queue", "sent_at"]
    list_filter = ["kind", "queue"]
    raw_id_fields = ["case"]


class _AdminsConfig(ConfigRowAdmin):
    """Configuration of the queues, edited by integration admins (and superusers) only, through
    the audited configuration service."""

    def _admin(self, request: HttpRequest) -> bool:
        return case_access(request.user).all_queues

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._admin(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._admin(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._admin(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._admin(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._admin(request)


@admin.register(WorkQueue)
class WorkQueueAdmin(_AdminsConfig):
    list_display = ["code", "name", "email", "webhook_url"]
    filter_horizontal = ["groups", "members"]


@admin.register(CaseRoute)
class CaseRouteAdmin(_AdminsConfig):
    list_display = ["id", "case_type", "process", "legal_entity", "region", "queue", "priority"]
    list_filter = ["queue", "process"]


@admin.register(SlaPolicy)
class SlaPolicyAdmin(_AdminsConfig):
    list_display = ["priority", "resolve_within", "due_soon_within"]


@admin.register(AlertThreshold)
class AlertThresholdAdmin(_AdminsConfig):
    list_display = ["process", "currency", "amount"]
