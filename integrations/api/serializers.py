from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from integrations import models as m
from integrations.mapping.ownership_rules import ownership_rule_create, ownership_rule_update
from integrations.roles import CANONICAL_MODELS
from integrations.selectors import poll_health
from integrations.services.config_rows import config_row_create, config_row_update
from integrations.services.connections import connection_create, connection_update
from integrations.services.schedules import PollStaleness, poll_staleness
from integrations.sync.records import record_create, record_update

# Set by the sync engine, not by people: shown, never written through the API.
SYNC_FIELDS = ("source_system", "source_version", "field_sources", "created_at", "updated_at")


@contextmanager
def django_errors_as_api_errors() -> Iterator[None]:
    """A model validation error from a service becomes a 400 naming the fields."""
    try:
        yield
    except DjangoValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        raise serializers.ValidationError(detail) from exc


class RecordSerializer(serializers.ModelSerializer[Any]):
    """Writes go through the one write path of canonical records (integrations.sync.records):
    validated as every sync write is, stamped as the person's, audited."""

    def create(self, validated_data: dict[str, Any]) -> Any:
        with django_errors_as_api_errors():
            return record_create(
                model=self.Meta.model, data=validated_data, actor=self.context["request"].user
            )

    def update(self, instance: Any, validated_data: dict[str, Any]) -> Any:
        with django_errors_as_api_errors():
            return record_update(
                record=instance, data=validated_data, actor=self.context["request"].user
            )


class ConfigRowSerializer(serializers.ModelSerializer[Any]):
    """Writes of configuration rows go through their audited service."""

    def create(self, validated_data: dict[str, Any]) -> Any:
        with django_errors_as_api_errors():
            return config_row_create(
                model=self.Meta.model, data=validated_data, actor=self.context["request"].user
            )

    def update(self, instance: Any, validated_data: dict[str, Any]) -> Any:
        with django_errors_as_api_errors():
            return config_row_update(
                row=instance, data=validated_data, actor=self.context["request"].user
            )


def record_serializer(model: type[m.CanonicalRecord]) -> type[RecordSerializer]:
    meta = type("Meta", (), {"model": model, "fields": "__all__", "read_only_fields": SYNC_FIELDS})
    return type(f"{model.__name__}Serializer", (RecordSerializer,), {"Meta": meta})


class PollObjectHealthSerializer(serializers.Serializer[Any]):
    object_type = serializers.CharField()
    last_success_at = serializers.DateTimeField(allow_null=True)
    failing_since = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    cursor_age_s = serializers.IntegerField(
        allow_null=True, help_text="Seconds since this object was last read whole."
    )
    stale = serializers.BooleanField(help_text="Older than the poll SLA (a case is open).")


class PollHealthSerializer(serializers.Serializer[Any]):
    state = serializers.ChoiceField(choices=["ok", "failing", "stale", "not polled"])
    failing_since = serializers.DateTimeField(
        allow_null=True, help_text="The first failed poll since the last success."
    )
    last_error = serializers.CharField(help_text="The latest failure, with its object type.")
    cursor_age_s = serializers.IntegerField(
        allow_null=True, help_text="Seconds since the oldest cursor last read everything."
    )
    objects = PollObjectHealthSerializer(many=True)


class ConnectionHealthSerializer(serializers.Serializer[Any]):
    circuit_state = serializers.CharField(allow_null=True)
    last_call_success_at = serializers.DateTimeField(allow_null=True)
    last_call_failure_at = serializers.DateTimeField(allow_null=True)
    last_call_error = serializers.CharField()
    poll = PollHealthSerializer()


class ConnectionSerializer(serializers.ModelSerializer[m.Connection]):
    credentials = serializers.DictField(
        child=serializers.CharField(allow_null=True, trim_whitespace=False),
        write_only=True,
        required=False,
        help_text=(
            "Secrets to store (merged by key; null removes a key). Never returned. A change "
            "that sends them to a new origin (base_url or a *_url credential on another host) "
            "must give every stored key again (or null), else it is refused with a 400."
        ),
    )
    credential_keys = serializers.ListField(child=serializers.CharField(), read_only=True)
    credential_origins = serializers.SerializerMethodField(
        help_text="The origins (scheme://host[:port]) the stored credentials may be sent to."
    )
    health = serializers.SerializerMethodField(
        help_text="Calls (the circuit breaker) and polls (last error, failing since, cursor age)."
    )

    class Meta:
        model = m.Connection
        fields = [
            "id",
            "name",
            "role",
            "vendor",
            "base_url",
            "rate_limit_per_minute",
            "max_concurrency",
            "enabled",
            "credentials",
            "credential_keys",
            "credential_origins",
            "health",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def _staleness(self) -> PollStaleness:
        """Each connection's own polling interval, read once per request."""
        context = cast(dict[str, Any], self.context)  # the dict the view passed
        if "poll_staleness" not in context:
            context["poll_staleness"] = poll_staleness()
        staleness: PollStaleness = context["poll_staleness"]
        return staleness

    def get_credential_origins(self, connection: m.Connection) -> list[str]:
        return list(connection.credential_origins or ()) if connection.credentials else []

    @extend_schema_field(ConnectionHealthSerializer)
    def get_health(self, connection: m.Connection) -> dict[str, Any]:
        calls = getattr(connection, "health", None)  # no row until the first call
        return ConnectionHealthSerializer(
            {
                "circuit_state": calls.circuit_state if calls else None,
                "last_call_success_at": calls.last_success_at if calls else None,
                "last_call_failure_at": calls.last_failure_at if calls else None,
                "last_call_error": calls.last_error if calls else "",
                "poll": poll_health(connection.cursors.all(), staleness=self._staleness()),
            }
        ).data

    def create(self, validated_data: dict[str, Any]) -> m.Connection:
        with django_errors_as_api_errors():
            return connection_create(actor=self.context["request"].user, **validated_data)

    def update(self, instance: m.Connection, validated_data: dict[str, Any]) -> m.Connection:
        with django_errors_as_api_errors():
            return connection_update(
                connection=instance, actor=self.context["request"].user, **validated_data
            )


class CrossReferenceSerializer(ConfigRowSerializer):
    object_type = serializers.SlugRelatedField(
        source="content_type",
        slug_field="model",
        queryset=ContentType.objects.filter(app_label="integrations", model__in=CANONICAL_MODELS),
        help_text="Canonical model name, e.g. customer.",
    )

    class Meta:
        model = m.CrossReference
        fields = [
            "id",
            "object_type",
            "object_id",
            "connection",
            "external_id",
            "external_version",
            "last_synced_at",
            "created_at",
        ]
        read_only_fields = ["created_at"]


class OwnershipRuleSerializer(ConfigRowSerializer):
    """Checked against the canonical models, as on the console's page."""

    class Meta:
        model = m.OwnershipRule
        fields = ["id", "object_type", "field", "owner_role", "note", "updated_at"]
        read_only_fields = ["updated_at"]

    def create(self, validated_data: dict[str, Any]) -> Any:
        with django_errors_as_api_errors():
            return ownership_rule_create(data=validated_data, actor=self.context["request"].user)

    def update(self, instance: Any, validated_data: dict[str, Any]) -> Any:
        with django_errors_as_api_errors():
            return ownership_rule_update(
                rule=instance, data=validated_data, actor=self.context["request"].user
            )


class AuditEventSerializer(serializers.ModelSerializer[m.AuditEvent]):
    class Meta:
        model = m.AuditEvent
        fields = [
            "id",
            "at",
            "actor",
            "actor_label",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "changes",
        ]
