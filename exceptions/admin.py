from django.contrib import admin

from exceptions.models import ExceptionCase


@admin.register(ExceptionCase)
class ExceptionCaseAdmin(admin.ModelAdmin[ExceptionCase]):
    list_display = ["id", "queue", "status", "case_type", "occurrences", "last_seen_at", "message"]
    list_filter = ["queue", "status", "process", "case_type"]
    search_fields = ["message", "fingerprint"]
    readonly_fields = ["fingerprint", "first_seen_at", "last_seen_at", "occurrences"]
