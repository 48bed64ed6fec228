"""Read-only queries behind the role pages. Each returns plain rows, a fixed number of queries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from integrations.models import (
    ApprovalState,
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    Heartbeat,
    Invoice,
    OwnershipRule,
    Project,
    SyncAttempt,
    TimeEntry,
)


def invoices_by_entity_and_status() -> list[Mapping[str, Any]]:
    return list(
        Invoice.objects.values("legal_entity__code", "legal_entity__name", "status", "currency")
        .annotate(count=Count("id"), total=Sum("total"), due=Sum("amount_due"))
        .order_by("legal_entity__code", "status", "currency")
    )


def unbilled_approved_time() -> list[Mapping[str, Any]]:
    """Approved billable hours not yet on an invoice, per legal entity."""
    return list(
        TimeEntry.objects.filter(approval_state=ApprovalState.APPROVED, billable=True)
        .exclude(billing_event__status=BillingEvent.Status.INVOICED)
        .values("project__legal_entity__code", "project__legal_entity__name")
        .annotate(hours=Sum("hours"), entries=Count("id"), projects=Count("project", distinct=True))
        .order_by("project__legal_entity__code")
    )


def customers_missing_tax_number() -> QuerySet[Customer]:
    return (
        Customer.objects.filter(active=True, tax_number="")
        .select_related("legal_entity")
        .order_by("name")
    )


def projects_by_region_and_status() -> list[Mapping[str, Any]]:
    return list(
        Project.objects.values("region", "status")
        .annotate(count=Count("id"), budget=Sum("budget"))
        .order_by("region", "status")
    )


def time_on_closed_projects() -> list[Mapping[str, Any]]:
    return list(
        TimeEntry.objects.filter(project__status=Project.Status.CLOSED)
        .values("project__code", "project__name")
        .annotate(hours=Sum("hours"), entries=Count("id"))
        .order_by("-hours")
    )


def commercial_data_gaps() -> dict[str, QuerySet[Any]]:
    return {
        "customers_without_entity": Customer.objects.filter(
            legal_entity__isnull=True, active=True
        ).order_by("name"),
        "contracts_incomplete": Contract.objects.filter(
            Q(legal_entity__isnull=True) | Q(tax_rate__isnull=True),
            status=Contract.Status.ACTIVE,
        )
        .select_related("customer", "legal_entity", "tax_rate")
        .order_by("number"),
    }


def _count_per_connection(rows: QuerySet[Any]) -> Coalesce:
    """How many of ``rows`` belong to the outer query's connection (a subquery; 0 if none)."""
    counted = (
        rows.filter(connection=OuterRef("pk"))
        .order_by()
        .values("connection")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def connections_overview() -> QuerySet[Connection]:
    """Connections with their circuit state and the last hour's calls by outcome (one query).

    Each count is a subquery per connection, so rows never multiply and only the last hour's
    attempts are read (through the ``(connection, -started_at)`` index).
    """
    hour_ago = timezone.now() - timedelta(hours=1)
    recent = SyncAttempt.objects.filter(started_at__gte=hour_ago)
    return (
        Connection.objects.select_related("health")
        .annotate(
            xref_count=_count_per_connection(CrossReference.objects.all()),
            calls_ok=_count_per_connection(recent.filter(outcome=SyncAttempt.Outcome.SUCCESS)),
            calls_failed=_count_per_connection(recent.exclude(outcome=SyncAttempt.Outcome.SUCCESS)),
            calls_throttled=_count_per_connection(recent.filter(status_code=429)),
        )
        .order_by("role", "name")
    )


def ownership_rules() -> QuerySet[OwnershipRule]:
    return OwnershipRule.objects.order_by("object_type", "field")


def heartbeats() -> QuerySet[Heartbeat]:
    return Heartbeat.objects.order_by("component", "-seen_at")


def total_hours(rows: list[Mapping[str, Any]]) -> Decimal:
    return sum((row["hours"] or Decimal("0") for row in rows), Decimal("0"))
