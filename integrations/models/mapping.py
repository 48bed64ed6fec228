"""Mapping configuration: how a vendor payload becomes canonical fields and back. Data, not code;
versioned (a draft is edited, then published; the published version is the one applied).

Value maps are global tables (one map may serve several connections' mappings); a version keeps
its own copy of the maps it reads in `MappingSet.value_maps`, so versions can be compared and an
earlier one published again with the value maps it had (integrations/mapping/versions.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from integrations.models.connections import Connection


class MappingSet(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        # Four-eyes (ConsoleSettings.mapping_four_eyes): published by one admin, waiting for
        # another to approve; the published version stays in effect until then.
        PENDING = "pending", "Pending approval"
        PUBLISHED = "published", "Published"
        RETIRED = "retired", "Retired"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="mappings")
    object_type = models.CharField(max_length=64, help_text="Vendor object, e.g. Contact.")
    canonical_model = models.CharField(max_length=64, help_text="Canonical model, e.g. customer.")
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    external_id_path = models.CharField(max_length=200, help_text="Path of the vendor's id.")
    version_path = models.CharField(
        max_length=200, blank=True, help_text="Path of the vendor's modification stamp."
    )
    notes = models.TextField(blank=True)
    # The version this one was copied from (a draft from the published one, a rollback's copy).
    based_on = models.PositiveIntegerField(null=True, blank=True)
    # {value map name: {"entries": {vendor value: canonical value}, "default": "..."}}. A draft
    # (or a version pending approval) holds the maps it changes, applied to the global value
    # maps when it is published; a published or retired version holds every map its fields
    # read, as they stood when it was published.
    value_maps = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Who asked for it to be published, and when (under four-eyes, another admin publishes it).
    submitted_at = models.DateTimeField(null=True, blank=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    published_at = models.DateTimeField(null=True, blank=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )

    class Meta:
        ordering = ["connection", "object_type", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "object_type", "version"], name="mappingset_unique_version"
            ),
            # At most one published version per connection and object: the one applied.
            models.UniqueConstraint(
                fields=["connection", "object_type"],
                condition=Q(status="published"),
                name="mappingset_one_published",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.object_type} -> {self.canonical_model} v{self.version} ({self.status})"


class FieldMapping(models.Model):
    class Direction(models.TextChoices):
        INBOUND = "in", "Vendor to canonical"
        OUTBOUND = "out", "Canonical to vendor"
        BOTH = "both", "Both ways"

    class Transform(models.TextChoices):
        COPY = "copy", "Copy"
        VALUE_MAP = "value_map", "Value-map lookup"
        DATE = "date", "Parse date"
        DATETIME = "datetime", "Parse date and time"
        MONEY = "money", "Parse money (Decimal)"
        DEFAULT = "default", "Default when missing"
        CONCAT = "concat", "Concatenate paths"

    mapping_set = models.ForeignKey(MappingSet, on_delete=models.CASCADE, related_name="fields")
    canonical_field = models.CharField(max_length=64)
    vendor_path = models.CharField(
        max_length=500, help_text="Dotted path, e.g. Contact.ContactID or Addresses.0.City."
    )
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.BOTH)
    transform = models.CharField(max_length=16, choices=Transform.choices, default=Transform.COPY)
    # Transform arguments: {"value_map": "name"}, {"default": ...}, {"paths": [...], "sep": " "},
    # {"format": "xero"} for /Date(...)/ strings.
    options = models.JSONField(default=dict, blank=True)
    required = models.BooleanField(default=False)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["mapping_set", "position", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["mapping_set", "canonical_field", "direction"],
                name="fieldmapping_unique_field_direction",
            )
        ]

    def __str__(self) -> str:
        return f"{self.vendor_path} -> {self.canonical_field} ({self.transform})"


class ValueMap(models.Model):
    """A lookup table, e.g. Harvest project state -> canonical project status."""

    name = models.CharField(max_length=64, unique=True)
    description = models.CharField(max_length=200, blank=True)
    default = models.CharField(
        max_length=200, blank=True, help_text="Used when a value has no entry; blank means error."
    )

    def __str__(self) -> str:
        return self.name


class ValueMapEntry(models.Model):
    value_map = models.ForeignKey(ValueMap, on_delete=models.CASCADE, related_name="entries")
    vendor_value = models.CharField(max_length=200)
    canonical_value = models.CharField(max_length=200)

    class Meta:
        ordering = ["value_map", "vendor_value"]
        constraints = [
            models.UniqueConstraint(
                fields=["value_map", "vendor_value"], name="valuemapentry_unique_vendor_value"
            )
        ]

    def __str__(self) -> str:
        return f"{self.vendor_value} -> {self.canonical_value}"


class ConsoleSettings(models.Model):
    """Settings of this installation that integration admins change in the configuration
    console (/config/). One row (`ConsoleSettings.load()`); changed through an audited service."""

    # Four-eyes: a mapping version published by one admin takes effect only once another
    # admin approves it (integrations/mapping/versions.py).
    mapping_four_eyes = models.BooleanField(
        default=False,
        help_text="A published mapping waits for a second admin's approval before it applies.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "console settings"

    def __str__(self) -> str:
        return "Console settings"

    @classmethod
    def load(cls) -> ConsoleSettings:
        row, _ = cls.objects.get_or_create(pk=1)
        return row
