"""The mapping admin: drafts editable, published versions read-only, publish and copy actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from integrations.mapping.selectors import mapping_cache_bump
from integrations.mapping.services import (
    mapping_defaults_install,
    mapping_set_create_draft,
    value_map_create,
)
from integrations.models import AuditEvent, FieldMapping, InboundMessage, MappingSet, ValueMap
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


def test_draft_page_compiles_the_version_once(
    admin_client_: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integrations.mapping import admin as mapping_admin

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
    compiled: list[int] = []
    real = mapping_admin.mapping_set_compile

    def counting(mapping_set: MappingSet) -> Any:
        compiled.append(mapping_set.pk)
        return real(mapping_set)

    monkeypatch.setattr(mapping_admin, "mapping_set_compile", counting)
    page = admin_client_.get(f"/admin/integrations/mappingset/{draft.pk}/change/")
    assert page.status_code == 200
    assert "None: ready to publish." in page.content.decode()  # the problems ...
    assert "2585702d-09b8-4a4c-964e-e498716d78b2" in page.content.decode()  # ... and the preview
    assert compiled == [draft.pk]


def _value_map_post(value_map: ValueMap, rows: list[tuple[str, str, bool]], **fields: str) -> dict:
    entries = list(value_map.entries.all()) if value_map.pk else []
    data: dict[str, Any] = {
        "name": value_map.name,
        "description": value_map.description,
        "default": value_map.default,
        "entries-TOTAL_FORMS": str(len(rows)),
        "entries-INITIAL_FORMS": str(len(entries)),
        "entries-MIN_NUM_FORMS": "0",
        "entries-MAX_NUM_FORMS": "1000",
        **fields,
    }
    for index, (vendor_value, canonical_value, delete) in enumerate(rows):
        if index < len(entries):
            data[f"entries-{index}-id"] = str(entries[index].pk)
            data[f"entries-{index}-value_map"] = str(value_map.pk)
        data[f"entries-{index}-vendor_value"] = vendor_value
        data[f"entries-{index}-canonical_value"] = canonical_value
        if delete:
            data[f"entries-{index}-DELETE"] = "on"
    return data


def test_value_map_edit_goes_through_the_service_and_is_audited(
    admin_client_: Client, django_capture_on_commit_callbacks: Any
) -> None:
    value_map = value_map_create(
        name="harvest_approval", entries={"approved": "approved", "old": "x"}, actor=None
    )
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client_.post(
            f"/admin/integrations/valuemap/{value_map.pk}/change/",
            _value_map_post(
                value_map,
                [
                    ("approved", "approved", False),
                    ("old", "x", True),  # deleted
                    ("submitted", "submitted", False),  # added in the blank row
                ],
                default="submitted",
            ),
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert dict(value_map.entries.values_list("vendor_value", "canonical_value")) == {
        "approved": "approved",
        "submitted": "submitted",
    }
    value_map.refresh_from_db()
    assert value_map.default == "submitted"
    event = AuditEvent.objects.get(object_type="valuemap", action="update")
    assert event.actor is not None
    assert event.actor.get_username() == "root"
    assert event.changes == {
        "entries": [
            {"approved": "approved", "old": "x"},
            {"approved": "approved", "submitted": "submitted"},
        ],
        "default": ["", "submitted"],
    }
    assert callbacks == [mapping_cache_bump]  # workers reload once, after the commit


def test_value_map_add_goes_through_the_service_and_is_audited(admin_client_: Client) -> None:
    response = admin_client_.post(
        "/admin/integrations/valuemap/add/",
        _value_map_post(
            ValueMap(name="sf_stage", description="Salesforce stages"),
            [("Closed Won", "won", False), ("", "", False)],  # the second row left blank
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    value_map = ValueMap.objects.get(name="sf_stage")
    assert value_map.description == "Salesforce stages"
    assert dict(value_map.entries.values_list("vendor_value", "canonical_value")) == {
        "Closed Won": "won"
    }
    event = AuditEvent.objects.get(object_type="valuemap", object_id=str(value_map.pk))
    assert event.action == "create"
    assert event.changes["entries"] == [None, {"Closed Won": "won"}]


def test_value_map_edit_without_entry_changes_writes_no_audit(admin_client_: Client) -> None:
    value_map = value_map_create(name="m", entries={"a": "b"}, actor=None)
    response = admin_client_.post(
        f"/admin/integrations/valuemap/{value_map.pk}/change/",
        _value_map_post(value_map, [("a", "b", False)], description="now described"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    value_map.refresh_from_db()
    assert value_map.description == "now described"
    assert not AuditEvent.objects.filter(object_type="valuemap", action="update").exists()
    assert dict(value_map.entries.values_list("vendor_value", "canonical_value")) == {"a": "b"}
