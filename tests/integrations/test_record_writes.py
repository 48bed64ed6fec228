"""People's writes through the API: constraint violations come back as readable 400s, and every
change is audited with who, what and the old and new values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from integrations.models import AuditEvent, Customer
from integrations.roles import FINANCE, INTEGRATION_ADMIN, SALES_OPS
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def test_create_and_update_are_audited_with_old_and_new_values(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(SALES_OPS, username="sales.writer")
    created = client.post(
        "/api/v1/customers/", {"name": "Wayne Enterprises", "currency": "USD"}, format="json"
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    updated = client.patch(f"/api/v1/customers/{pk}/", {"name": "Wayne Ent."}, format="json")
    assert updated.status_code == 200

    events = list(AuditEvent.objects.filter(object_type="customer", object_id=str(pk)))
    assert [e.action for e in events] == ["update", "create"]
    assert events[0].actor_label == "sales.writer"
    assert events[0].changes == {"name": ["Wayne Enterprises", "Wayne Ent."]}
    assert events[1].changes["currency"] == [None, "USD"]


def test_unchanged_update_writes_no_audit_event(api_client_as: Callable[..., APIClient]) -> None:
    customer = CustomerFactory.create(name="Same")
    client = api_client_as(FINANCE)
    client.patch(f"/api/v1/customers/{customer.pk}/", {"name": "Same"}, format="json")
    assert not AuditEvent.objects.filter(object_type="customer").exists()


def test_check_constraint_violation_is_a_readable_400_and_changes_nothing(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(FINANCE)
    response = client.post(
        "/api/v1/exchange-rates/",
        {"base_currency": "EUR", "quote_currency": "EUR", "date": "2026-11-20", "rate": "1"},
        format="json",
    )
    assert response.status_code == 400
    assert "exchangerate_distinct_currencies" in response.content.decode()
    bad_currency = client.post(
        "/api/v1/customers/", {"name": "X", "currency": "eur"}, format="json"
    )
    assert bad_currency.status_code == 400
    assert "three-letter ISO 4217" in bad_currency.json()["currency"][0]
    assert not Customer.objects.filter(name="X").exists()
    assert not AuditEvent.objects.exists()


def test_only_integration_admins_read_the_audit_trail(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(FINANCE)
    assert client.get("/api/v1/audit-events/").status_code == 403
    admin = api_client_as(INTEGRATION_ADMIN)
    assert admin.get("/api/v1/audit-events/").status_code == 200
