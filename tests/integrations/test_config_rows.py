"""Configuration rows (ownership rules, routing rules, cross-references) written by people,
through the API or the admin: validated, and audited with before and after values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from rest_framework.test import APIClient

from integrations.models import AuditEvent, CrossReference, OwnershipRule, RoutingRule
from integrations.roles import INTEGRATION_ADMIN
from tests.factories import CustomerFactory, LegalEntityFactory, make_connection

pytestmark = pytest.mark.django_db


def test_an_ownership_rule_created_and_changed_through_the_api_is_audited(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(INTEGRATION_ADMIN, username="ada")
    created = client.post(
        "/api/v1/ownership-rules/",
        {"object_type": "project", "field": "region", "owner_role": "crm"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    rule_id = created.json()["id"]
    changed = client.patch(
        f"/api/v1/ownership-rules/{rule_id}/", {"owner_role": "psa"}, format="json"
    )
    assert changed.status_code == 200
    assert OwnershipRule.objects.get(pk=rule_id).owner_role == "psa"
    # Rules are changed, never deleted, by integration admins (integrations/roles.py).
    assert client.delete(f"/api/v1/ownership-rules/{rule_id}/").status_code == 403

    events = AuditEvent.objects.filter(object_type="ownershiprule", object_id=str(rule_id))
    create, update = events.order_by("id")
    assert (create.action, create.actor_label) == ("create", "ada")
    assert create.changes["owner_role"] == [None, "crm"]
    assert update.changes == {"owner_role": ["crm", "psa"]}


def test_a_cross_reference_deleted_through_the_api_is_audited_with_what_it_was(
    api_client_as: Callable[..., APIClient],
) -> None:
    customer = CustomerFactory.create()
    xref = CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(customer),
        object_id=customer.pk,
        connection=make_connection(),
        external_id="CONTACT-1",
    )
    response = api_client_as(INTEGRATION_ADMIN).delete(f"/api/v1/cross-references/{xref.pk}/")
    assert response.status_code == 204
    assert not CrossReference.objects.filter(pk=xref.pk).exists()
    (event,) = AuditEvent.objects.filter(object_type="crossreference", object_id=str(xref.pk))
    assert event.action == "delete"
    assert event.changes["external_id"] == ["CONTACT-1", None]


def test_an_invalid_ownership_rule_is_refused_naming_the_field_and_not_audited(
    api_client_as: Callable[..., APIClient],
) -> None:
    response = api_client_as(INTEGRATION_ADMIN).post(
        "/api/v1/ownership-rules/",
        {"object_type": "project", "field": "region", "owner_role": "bank"},
        format="json",
    )
    assert response.status_code == 400
    assert "owner_role" in response.json()
    assert not AuditEvent.objects.filter(object_type="ownershiprule").exists()


def test_a_routing_rule_changed_in_the_admin_is_audited(admin_client: Client) -> None:
    legacy = make_connection(name="Xero (legacy)", base_url="http://127.0.0.1:8100/legacy")
    new = make_connection(name="Xero (new)")
    entity = LegalEntityFactory.create()
    rule = RoutingRule.objects.create(role="erp", legal_entity=entity, connection=legacy)

    response = admin_client.post(
        f"/admin/integrations/routingrule/{rule.pk}/change/",
        {"role": "erp", "legal_entity": entity.pk, "connection": new.pk},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    rule.refresh_from_db()
    assert rule.connection_id == new.pk
    (event,) = AuditEvent.objects.filter(object_type="routingrule", object_id=str(rule.pk))
    assert event.action == "update"
    assert event.changes == {"connection": [legacy.pk, new.pk]}
