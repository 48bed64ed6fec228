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
    BillingBasis,
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
    billing_basis,
)
from integrations.selectors import poll_health
from integrations.services.schedules import poll_staleness


def invoices_by_entity_and_status() -> list[Mapping[str, Any]]:
    return list(
        Invoice.objects.values("legal_entity__code", "legal_entity__name", "status", "currency")
        .annotate(count=Count("id"), total=Sum("total"), due=Sum("amount_due"))
        .order_by("legal_entity__code", "status", "currency")
    )


def unbilled_approved_time() -> list[Mapping[str, Any]]:
    """Approved billable time no billing run has taken yet, by how it is billed: one row per
    billing basis (hourly time the billing run invoices; fixed-fee time milestones bill; time on
    projects with no contract, held until they have one), each with its hours, entries and
    rows per legal entity. The rule is the billing run's own (TimeEntry.objects.unbilled,
    Contract.HOURLY_MODELS), so the page counts what the run will take. One query."""
    per_entity = (
        TimeEntry.objects.unbilled()
        .annotate(billing_basis=billing_basis())
        .values("billing_basis", "project__legal_entity__code", "project__legal_entity__name")
        .annotate(hours=Sum("hours"), entries=Count("id"), projects=Count("project", distinct=True))
        .order_by("billing_basis", "project__legal_entity__code")
    )
    by_basis: dict[str, list[Mapping[str, Any]]] = {basis: [] for basis in BillingBasis.values}
    for row in per_entity:
        by_basis[row["billing_basis"]].append(row)
    return [
        {
            "basis": basis,
            "label": BillingBasis(basis).label,
            "hours": sum((r["hours"] for r in rows), Decimal("0")),
            "entries": sum(r["entries"] for r in rows),
            "by_entity": rows,
        }
        for basis, rows in by_basis.items()
    ]


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


def connections_overview() -> list[Connection]:
    """Connections with their circuit state, the last hour's calls by outcome and their polls'
    health (``poll``: last error, failing since, cursor age; integrations.selectors.poll_health),
    in three queries (four once a connection has been polled: its schedule's interval).

    Each count is a subquery per connection, so rows never multiply and only the last hour's
    attempts are read (through the ``(connection, -started_at)`` index).
    """
    hour_ago = timezone.now() - timedelta(hours=1)
    recent = SyncAttempt.objects.filter(started_at__gte=hour_ago)
    connections: list[Connection] = list(
        Connection.objects.select_related("health")
        .prefetch_related("cursors")
        .annotate(
            xref_count=_count_per_connection(CrossReference.objects.all()),
            calls_ok=_count_per_connection(recent.filter(outcome=SyncAttempt.Outcome.SUCCESS)),
            calls_failed=_count_per_connection(recent.exclude(outcome=SyncAttempt.Outcome.SUCCESS)),
            calls_throttled=_count_per_connection(recent.filter(status_code=429)),
        )
        .order_by("role", "name")
    )
    now = timezone.now()
    # Each connection's own polling interval: one more query, when any has been polled.
    polled = any(c.cursors.all() for c in connections)
    staleness = poll_staleness() if polled else None
    for connection in connections:
        connection.poll = poll_health(  # type: ignore[attr-defined]
            connection.cursors.all(), now=now, staleness=staleness
        )
    return connections


def ownership_rules() -> QuerySet[OwnershipRule]:
    return OwnershipRule.objects.order_by("object_type", "field")


def heartbeats() -> QuerySet[Heartbeat]:
    return Heartbeat.objects.order_by("component", "-seen_at")


def total_hours(rows: list[Mapping[str, Any]]) -> Decimal:
    return sum((row["hours"] or Decimal("0") for row in rows), Decimal("0"))
