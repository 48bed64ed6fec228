from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from exceptions.models import BlockedRecord, ExceptionCase


@admin.register(ExceptionCase)
class ExceptionCaseAdmin(admin.ModelAdmin[ExceptionCase]):
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
class BlockedRecordAdmin(admin.ModelAdmin[BlockedRecord]):
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

    # Records join and leave a case through exceptions.services only, which keeps its totals.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BlockedRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: BlockedRecord | None = None) -> bool:
        return False
