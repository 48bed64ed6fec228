"""Configured external systems and the cross-references that tie canonical records to them."""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q

from integrations.models.base import SystemRole
from integrations.models.fields import EncryptedJSONField


class Vendor(models.TextChoices):
    SALESFORCE = "salesforce", "Salesforce"
    HARVEST = "harvest", "Harvest"
    XERO = "xero", "Xero"


# Which vendors can play which role; a connection pairing them otherwise is refused.
VENDOR_ROLES: dict[str, str] = {
    Vendor.SALESFORCE: SystemRole.CRM,
    Vendor.HARVEST: SystemRole.PSA,
    Vendor.XERO: SystemRole.ERP,
}


class Connection(models.Model):
    """One configured external system. Several per role are allowed (a legacy and a new ERP)."""

    name = models.CharField(max_length=120, unique=True)
    role = models.CharField(max_length=8, choices=SystemRole.choices)
    vendor = models.CharField(max_length=16, choices=Vendor.choices)
    base_url = models.URLField(
        max_length=500, help_text="The vendor's API root; the connector appends the spec's paths."
    )
    # Secrets (client id/secret, tokens, tenant id, webhook key). Encrypted at rest, write-only in
    # the API and the admin, never logged.
    credentials = EncryptedJSONField(blank=True, default=dict, editable=False)
    rate_limit_per_minute = models.PositiveIntegerField(
        default=60, help_text="Calls per minute allowed by the vendor (Xero: 60 per tenant)."
    )
    max_concurrency = models.PositiveSmallIntegerField(
        default=5, help_text="Calls in flight at once across all workers (Xero: 5 per tenant)."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["role", "name"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(vendor=Vendor.SALESFORCE, role=SystemRole.CRM)
                    | Q(vendor=Vendor.HARVEST, role=SystemRole.PSA)
                    | Q(vendor=Vendor.XERO, role=SystemRole.ERP)
                ),
                name="connection_vendor_matches_role",
            ),
            models.CheckConstraint(
                condition=Q(rate_limit_per_minute__gt=0) & Q(max_concurrency__gt=0),
                name="connection_limits_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_vendor_display()} {self.get_role_display()})"

    @property
    def credential_keys(self) -> list[str]:
        """Names of the stored secrets, safe to show; the values never are."""
        return sorted(self.credentials)


class CrossReference(models.Model):
    """A canonical record's identity in one connected system."""

    # Both foreign keys lead the composite indexes below; separate indexes would only cost
    # writes (a poll inserts thousands of cross-references at a time).
    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT, db_index=False)
    object_id = models.BigIntegerField()
    record = GenericForeignKey("content_type", "object_id")
    connection = models.ForeignKey(
        Connection, on_delete=models.PROTECT, related_name="cross_references", db_index=False
    )
    external_id = models.CharField(max_length=255)
    external_version = models.CharField(
        max_length=64, blank=True, help_text="The external system's version or modstamp."
    )
    last_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["connection", "content_type", "external_id"]
        constraints = [
            # One external record maps to one canonical record ...
            models.UniqueConstraint(
                fields=["connection", "content_type", "external_id"],
                name="xref_unique_external_id",
            ),
            # ... and one canonical record has one identity per system.
            models.UniqueConstraint(
                fields=["connection", "content_type", "object_id"],
                name="xref_unique_record_per_connection",
            ),
            models.CheckConstraint(condition=~Q(external_id=""), name="xref_external_id_set"),
        ]
        indexes = [models.Index(fields=["content_type", "object_id"])]

    def __str__(self) -> str:
        record = f"{self.content_type.model} {self.object_id}"
        return f"{record} = {self.connection.name}:{self.external_id}"


class OwnershipRule(models.Model):
    """Which system role is authoritative for an object or one of its fields.

    A rule with an empty `field` covers the whole object; a field rule overrides it.
    """

    object_type = models.CharField(max_length=64, help_text="Canonical model name, e.g. customer.")
    field = models.CharField(max_length=64, blank=True)
    owner_role = models.CharField(max_length=8, choices=SystemRole.choices)
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["object_type", "field"]
        constraints = [
            models.UniqueConstraint(
                fields=["object_type", "field"], name="ownership_unique_object_field"
            )
        ]

    def __str__(self) -> str:
        target = f"{self.object_type}.{self.field}" if self.field else self.object_type
        return f"{target} owned by {self.get_owner_role_display()}"


class Heartbeat(models.Model):
    """Last sign of life of a background component (worker, beat), read by /healthz."""

    component = models.CharField(max_length=16)
    hostname = models.CharField(max_length=255)
    seen_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["component", "hostname"], name="heartbeat_unique_component_host"
            )
        ]
        indexes = [models.Index(fields=["component", "-seen_at"])]

    def __str__(self) -> str:
        return f"{self.component}@{self.hostname} {self.seen_at:%H:%M:%S}"


class RoutingRule(models.Model):
    """Which connection of a role serves a legal entity (a legacy and a new ERP side by side).

    A rule with no legal entity is the default for the role.
    """

    role = models.CharField(max_length=8, choices=SystemRole.choices)
    legal_entity = models.ForeignKey(
        "integrations.LegalEntity",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="routing_rules",
    )
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="routes")

    class Meta:
        ordering = ["role", "legal_entity"]
        constraints = [
            models.UniqueConstraint(
                fields=["role", "legal_entity"], name="routingrule_unique_role_entity"
            ),
            models.UniqueConstraint(
                fields=["role"],
                condition=Q(legal_entity__isnull=True),
                name="routingrule_unique_role_default",
            ),
        ]

    def __str__(self) -> str:
        entity = self.legal_entity.code if self.legal_entity else "default"
        return f"{self.get_role_display()} for {entity}: {self.connection.name}"
