"""The mapping admin: drafts editable, published versions read-only, publish and copy actions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from integrations.mapping.services import mapping_defaults_install, mapping_set_create_draft
from integrations.models import FieldMapping, InboundMessage, MappingSet
from tests.factories import make_connection
from tests.integrations.mapping.conftest import load_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_() -> Client:
    user = User.objects.create_superuser("root", "root@example.invalid", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_lists_and_published_version_is_read_only(admin_client_: Client) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    published = MappingSet.objects.get(connection=connection, object_type="Invoices")
    assert admin_client_.get("/admin/integrations/mappingset/").status_code == 200
    assert admin_client_.get("/admin/integrations/valuemap/").status_code == 200
    page = admin_client_.get(f"/admin/integrations/mappingset/{published.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    refused = admin_client_.post(
        f"/admin/integrations/mappingset/{published.pk}/change/", {"notes": "edited"}
    )
    assert refused.status_code == 403


def test_draft_page_shows_problems_and_a_preview(admin_client_: Client) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    InboundMessage.objects.create(
        connection=connection,
        source="poll",
        object_type="Invoices",
        dedupe_key="k1",
        payload=load_payload("xero_invoice"),
    )
    draft = mapping_set_create_draft(
        connection=connection, object_type="Invoices", canonical_model="invoice", actor=None
    )
    FieldMapping.objects.create(mapping_set=draft, canonical_field="totl", vendor_path="Total")
    page = admin_client_.get(f"/admin/integrations/mappingset/{draft.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "&#x27;totl&#x27; is not a field of invoice" in text
    assert "2585702d-09b8-4a4c-964e-e498716d78b2" in text  # the stored payload, mapped
    assert 'name="_save"' in text


def test_add_creates_a_draft_through_the_service(admin_client_: Client) -> None:
    connection = make_connection()
    response = admin_client_.post(
        "/admin/integrations/mappingset/add/",
        {
            "connection": connection.pk,
            "object_type": "Contacts",
            "canonical_model": "customer",
            "external_id_path": "ContactID",
            "version_path": "UpdatedDateUTC",
            "notes": "",
            "fields-TOTAL_FORMS": "1",
            "fields-INITIAL_FORMS": "0",
            "fields-0-position": "0",
            "fields-0-canonical_field": "name",
            "fields-0-vendor_path": "Name",
            "fields-0-direction": "both",
            "fields-0-transform": "copy",
            "fields-0-options": "{}",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    draft = MappingSet.objects.get(connection=connection, object_type="Contacts")
    assert (draft.version, draft.status) == (1, "draft")
    assert list(draft.fields.values_list("canonical_field", flat=True)) == ["name"]


def test_publish_and_new_draft_actions(admin_client_: Client) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    published = MappingSet.objects.get(connection=connection, object_type="Contacts")
    admin_client_.post(
        "/admin/integrations/mappingset/",
        {"action": "new_draft_from_selected", "_selected_action": [published.pk]},
    )
    draft = MappingSet.objects.get(connection=connection, object_type="Contacts", version=2)
    assert draft.status == "draft"
    response = admin_client_.post(
        "/admin/integrations/mappingset/",
        {"action": "publish_selected", "_selected_action": [draft.pk]},
        follow=True,
    )
    assert "published." in response.content.decode()
    draft.refresh_from_db()
    published.refresh_from_db()
    assert (draft.status, published.status) == ("published", "retired")
