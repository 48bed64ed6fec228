from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.models import ContentType
from rest_framework import serializers

from integrations import models as m
from integrations.roles import CANONICAL_MODELS
from integrations.services.connections import connection_create, connection_update

# Set by the sync engine, not by people: shown, never written through the API.
SYNC_FIELDS = ("source_system", "source_version", "field_sources", "created_at", "updated_at")


def record_serializer(model: type[m.CanonicalRecord]) -> type[serializers.ModelSerializer[Any]]:
    meta = type("Meta", (), {"model": model, "fields": "__all__", "read_only_fields": SYNC_FIELDS})
    return type(f"{model.__name__}Serializer", (serializers.ModelSerializer,), {"Meta": meta})


class ConnectionSerializer(serializers.ModelSerializer[m.Connection]):
    credentials = serializers.DictField(
        child=serializers.CharField(allow_null=True, trim_whitespace=False),
        write_only=True,
        required=False,
        help_text="Secrets to store (merged by key; null removes a key). Never returned.",
    )
    credential_keys = serializers.ListField(child=serializers.CharField(), read_only=True)

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
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        vendor = attrs.get("vendor", getattr(self.instance, "vendor", None))
        role = attrs.get("role", getattr(self.instance, "role", None))
        expected = m.VENDOR_ROLES.get(str(vendor))
        if expected != role:
            raise serializers.ValidationError(
                {"role": f"A {vendor} connection plays the {expected} role, not {role}."}
            )
        return attrs

    def create(self, validated_data: dict[str, Any]) -> m.Connection:
        return connection_create(**validated_data)

    def update(self, instance: m.Connection, validated_data: dict[str, Any]) -> m.Connection:
        return connection_update(connection=instance, **validated_data)


class CrossReferenceSerializer(serializers.ModelSerializer[m.CrossReference]):
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


class OwnershipRuleSerializer(serializers.ModelSerializer[m.OwnershipRule]):
    class Meta:
        model = m.OwnershipRule
        fields = ["id", "object_type", "field", "owner_role", "note", "updated_at"]
        read_only_fields = ["updated_at"]
