"""Workflow runs: one business process carried out for one business object, step by step.

A run is the process's memory (integrations/workflows/runs.py writes it): which steps it has,
in order, where it stands, when each step started and finished, the ids each step produced in
the systems it wrote to, and the case that holds it up. A failed step leaves the run at that
step; fixing the cause (the case retried, or the data arriving fixed) runs that step again and
the ones after it, never the ones before.
"""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q

from integrations.models.records import LegalEntity


class RunState(models.TextChoices):
    RUNNING = "running", "Running"
    BLOCKED = "blocked", "Blocked by a case"
    DONE = "done", "Done"


class StepState(models.TextChoices):
    PENDING = "pending", "Not started"
    # Its writes are in the outbox (or on their way to the system); their delivery moves it on.
    RUNNING = "running", "Waiting on the system"
    BLOCKED = "blocked", "Blocked by a case"
    DONE = "done", "Done"
    # Nothing to do: what it would make exists already (the customer is in the ERP).
    SKIPPED = "skipped", "Not needed"


class WorkflowRun(models.Model):
    """One process (``provisioning``) for one business object (the CRM opportunity)."""

    process = models.CharField(max_length=32)
    # What the run is about, unique per process: the source system's object and id
    # ("salesforce:3:Opportunity:006..."), so a trigger delivered twice finds the same run.
    subject_key = models.CharField(max_length=200)
    label = models.CharField(max_length=200, help_text="The business object, in words.")
    # The canonical record the run is about, once there is one (the project it provisioned).
    subject_type = models.ForeignKey(
        ContentType, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    subject_id = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.RUNNING)
    current_step = models.CharField(max_length=64, blank=True, help_text="Blank once done.")
    # The trigger's canonical fields as they arrived (the opportunity, mapped).
    input = models.JSONField(default=dict, blank=True)
    # What the steps established in Concord (the customer, contract, legal entity, project ids).
    context = models.JSONField(default=dict, blank=True)
    exception_case = models.ForeignKey(
        "exceptions.ExceptionCase",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="workflow_runs",
    )
    # Times the run was started or resumed (a trigger delivered again, a case retried).
    attempts = models.PositiveIntegerField(default=0)
    legal_entity = models.ForeignKey(
        LegalEntity, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    region = models.CharField(max_length=16, blank=True)
    started_at = models.DateTimeField()
    # When the current step began: the board's "time at stage".
    step_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["process", "subject_key"], name="workflowrun_unique_subject"
            )
        ]
        indexes = [
            # The board and the resumers: a process's runs by state and step.
            models.Index(fields=["process", "state", "current_step"]),
            models.Index(
                fields=["subject_type", "subject_id"],
                condition=Q(subject_id__isnull=False),
                name="workflowrun_subject",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.process} {self.label} ({self.state})"


class WorkflowStep(models.Model):
    """One step of a run, in its place: its state, timings, tries and the ids it produced."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=StepState.choices, default=StepState.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # {system role: {what: id}}: {"erp": {"customer": "8f3e..."}, "psa": {"project": "4711"}}.
    external_ids = models.JSONField(default=dict, blank=True)
    detail = models.TextField(blank=True, help_text="What the step did or why it stopped.")
    exception_case = models.ForeignKey(
        "exceptions.ExceptionCase",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="workflow_steps",
    )

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="workflowstep_unique_name"),
            models.UniqueConstraint(
                fields=["run", "position"], name="workflowstep_unique_position"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.position} {self.name} ({self.state})"
