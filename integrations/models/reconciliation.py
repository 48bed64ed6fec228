"""Reconciliation: what the PSA approved, what Concord billed and what the ERP holds, compared
per project and month on a schedule (integrations/workflows/reconciliation.py writes these).

A run is one comparison for one ERP connection (the legal entities routed to it); each gap it
finds is a row of its own, with the figures on both sides, and the case that tells the owning
queue about it. Runs are kept as the record of what was checked and when; a gap that is gone
on a later run is simply not found again, and its case clears itself.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from integrations.models.connections import Connection
from integrations.models.fields import CurrencyField, money_field
from integrations.models.records import Invoice, Project


class ReconciliationState(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class GapKind(models.TextChoices):
    # Billed work whose posting to the ERP does not match the PSA: a posting stuck in the
    # outbox past its grace, time changed or rejected in the PSA after it was invoiced.
    POSTING_MISMATCH = "posting_mismatch", "ERP posting differs from the PSA"
    # An invoice whose billing events do not add up to its subtotal.
    INVOICE_MISMATCH = "invoice_mismatch", "Invoice differs from its billing events"
    # Billing events marked invoiced whose invoice never reached the ERP, or was voided there.
    INVOICE_MISSING = "invoice_missing", "Invoiced work on no live ERP invoice"
    # A project closed in the PSA with approved billable time never billed.
    CLOSED_UNBILLED = "closed_unbilled", "Closed project with unbilled time"
    # Approved billable time or expenses not billed within the SLA.
    TIME_UNBILLED = "time_unbilled", "Approved time unbilled past its SLA"
    EXPENSES_UNBILLED = "expenses_unbilled", "Approved expenses unbilled past their SLA"


class GapMeasure(models.TextChoices):
    """What a gap's expected, found and difference count."""

    HOURS = "hours", "Hours"
    AMOUNT = "amount", "Amount"


class ReconciliationRun(models.Model):
    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="reconciliation_runs"
    )
    state = models.CharField(
        max_length=16, choices=ReconciliationState.choices, default=ReconciliationState.RUNNING
    )
    # The months compared for postings and invoices (first days); unbilled work is looked for
    # in every month before the SLA's cut-off.
    period_from = models.DateField()
    period_to = models.DateField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    gap_count = models.PositiveIntegerField(default=0)
    # Cases opened or joined for this run's gaps; records of earlier gaps cleared, and the
    # cases that resolved themselves because nothing was left on them.
    cases_touched = models.PositiveIntegerField(default=0)
    records_cleared = models.PositiveIntegerField(default=0)
    cases_resolved = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["connection", "-started_at"], name="reconrun_connection")]

    def __str__(self) -> str:
        return f"Reconciliation #{self.pk} of {self.connection_id} ({self.state})"


class ReconciliationGap(models.Model):
    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="gaps")
    kind = models.CharField(max_length=32, choices=GapKind.choices)
    project = models.ForeignKey(
        Project, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    invoice = models.ForeignKey(
        Invoice, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    period = models.DateField(help_text="The month's first day.")
    measure = models.CharField(max_length=8, choices=GapMeasure.choices)
    # The PSA's (or Concord's billing) side, the ERP's side, and expected - found.
    expected = models.DecimalField(max_digits=16, decimal_places=2)
    found = models.DecimalField(max_digits=16, decimal_places=2)
    difference = models.DecimalField(max_digits=16, decimal_places=2)
    # What the gap holds up: hours and money (the records' own figures, summed).
    hours = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    amount = money_field(default=Decimal("0"))
    currency = CurrencyField(blank=True)
    records = models.PositiveIntegerField(default=0, help_text="Records the gap holds.")
    detail = models.CharField(max_length=400, blank=True)
    exception_case = models.ForeignKey(
        "exceptions.ExceptionCase",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reconciliation_gaps",
    )

    class Meta:
        ordering = ["run", "kind", "period", "id"]
        indexes = [
            models.Index(fields=["kind", "period"], name="recongap_kind_period"),
            models.Index(fields=["project", "period"], name="recongap_project_period"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.period:%Y-%m}"
