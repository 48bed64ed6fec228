"""People's writes through the API: constraint violations come back as readable 400s, and every
change is audited with who, what and the old and new values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from integrations.models import AuditEvent, Customer, Project
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS
from integrations.sync.records import record_update
from tests.factories import CustomerFactory, ProjectFactory, UserFactory

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
    # Customers' names are the CRM's (seeded rules): the event says whose value was replaced.
    assert events[0].changes == {
        "name": ["Wayne Enterprises", "Wayne Ent."],
        "owned_by": [None, {"name": "crm"}],
    }
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


# -- the one write path: people's edits are validated, stamped and ownership-checked -----------


def test_a_persons_edit_of_a_field_a_system_owns_is_applied_stamped_and_names_the_owner(
    api_client_as: Callable[..., APIClient],
) -> None:
    project = ProjectFactory.create(status=Project.Status.ACTIVE)
    client = api_client_as(PMO, username="pmo.lead")
    response = client.patch(f"/api/v1/projects/{project.pk}/", {"status": "on_hold"}, format="json")
    assert response.status_code == 200, response.content
    project.refresh_from_db()
    assert project.status == "on_hold"
    source = project.source_of("status")
    assert source is not None
    pmo_user = User.objects.get(username="pmo.lead")
    assert (source.system, source.connection_id) == ("person", pmo_user.pk)
    (event,) = AuditEvent.objects.filter(object_type="project", action="update")
    # The seeded rules give projects to the PSA: its next change of the status replaces this.
    assert event.changes == {
        "status": ["active", "on_hold"],
        "owned_by": [None, {"status": "psa"}],
    }


def test_a_person_is_refused_in_the_words_full_clean_uses_and_nothing_is_written() -> None:
    project = ProjectFactory.create()
    person = UserFactory.create()
    too_long = "P" * 70
    with pytest.raises(ValidationError) as refused:
        record_update(record=project, data={"code": too_long, "region": "mars"}, actor=person)
    expected = Project(code=too_long, region="mars")
    with pytest.raises(ValidationError) as django:
        expected.full_clean()
    assert refused.value.message_dict == {
        "code": django.value.message_dict["code"],
        "region": django.value.message_dict["region"],
    }
    project.refresh_from_db()
    assert project.code != too_long
    assert not AuditEvent.objects.exists()


def test_a_database_refusal_is_worded_as_full_clean_words_it() -> None:
    taken = ProjectFactory.create()
    other = ProjectFactory.create()
    with pytest.raises(ValidationError) as refused:
        record_update(record=other, data={"code": taken.code}, actor=None)
    assert refused.value.message_dict == {"code": ["Project with this Code already exists."]}


# -- the admin writes through the same path, audited --------------------------------------------


@pytest.fixture
def admin_client() -> Client:
    user = User.objects.create_superuser("root", "root@example.invalid", "pw")
    client = Client()
    client.force_login(user)
    return client


def _project_form(project: Project, **changes: object) -> dict[str, object]:
    form: dict[str, object] = {
        "code": project.code,
        "name": project.name,
        "customer": project.customer_id,
        "contract": project.contract_id or "",
        "legal_entity": project.legal_entity_id or "",
        "region": project.region,
        "currency": project.currency,
        "budget": str(project.budget),
        "status": project.status,
        "start_date": "",
        "end_date": "",
    }
    form.update(changes)
    return form


def test_admin_edit_of_a_record_is_audited_with_old_and_new_values(admin_client: Client) -> None:
    project = ProjectFactory.create(name="Old name", region="")
    response = admin_client.post(
        f"/admin/integrations/project/{project.pk}/change/",
        _project_form(project, name="New name"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    project.refresh_from_db()
    assert project.name == "New name"
    (event,) = AuditEvent.objects.filter(object_type="project", object_id=str(project.pk))
    assert event.action == "update"
    assert event.actor_label == "root"
    assert event.changes == {"name": ["Old name", "New name"], "owned_by": [None, {"name": "psa"}]}
    source = project.source_of("name")
    assert source is not None
    assert source.system == "person"


def test_admin_create_and_delete_of_a_record_are_audited(admin_client: Client) -> None:
    customer = CustomerFactory.create()
    template = Project(code="ADM-1", name="Made in admin", customer=customer, currency="EUR")
    template.status = Project.Status.PLANNED
    response = admin_client.post("/admin/integrations/project/add/", _project_form(template))
    assert response.status_code == 302, response.content.decode()[:2000]
    created = Project.objects.get(code="ADM-1")
    (event,) = AuditEvent.objects.filter(object_type="project", action="create")
    assert event.object_id == str(created.pk)
    assert event.changes["name"] == [None, "Made in admin"]
    assert event.changes["customer"] == [None, customer.pk]

    deleted = admin_client.post(
        f"/admin/integrations/project/{created.pk}/delete/", {"post": "yes"}
    )
    assert deleted.status_code == 302
    assert not Project.objects.filter(pk=created.pk).exists()
    assert (
        AuditEvent.objects.filter(
            object_type="project", object_id=str(created.pk), action="delete"
        ).count()
        == 1
    )


def test_admin_bulk_delete_audits_each_record(admin_client: Client) -> None:
    projects = ProjectFactory.create_batch(2)
    response = admin_client.post(
        "/admin/integrations/project/",
        {"action": "delete_selected", "_selected_action": [p.pk for p in projects], "post": "yes"},
    )
    assert response.status_code == 302
    deleted = AuditEvent.objects.filter(object_type="project", action="delete")
    assert sorted(deleted.values_list("object_id", flat=True)) == sorted(
        str(p.pk) for p in projects
    )
