"""GET /api/v1/reconciliation/runs/ and /api/v1/reconciliation/gaps/: what each ERP
connection's reconciliation compared and found (integrations/workflows/reconciliation.py).

Finance and integration admins (``view_reconciliationrun`` / ``view_reconciliationgap``);
everyone else 403. Read-only: runs are made by the schedule, and a gap is fixed where it lives
(its case says how).
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from rest_framework import serializers, viewsets

from integrations import models as m
from integrations import selectors


class ReconciliationRunFilterSet(django_filters.FilterSet):
    started_after = django_filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = django_filters.IsoDateTimeFilter(field_name="started_at", lookup_expr="lt")
    has_gaps = django_filters.BooleanFilter(method="filter_has_gaps", label="Found gaps")

    class Meta:
        model = m.ReconciliationRun
        fields = ["connection", "state"]

    def filter_has_gaps(
        self, rows: QuerySet[m.ReconciliationRun], name: str, value: bool | None
    ) -> QuerySet[m.ReconciliationRun]:
        if value is None:
            return rows
        return rows.filter(gap_count__gt=0) if value else rows.filter(gap_count=0)


class ReconciliationGapFilterSet(django_filters.FilterSet):
    connection = django_filters.NumberFilter(field_name="run__connection_id")
    project_code = django_filters.CharFilter(field_name="project__code", lookup_expr="iexact")
    period_from = django_filters.DateFilter(field_name="period", lookup_expr="gte")
    period_to = django_filters.DateFilter(field_name="period", lookup_expr="lte")
    latest = django_filters.BooleanFilter(
        method="filter_latest", label="Only each connection's latest finished run"
    )

    class Meta:
        model = m.ReconciliationGap
        fields = ["run", "kind", "project", "invoice", "period", "currency", "exception_case"]

    def filter_latest(
        self, rows: QuerySet[m.ReconciliationGap], name: str, value: bool | None
    ) -> QuerySet[m.ReconciliationGap]:
        if not value:
            return rows
        latest = (
            m.ReconciliationRun.objects.filter(state=m.ReconciliationState.DONE)
            .order_by("connection_id", "-started_at", "-id")
            .distinct("connection_id")
            .values("pk")
        )
        return rows.filter(run_id__in=latest)


class ReconciliationRunSerializer(serializers.ModelSerializer[m.ReconciliationRun]):
    connection_name = serializers.CharField(source="connection.name", read_only=True)

    class Meta:
        model = m.ReconciliationRun
        fields = [
            "id",
            "connection",
            "connection_name",
            "state",
            "period_from",
            "period_to",
            "started_at",
            "finished_at",
            "duration_ms",
            "gap_count",
            "cases_touched",
            "records_cleared",
            "cases_resolved",
            "error",
        ]


class ReconciliationGapSerializer(serializers.ModelSerializer[m.ReconciliationGap]):
    kind_label = serializers.CharField(source="get_kind_display", read_only=True)
    project_code = serializers.CharField(source="project.code", read_only=True, default=None)
    invoice_number = serializers.CharField(source="invoice.number", read_only=True, default=None)
    case_status = serializers.CharField(
        source="exception_case.status", read_only=True, default=None
    )
    case_message = serializers.CharField(
        source="exception_case.message", read_only=True, default=None
    )

    class Meta:
        model = m.ReconciliationGap
        fields = [
            "id",
            "run",
            "kind",
            "kind_label",
            "project",
            "project_code",
            "invoice",
            "invoice_number",
            "period",
            "measure",
            "expected",
            "found",
            "difference",
            "hours",
            "amount",
            "currency",
            "records",
            "detail",
            "exception_case",
            "case_status",
            "case_message",
        ]


class ReconciliationRunViewSet(viewsets.ReadOnlyModelViewSet[m.ReconciliationRun]):
    """Reconciliation runs, newest first: one per ERP connection per schedule tick."""

    serializer_class = ReconciliationRunSerializer
    filterset_class = ReconciliationRunFilterSet
    ordering_fields = ["started_at", "gap_count", "duration_ms"]

    def get_queryset(self) -> QuerySet[m.ReconciliationRun]:
        return selectors.reconciliation_run_list()


class ReconciliationGapViewSet(viewsets.ReadOnlyModelViewSet[m.ReconciliationGap]):
    """The gaps each run found (``latest=true``: only each connection's latest run), with both
    sides' figures and the case that reports it."""

    serializer_class = ReconciliationGapSerializer
    filterset_class = ReconciliationGapFilterSet
    ordering_fields = ["period", "amount", "hours", "difference", "kind"]

    def get_queryset(self) -> QuerySet[m.ReconciliationGap]:
        return selectors.reconciliation_gap_list()
