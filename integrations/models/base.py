from __future__ import annotations

from django.db import models


class SystemRole(models.TextChoices):
    """The role a connected system plays for the firm. Ownership rules are stated by role."""

    CRM = "crm", "CRM"
    PSA = "psa", "PSA"
    ERP = "erp", "ERP"


class CanonicalRecord(models.Model):
    """Fields every canonical record carries.

    `source_version` is the version of the source system's record that was last applied (the
    source's modification stamp in microseconds since the epoch, or its own revision number), so a
    late message carrying an older version can be recognised and skipped. `field_sources` records,
    per owned field, which system and version last changed it.
    """

    source_system = models.CharField(max_length=8, choices=SystemRole.choices, blank=True)
    source_version = models.BigIntegerField(default=0)
    field_sources = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
