"""Configured external systems and the cross-references that tie canonical records to them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from integrations.crypto import decrypt_text, encrypt_text
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

# The window a vendor counts its rate limit over, where it is not a minute: Harvest allows 100
# requests per 15 seconds per token (its API docs; sandbox/ratelimit.py). A connection's
# `rate_limit_per_minute` is applied over that window pro rata (400 a minute: 100 per 15 s),
# so a burst never goes past what the vendor counts.
VENDOR_RATE_WINDOW_S: dict[str, float] = {Vendor.HARVEST: 15.0}
# A new connection's rate when none is given: the vendor's published limit (Xero: 60 calls a
# minute per tenant; Harvest: 100 per 15 s). Salesforce counts a day's allocation, not a
# minute's: the model's default stands for it.
VENDOR_DEFAULT_RATE_PER_MINUTE: dict[str, int] = {Vendor.XERO: 60, Vendor.HARVEST: 400}


# --- Where a connection's credentials may be sent ----------------------------------------------
#
# A connection's secrets are stored with the origins (scheme, host, port) they were entered for:
# its base URL's and those of any URL among the credentials themselves (``token_url``,
# ``connections_url``: every key ending in ``_url``). The binding lives inside the encrypted
# blob, so no edit of the row without the Fernet key can widen it, and the HTTP layer
# (integrations/connectors/http.py) sends nothing to any other origin. Changing a destination
# through integrations/services/connections.py needs the credentials entered again.

# Hosts a vendor's connector sends the credentials to whatever a connection row says, fixed in
# code and so beyond any row's reach: Xero's identity server issues the tokens for every Xero
# API host (integrations/vendors/xero/connector.py DEFAULT_TOKEN_URL, used when the credentials
# name no ``token_url``).
VENDOR_FIXED_ORIGINS: dict[str, frozenset[str]] = {
    "xero": frozenset({"https://identity.xero.com"}),
}


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, as httpx (the client that sends) reads it: lower case,
    the scheme's default port left out. "" for text that is no absolute http(s) URL."""
    try:
        parsed = httpx.URL(str(url).strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        return ""
    host = parsed.raw_host.decode("ascii").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    default_port = 443 if parsed.scheme == "https" else 80
    port = f":{parsed.port}" if parsed.port not in (None, default_port) else ""
    return f"{parsed.scheme}://{host}{port}"


def credential_destinations(base_url: str, credentials: Mapping[str, Any]) -> tuple[str, ...]:
    """The origins a connection's settings send its credentials to: the base URL's and every
    ``*_url`` credential's (a Xero or Salesforce ``token_url``, Xero's ``connections_url``)."""
    urls = [base_url] + [
        str(value)
        for key, value in credentials.items()
        if key.endswith("_url") and isinstance(value, str) and value
    ]
    return tuple(sorted({origin for origin in map(url_origin, urls) if origin}))


class BoundCredentials(dict[str, Any]):
    """A connection's secrets (a plain dict to every reader) and the origins they were entered
    for (``origins``; None: not bound yet, and then the HTTP layer sends them nowhere)."""

    def __init__(
        self, values: Mapping[str, Any] | None = None, *, origins: Iterable[str] | None = None
    ) -> None:
        super().__init__(values or {})
        self.origins: tuple[str, ...] | None = (
            tuple(sorted(set(origins))) if origins is not None else None
        )


# The stored form of bound credentials; an unbound object is stored as it was before binding
# existed (a plain JSON object of secrets), which the migration that introduced it reads.
_SECRETS, _ORIGINS = "__secrets__", "__origins__"


class CredentialsField(EncryptedJSONField):
    """The credentials and their origins, encrypted together: one Fernet token authenticates
    both, so a row edited by hand cannot pair these secrets with another origin."""

    def _load(self, plaintext: str) -> BoundCredentials:
        value = json.loads(plaintext)
        if isinstance(value, dict) and _SECRETS in value:
            return BoundCredentials(value[_SECRETS], origins=value.get(_ORIGINS))
        return BoundCredentials(value if isinstance(value, dict) else {})

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return BoundCredentials()
        return self._load(decrypt_text(value))

    def to_python(self, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if value is None or value == "":
            return BoundCredentials()
        return self._load(value)

    def get_prep_value(self, value: Any) -> Any:
        secrets = dict(value or {})
        origins = getattr(value, "origins", None)
        stored: Any = secrets if origins is None else {_SECRETS: secrets, _ORIGINS: list(origins)}
        return encrypt_text(json.dumps(stored, sort_keys=True))


class Connection(models.Model):
    """One configured external system. Several per role are allowed (a legacy and a new ERP)."""

    name = models.CharField(max_length=120, unique=True)
    role = models.CharField(max_length=8, choices=SystemRole.choices)
    vendor = models.CharField(max_length=16, choices=Vendor.choices)
    base_url = models.URLField(
        max_length=500, help_text="The vendor's API root; the connector appends the spec's paths."
    )
    # Secrets (client id/secret, tokens, tenant id, webhook key). Encrypted at rest, write-only in
    # the API and the admin, never logged. Bound to the origins they were entered for (above).
    credentials = CredentialsField(blank=True, default=BoundCredentials, editable=False)
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

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Credentials assigned as a plain dict were entered by the code saving them: bound to
        # the destinations of this save. Credentials read from the row keep their binding, so
        # a base URL changed without the connection services cannot widen it.
        if self.credentials and self.credential_origins is None:
            self.bind_credentials()
        super().save(*args, **kwargs)

    @property
    def credential_keys(self) -> list[str]:
        """Names of the stored secrets, safe to show; the values never are."""
        return sorted(self.credentials)

    @property
    def credential_origins(self) -> tuple[str, ...] | None:
        """The origins the stored credentials were entered for (None: not bound)."""
        return getattr(self.credentials, "origins", None)

    def bind_credentials(self) -> None:
        """Bind the credentials held now to where the connection's settings send them now.
        For code that has just been given the credentials (the connection services, a test
        setting them); never for credentials read back from the database."""
        self.credentials = BoundCredentials(
            self.credentials, origins=credential_destinations(self.base_url, self.credentials)
        )


class CrossReference(models.Model):
    """A canonical record's identity in one connected system."""

    # Both foreign keys lead the composite indexes below; separate indexes would only cost
    # writes (a poll inserts thousands of cross-references at a time). Neither is a database
    # constraint, checked row by row as a poll's COPY stores them: see the note above
    # InboundMessage (integrations/models/sync.py). PROTECT holds through the ORM.
    content_type = models.ForeignKey(
        ContentType, on_delete=models.PROTECT, db_index=False, db_constraint=False
    )
    object_id = models.BigIntegerField()
    record = GenericForeignKey("content_type", "object_id")
    connection = models.ForeignKey(
        Connection,
        on_delete=models.PROTECT,
        related_name="cross_references",
        db_index=False,
        db_constraint=False,
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

    def clean(self) -> None:
        # A route sends a role's work to a connection playing that role: an ERP route to a CRM
        # would post invoices to the CRM's API.
        try:
            connection = self.connection if self.connection_id else None
        except Connection.DoesNotExist:  # refused by the field's own check already
            connection = None
        if connection is not None and connection.role != self.role:
            raise ValidationError(
                {
                    "connection": f"{connection.name} is a {connection.get_role_display()} "
                    f"connection; a {self.get_role_display()} route needs a "
                    f"{self.get_role_display()} connection."
                }
            )


class RouteSwitch(models.Model):
    """A legal entity's work of a role moved from one connection to another (a legacy ERP to the
    new one), from an effective time on. Recorded by an audited action (integrations/services/
    route_switches.py), never by editing the route alone: the switch is what tells the work
    already under way (invoices rendered for the old ERP, runs past their route decision) to
    finish where it started, and what the runs that did say they continued on.

    The route itself (RoutingRule) changes when the switch takes effect: at once for an
    effective time already past, else when the time comes (``applied_at`` is set then). A
    switch with no legal entity moves the role's default route."""

    role = models.CharField(max_length=8, choices=SystemRole.choices, default=SystemRole.ERP)
    legal_entity = models.ForeignKey(
        "integrations.LegalEntity",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="route_switches",
    )
    # The connection that served the entity when the switch was recorded (None: none did).
    from_connection = models.ForeignKey(
        Connection, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    to_connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="+")
    effective_at = models.DateTimeField(help_text="New work goes to the new connection from then.")
    applied_at = models.DateTimeField(
        null=True, blank=True, help_text="When the route was changed (empty: not yet due)."
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-effective_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(from_connection=models.F("to_connection")),
                name="routeswitch_moves_somewhere",
            ),
        ]
        indexes = [
            models.Index(
                fields=["role", "legal_entity", "effective_at"],
                name="routeswitch_entity_effective",
            ),
            models.Index(
                fields=["effective_at"],
                condition=Q(applied_at__isnull=True),
                name="routeswitch_due",
            ),
        ]

    def __str__(self) -> str:
        entity = self.legal_entity.code if self.legal_entity else "default"
        source = self.from_connection.name if self.from_connection else "(none)"
        return (
            f"{self.get_role_display()} for {entity}: {source} -> {self.to_connection.name} "
            f"from {self.effective_at:%Y-%m-%d %H:%M}"
        )
