"""The console tables' filters (django-filter): each a plain GET form whose values stay in the
URL, so a filtered table can be bookmarked, reloaded and exported as it is shown."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q, QuerySet
from django_celery_beat.models import PeriodicTask

from exceptions.catalogue import CATALOGUE
from exceptions.models import CaseRoute, ExceptionCase, WorkQueue
from integrations import models as m
from integrations.services.schedules import (
    POLL_ROW_PREFIX,
    RECONCILE_ROW_PREFIX,
    poll_task_name,
    reconcile_task_name,
)

YES_NO = [("yes", "Yes"), ("no", "No")]


def _yes_no(rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
    return rows.filter(**{name: value == "yes"})


class ConnectionFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(field_name="name", lookup_expr="icontains", label="Name")
    vendor = django_filters.ChoiceFilter(choices=m.Vendor.choices, empty_label="Any")
    role = django_filters.ChoiceFilter(choices=m.SystemRole.choices, empty_label="Any")
    enabled = django_filters.ChoiceFilter(
        choices=YES_NO, method="filter_enabled", label="Enabled", empty_label="Any"
    )

    class Meta:
        model = m.Connection
        fields: list[str] = []

    def filter_enabled(
        self, rows: QuerySet[m.Connection], name: str, value: str
    ) -> QuerySet[m.Connection]:
        return _yes_no(rows, "enabled", value)


KINDS = [
    ("polling", "Polling a connection"),
    ("reconciliation", "Reconciling a connection"),
    ("system", "System work"),
]


class ScheduleFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_q", label="Name or task")
    kind = django_filters.ChoiceFilter(
        choices=KINDS, method="filter_kind", label="Kind", empty_label="Any"
    )
    enabled = django_filters.ChoiceFilter(
        choices=YES_NO, method="filter_enabled", label="Running", empty_label="Any"
    )
    connection = django_filters.ModelChoiceFilter(
        queryset=m.Connection.objects.order_by("name"),
        method="filter_connection",
        label="Connection",
        empty_label="Any",
    )

    class Meta:
        model = PeriodicTask
        fields: list[str] = []

    def filter_connection(
        self, rows: QuerySet[Any], name: str, value: m.Connection | None
    ) -> QuerySet[Any]:
        if value is None:
            return rows
        return rows.filter(name__in=[poll_task_name(value.pk), reconcile_task_name(value.pk)])

    def filter_q(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        value = value.strip()
        if not value:
            return rows
        return rows.filter(
            Q(name__icontains=value) | Q(task__icontains=value) | Q(description__icontains=value)
        )

    def filter_kind(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        polling = Q(name__startswith=POLL_ROW_PREFIX)
        reconciling = Q(name__startswith=RECONCILE_ROW_PREFIX)
        if value == "polling":
            return rows.filter(polling)
        if value == "reconciliation":
            return rows.filter(reconciling)
        return rows.exclude(polling | reconciling)

    def filter_enabled(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return _yes_no(rows, "enabled", value)


def _object_choices() -> list[tuple[str, str]]:
    return [
        (name, name)
        for name in m.OwnershipRule.objects.order_by()
        .values_list("object_type", flat=True)
        .distinct()
    ]


class OwnershipRuleFilterSet(django_filters.FilterSet):
    object_type = django_filters.ChoiceFilter(
        choices=_object_choices, label="Object", empty_label="Any"
    )
    owner_role = django_filters.ChoiceFilter(
        choices=m.SystemRole.choices, label="Owner", empty_label="Any"
    )
    scope = django_filters.ChoiceFilter(
        choices=[("object", "Whole object"), ("field", "One field")],
        method="filter_scope",
        label="Covers",
        empty_label="Any",
    )
    q = django_filters.CharFilter(method="filter_q", label="Field or note")

    class Meta:
        model = m.OwnershipRule
        fields: list[str] = []

    def filter_scope(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        return rows.filter(field="") if value == "object" else rows.exclude(field="")

    def filter_q(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        value = value.strip()
        if not value:
            return rows
        return rows.filter(Q(field__icontains=value) | Q(note__icontains=value))


def _case_type_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(CATALOGUE)]


def _queue_choices() -> list[tuple[str, str]]:
    return list(WorkQueue.objects.order_by("name").values_list("code", "name"))


class CaseRouteFilterSet(django_filters.FilterSet):
    case_type = django_filters.ChoiceFilter(
        choices=_case_type_choices, label="Case type", empty_label="Any"
    )
    queue = django_filters.ChoiceFilter(
        choices=_queue_choices, field_name="queue_id", label="Queue", empty_label="Any"
    )
    priority = django_filters.ChoiceFilter(
        choices=ExceptionCase.Priority.choices, label="Priority", empty_label="Any"
    )
    legal_entity = django_filters.ModelChoiceFilter(
        queryset=m.LegalEntity.objects.order_by("code"), label="Legal entity", empty_label="Any"
    )
    q = django_filters.CharFilter(method="filter_q", label="Process or note")

    class Meta:
        model = CaseRoute
        fields: list[str] = []

    def filter_q(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        value = value.strip()
        if not value:
            return rows
        return rows.filter(Q(process__icontains=value) | Q(note__icontains=value))


class RoutingRuleFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_q", label="Legal entity")
    connection = django_filters.ModelChoiceFilter(
        queryset=m.Connection.objects.filter(role=m.SystemRole.ERP).order_by("name"),
        label="ERP connection",
        empty_label="Any",
    )

    class Meta:
        model = m.RoutingRule
        fields: list[str] = []

    def filter_q(self, rows: QuerySet[Any], name: str, value: str) -> QuerySet[Any]:
        value = value.strip()
        if not value:
            return rows
        return rows.filter(
            Q(legal_entity__code__icontains=value) | Q(legal_entity__name__icontains=value)
        )
