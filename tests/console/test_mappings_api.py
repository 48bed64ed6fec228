"""/api/v1/mappings/: the mapping versions for scripts, through the console's services and
checks; integration admins only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from integrations.mapping.selectors import mapping_cache_clear
from integrations.mapping.services import mapping_set_create_draft
from integrations.mapping.versions import draft_value_map_entry_set
from integrations.models import AuditEvent, Connection, ConsoleSettings, MappingSet
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from tests.console.test_mappings import PROJECTS, harvest, mapping_cases, project, receive  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    mapping_cache_clear()
    yield
    mapping_cache_clear()


def _draft(connection: Connection) -> MappingSet:
    draft = mapping_set_create_draft(
        connection=connection, object_type=PROJECTS, canonical_model="project", actor=None
    )
    draft_value_map_entry_set(
        mapping_set=draft,
        name="harvest_project_active",
        vendor_value="false",
        canonical_value="closed",
        actor=None,
    )
    return draft


@pytest.mark.parametrize("role", [FINANCE, PMO, SALES_OPS, VIEWER, ""])
def test_only_integration_admins_reach_the_mappings_api(
    harvest: Connection,  # noqa: F811
    api_client_as: Callable[..., APIClient],
    role: str,
) -> None:
    draft = _draft(harvest)
    client = api_client_as(role)
    base = f"/api/v1/mappings/{draft.pk}/"
    for method, address in [
        ("get", "/api/v1/mappings/"),
        ("get", base),
        ("get", f"{base}diff/?against={draft.pk}"),
        ("get", f"{base}preview/"),
        ("post", f"{base}publish/"),
        ("post", f"{base}approve/"),
        ("post", f"{base}reject/"),
        ("post", f"{base}rollback/"),
    ]:
        assert getattr(client, method)(address).status_code == 403, (role, method, address)
    draft.refresh_from_db()
    assert draft.status == "draft"
    anonymous = APIClient()
    assert anonymous.get("/api/v1/mappings/").status_code == 401
    assert anonymous.post(f"{base}publish/").status_code == 401


def test_an_admin_reads_compares_previews_and_publishes_through_the_api(
    harvest: Connection,  # noqa: F811
    api_client_as: Callable[..., APIClient],
    django_capture_on_commit_callbacks: Any,
) -> None:
    receive(harvest, project(2, active=False), project(3, active=False))
    (case,) = mapping_cases(harvest)
    draft = _draft(harvest)
    v1 = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=1)
    admin = api_client_as(INTEGRATION_ADMIN, username="ada")

    listed = admin.get(
        "/api/v1/mappings/", {"connection": str(harvest.pk), "object_type": PROJECTS}
    )
    assert [(r["version"], r["status"]) for r in listed.json()["results"]] == [
        (2, "draft"),
        (1, "published"),
    ]
    detail = admin.get(f"/api/v1/mappings/{draft.pk}/").json()
    assert detail["review"] == {"errors": [], "warnings": []}
    assert {
        "name": "harvest_project_active",
        "entries": {"true": "active", "false": "closed"},
        "default": None,
    } in detail["value_maps"]
    assert {r["canonical_field"] for r in detail["rows"]} >= {"code", "status", "name"}

    diff = admin.get(f"/api/v1/mappings/{draft.pk}/diff/", {"against": v1.pk}).json()
    assert diff["rows"] == []
    assert diff["value_maps"][0]["added"] == {"false": "closed"}

    preview = admin.get(f"/api/v1/mappings/{draft.pk}/preview/").json()
    assert (preview["fixes_cases"], preview["fixes_records"]) == (1, 2)
    assert preview["cases"] == [{"case": case.pk, "held": 2, "read": 2, "fixed": True, "still": []}]
    assert preview["payloads"]["fixed"] == 2

    with django_capture_on_commit_callbacks(execute=True):
        published = admin.post(f"/api/v1/mappings/{draft.pk}/publish/")
    assert published.status_code == 200
    assert (published.json()["status"], published.json()["published_by"]) == ("published", "ada")
    again = admin.post(f"/api/v1/mappings/{draft.pk}/publish/")
    assert again.status_code == 400
    assert "only a draft is edited" in again.json()["detail"][0]

    with django_capture_on_commit_callbacks(execute=True):
        rolled = admin.post(f"/api/v1/mappings/{v1.pk}/rollback/")
    assert (rolled.status_code, rolled.json()["version"], rolled.json()["based_on"]) == (
        200,
        3,
        1,
    )


def test_four_eyes_through_the_api(
    harvest: Connection,  # noqa: F811
    api_client_as: Callable[..., APIClient],
) -> None:
    ConsoleSettings.objects.update_or_create(pk=1, defaults={"mapping_four_eyes": True})
    draft = _draft(harvest)
    ada = api_client_as(INTEGRATION_ADMIN, username="ada")
    bob = api_client_as(INTEGRATION_ADMIN, username="bob")
    assert ada.post(f"/api/v1/mappings/{draft.pk}/publish/").json()["status"] == "pending"
    own = ada.post(f"/api/v1/mappings/{draft.pk}/approve/")
    assert own.status_code == 400
    assert "another admin must approve" in own.json()["detail"][0]
    assert bob.post(f"/api/v1/mappings/{draft.pk}/reject/", {}).status_code == 400
    rejected = bob.post(f"/api/v1/mappings/{draft.pk}/reject/", {"reason": "Not yet."})
    assert rejected.json()["status"] == "draft"
    ada.post(f"/api/v1/mappings/{draft.pk}/publish/")
    approved = bob.post(f"/api/v1/mappings/{draft.pk}/approve/")
    assert approved.status_code == 200
    assert (approved.json()["status"], approved.json()["published_by"]) == ("published", "bob")
    assert approved.json()["submitted_by"] == "ada"
    assert AuditEvent.objects.filter(
        object_type="mappingset", object_id=str(draft.pk), actor_label="bob"
    ).exists()
