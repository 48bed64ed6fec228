from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import viewsets

from integrations import models as m
from integrations import selectors
from integrations.api import filters, serializers
from integrations.services.config_rows import config_row_delete
from integrations.sync.records import record_delete

# URL segment -> canonical model. The order is the order of the API index.
RECORD_ENDPOINTS: dict[str, type[m.CanonicalRecord]] = {
    "legal-entities": m.LegalEntity,
    "customers": m.Customer,
    "contracts": m.Contract,
    "projects": m.Project,
    "resources": m.Resource,
    "assignments": m.Assignment,
    "rate-cards": m.RateCard,
    "time-entries": m.TimeEntry,
    "expenses": m.Expense,
    "milestones": m.Milestone,
    "billing-events": m.BillingEvent,
    "invoices": m.Invoice,
    "payments": m.Payment,
    "exchange-rates": m.ExchangeRate,
    "tax-rates": m.TaxRate,
}


class RecordViewSet(viewsets.ModelViewSet[Any]):
    model: type[m.CanonicalRecord]

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.record_list(model=self.model)

    def perform_destroy(self, instance: Any) -> None:
        record_delete(record=instance, actor=self.request.user)


def record_viewset(model: type[m.CanonicalRecord]) -> type[RecordViewSet]:
    """A CRUD endpoint for one canonical record type, filtered, ordered and paginated."""
    attrs = {
        "model": model,
        "serializer_class": serializers.record_serializer(model),
        "filterset_class": filters.record_filterset(model),
        "ordering_fields": "__all__",
        "__doc__": f"{str(model._meta.verbose_name_plural).capitalize()} (canonical records).",
    }
    return type(f"{model.__name__}ViewSet", (RecordViewSet,), attrs)


class ConnectionViewSet(viewsets.ModelViewSet[m.Connection]):
    """Configured external systems. Credentials are write-only: only their key names are shown."""

    serializer_class = serializers.ConnectionSerializer
    filterset_class = filters.ConnectionFilterSet
    ordering_fields = ["name", "role", "vendor", "created_at"]

    def get_queryset(self) -> QuerySet[m.Connection]:
        return selectors.connection_list()


class ConfigRowViewSet(viewsets.ModelViewSet[Any]):
    """Configuration rows: created and changed through their serializer's audited service."""

    def perform_destroy(self, instance: Any) -> None:
        config_row_delete(row=instance, actor=self.request.user)


class CrossReferenceViewSet(ConfigRowViewSet):
    """Identities of canonical records in each connected system."""

    serializer_class = serializers.CrossReferenceSerializer
    filterset_class = filters.CrossReferenceFilterSet
    ordering_fields = ["external_id", "created_at", "last_synced_at"]

    def get_queryset(self) -> QuerySet[m.CrossReference]:
        return selectors.cross_reference_list()


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet[m.AuditEvent]):
    """Who changed what, newest first. Filter by object_type and object_id for one record."""

    serializer_class = serializers.AuditEventSerializer
    filterset_fields = ["object_type", "object_id", "action", "actor"]

    def get_queryset(self) -> QuerySet[m.AuditEvent]:
        return selectors.audit_event_list()


class OwnershipRuleViewSet(ConfigRowViewSet):
    """Which system owns each object and field."""

    serializer_class = serializers.OwnershipRuleSerializer
    filterset_class = filters.OwnershipRuleFilterSet

    def get_queryset(self) -> QuerySet[m.OwnershipRule]:
        return selectors.ownership_rule_list()
