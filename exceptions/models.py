"""Exception cases: failures a retry cannot fix, grouped by root cause, owned by a queue.

A case keeps its blocked records in their own table (BlockedRecord) and their totals on itself
(count, hours, amount per currency), kept up to date by exceptions.services one change at a time,
so joining or clearing N records costs O(N) however many the case already holds.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q


class Queue(models.TextChoices):
    FINANCE = "finance", "Finance"
    PMO = "pmo", "PMO"
    SALES_OPS = "sales_ops", "Sales ops"
    INTEGRATION_ADMIN = "integration_admin", "Integration admins"


class ExceptionCase(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"
        WAIVED = "waived", "Waived"

    class Priority(models.IntegerChoices):
        P1 = 1, "P1 (urgent)"
        P2 = 2, "P2 (high)"
        P3 = 3, "P3 (normal)"
        P4 = 4, "P4 (low)"

    # Hash of (case type, process, step, the subject values the catalogue names): one case per
    # root cause, however many jobs failed because of it.
    fingerprint = models.CharField(max_length=64)
    process = models.CharField(max_length=32)
    step = models.CharField(max_length=64)
    case_type = models.CharField(max_length=64)
    queue = models.CharField(max_length=32, choices=Queue.choices)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.P3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    # What the case is about ({"project_id": 7, "project": "P-007 Apollo", ...}): the catalogue
    # renders the message from it and the totals below; the latest occurrence's values stand.
    subject = models.JSONField(default=dict, blank=True)
    message = models.TextField(help_text="What happened, in words the queue's owner uses.")
    vendor_message = models.TextField(blank=True)
    connection = models.ForeignKey(
        "integrations.Connection", on_delete=models.SET_NULL, null=True, blank=True
    )
    # Totals over the case's blocked records, maintained on every join and clear.
    record_count = models.PositiveIntegerField(default=0)
    hours_blocked = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    # {"GBP": "3150.00", "EUR": "80.00"}: the amount blocked per currency (no zero entries).
    amounts = models.JSONField(default=dict, blank=True)
    # The same as one figure for pages and sorting, when the case blocks one currency only; with
    # several, currency is "" and amount_blocked 0 (adding EUR to GBP would be a wrong figure).
    amount_blocked = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    occurrences = models.PositiveIntegerField(default=1)
    sla_due_at = models.DateTimeField(null=True, blank=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=Q(status="open"),
                name="exceptioncase_one_open_per_fingerprint",
            )
        ]
        indexes = [models.Index(fields=["queue", "status", "-last_seen_at"])]

    def __str__(self) -> str:
        return f"[{self.get_queue_display()}] {self.message[:80]}"


class BlockedRecord(models.Model):
    """One record a case holds up, with the amount and hours it blocks. A record synced after
    all takes itself off every open case holding it (exceptions.services.case_records_clear)."""

    case = models.ForeignKey(
        ExceptionCase, on_delete=models.CASCADE, related_name="blocked_records"
    )
    # The record's model name ("timeentry", "invoice", "inboundmessage") and primary key.
    record_type = models.CharField(max_length=64)
    record_id = models.BigIntegerField()
    label = models.CharField(max_length=255, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, blank=True)
    hours = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["case", "record_type", "record_id"],
                name="blockedrecord_once_per_case",
            )
        ]
        # "Which cases hold this record?": the clear after a success looks records up by type
        # and id (the unique index above leads with the case, so it cannot answer that).
        indexes = [models.Index(fields=["record_type", "record_id"], name="blockedrecord_record")]

    def __str__(self) -> str:
        return self.label or f"{self.record_type} {self.record_id}"
