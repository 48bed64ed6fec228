"""FilterSets for the API: the lookups people and the workflows actually make."""

from __future__ import annotations

from typing import Any

import django_filters

from integrations import models as m

_DATE = ["exact", "gte", "lte"]

# model -> {field: lookups}. Foreign keys filter by id; dates by range.
RECORD_FILTERS: dict[type[m.CanonicalRecord], dict[str, list[str]]] = {
    m.LegalEntity: {"code": ["exact"], "country": ["exact"], "base_currency": ["exact"]},
    m.TaxRate: {"code": ["exact"], "country": ["exact"], "active": ["exact"]},
    m.Customer: {
        "name": ["exact", "icontains"],
        "legal_entity": ["exact", "isnull"],
        "country": ["exact"],
        "currency": ["exact"],
        "active": ["exact"],
    },
    m.Contract: {
        "number": ["exact"],
        "customer": ["exact"],
        "legal_entity": ["exact", "isnull"],
        "billing_model": ["exact"],
        "status": ["exact"],
        "currency": ["exact"],
    },
    m.Project: {
        "code": ["exact"],
        "customer": ["exact"],
        "contract": ["exact"],
        "legal_entity": ["exact"],
        "region": ["exact"],
        "status": ["exact"],
    },
    m.Resource: {"email": ["exact"], "role": ["exact"], "active": ["exact"]},
    m.Assignment: {"project": ["exact"], "resource": ["exact"], "role": ["exact"]},
    m.RateCard: {"contract": ["exact", "isnull"], "role": ["exact"], "currency": ["exact"]},
    m.TimeEntry: {
        "project": ["exact"],
        "resource": ["exact"],
        "approval_state": ["exact"],
        "billable": ["exact"],
        "date": _DATE,
    },
    m.Expense: {
        "project": ["exact"],
        "resource": ["exact"],
        "approval_state": ["exact"],
        "category": ["exact"],
        "currency": ["exact"],
        "date": _DATE,
    },
    m.Milestone: {"project": ["exact"], "status": ["exact"], "due_date": _DATE},
    m.BillingEvent: {
        "project": ["exact"],
        "legal_entity": ["exact"],
        "source": ["exact"],
        "status": ["exact"],
        "currency": ["exact"],
        "invoice": ["exact", "isnull"],
    },
    m.Invoice: {
        "legal_entity": ["exact"],
        "customer": ["exact"],
        "status": ["exact"],
        "currency": ["exact"],
        "number": ["exact"],
        "issue_date": _DATE,
    },
    m.Payment: {"invoice": ["exact"], "currency": ["exact"], "date": _DATE},
    m.ExchangeRate: {"base_currency": ["exact"], "quote_currency": ["exact"], "date": _DATE},
}


def record_filterset(model: type[m.CanonicalRecord]) -> type[django_filters.FilterSet]:
    fields: dict[str, Any] = {
        **RECORD_FILTERS[model],
        "source_system": ["exact"],
        "updated_at": ["gte", "lte"],
    }
    meta = type("Meta", (), {"model": model, "fields": fields})
    return type(f"{model.__name__}FilterSet", (django_filters.FilterSet,), {"Meta": meta})


class ConnectionFilterSet(django_filters.FilterSet):
    class Meta:
        model = m.Connection
        fields = ["role", "vendor", "enabled"]


class CrossReferenceFilterSet(django_filters.FilterSet):
    object_type = django_filters.CharFilter(field_name="content_type__model")

    class Meta:
        model = m.CrossReference
        fields = ["connection", "object_type", "object_id", "external_id"]


class OwnershipRuleFilterSet(django_filters.FilterSet):
    class Meta:
        model = m.OwnershipRule
        fields = ["object_type", "owner_role"]
