"""Exception cases: failures a retry cannot fix, grouped by root cause, owned by a queue.

This is the sync engine's minimal case; the exceptions issue adds comments, SLAs and the pages.
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

    # Hash of (process, step, case type, root-cause subject): one case per root cause, however
    # many jobs failed because of it.
    fingerprint = models.CharField(max_length=64)
    process = models.CharField(max_length=32)
    step = models.CharField(max_length=64)
    case_type = models.CharField(max_length=64)
    queue = models.CharField(max_length=32, choices=Queue.choices)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.P3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    message = models.TextField(help_text="What happened, in words the queue's owner uses.")
    vendor_message = models.TextField(blank=True)
    connection = models.ForeignKey(
        "integrations.Connection", on_delete=models.SET_NULL, null=True, blank=True
    )
    # [{"type": "timeentry", "id": 12, "label": "..."}]; the parked outbox rows link here too.
    records = models.JSONField(default=list, blank=True)
    amount_blocked = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, blank=True)
    hours_blocked = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
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
