"""Configuration as files (/config/files/, /api/v1/config/): one firm's mappings, value maps,
rules and connections exported as one JSON document without a secret, imported elsewhere after
a dry run that lists every change and writes nothing, applied through the audited services
(mappings through the editor's publish, under four eyes too), refused in words with the place
in the file; integration admins only."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from exceptions.models import CaseRoute, SlaPolicy
from exceptions.routes import case_route_create
from integrations.mapping.ownership_rules import ownership_rule_create
from integrations.mapping.selectors import mapping_cache_clear
from integrations.mapping.services import mapping_defaults_install, mapping_set_create_draft
from integrations.mapping.versions import mapping_set_approve
from integrations.models import (
    AuditEvent,
    Connection,
    ConsoleSettings,
    FieldMapping,
    MappingSet,
    OwnershipRule,
    RoutingRule,
    ValueMap,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from integrations.services.config_rows import config_row_create
from integrations.workflows.config_files import (
    config_document_text,
    config_export,
    config_import,
    config_parse,
)
from integrations.workflows.errors import ConfigPreviewStale
from tests.factories import LegalEntityFactory, UserFactory, make_connection

pytestmark = pytest.mark.django_db

XERO_SECRET = "xero-client-secret-9f3b1c"
HARVEST_TOKEN = "harvest-access-token-77d2e0"


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    mapping_cache_clear()
    yield
    mapping_cache_clear()


@pytest.fixture
def firm() -> dict[str, Any]:
    """A firm's test installation: Xero and Harvest with their default mappings published,
    the seeded ownership rules and SLAs plus one of each rule the console edits."""
    uk = LegalEntityFactory.create(code="UK01", name="Concord Ltd", country="GB")
    LegalEntityFactory.create(code="US01", name="Concord Inc", country="US", base_currency="USD")
    xero = make_connection(
        name="Xero (new)",
        base_url="https://api.xero.com/api.xro/2.0",
        credentials={
            "client_id": "xero-client-id",
            "client_secret": XERO_SECRET,
            "token_url": "https://identity.xero.com/connect/token",
            "tenant_id": "tenant-1",
        },
        rate_limit_per_minute=60,
    )
    harvest = make_connection(
        name="Harvest",
        vendor="harvest",
        role="psa",
        base_url="https://api.harvestapp.com/v2",
        credentials={"access_token": HARVEST_TOKEN, "account_id": "100001"},
        rate_limit_per_minute=100,
    )
    mapping_defaults_install(connection=xero)
    mapping_defaults_install(connection=harvest)
    ownership_rule_create(
        data={"object_type": "project", "field": "budget", "owner_role": "crm", "note": "Sold"},
        actor=None,
    )
    case_route_create(
        data={
            "case_type": "vendor_validation",
            "legal_entity": uk,
            "queue": None,
            "priority": 2,
            "note": "UK first",
        },
        actor=None,
    )
    config_row_create(model=RoutingRule, data={"role": "erp", "connection": xero}, actor=None)
    config_row_create(
        model=RoutingRule, data={"role": "erp", "connection": xero, "legal_entity": uk}, actor=None
    )
    return {"xero": xero, "harvest": harvest, "uk": uk}


def _admin(username: str = "ada") -> Any:
    return UserFactory.create(username=username, role=INTEGRATION_ADMIN)


def _wipe_configuration() -> None:
    """What a new, empty installation holds of configuration: nothing (its legal entities and
    work queues come from the ERP and the migrations)."""
    RoutingRule.objects.all().delete()
    CaseRoute.objects.all().delete()
    OwnershipRule.objects.all().delete()
    SlaPolicy.objects.all().delete()
    MappingSet.objects.all().delete()
    ValueMap.objects.all().delete()
    Connection.objects.all().delete()


def _counts() -> dict[str, int]:
    return {
        "audit": AuditEvent.objects.count(),
        "connections": Connection.objects.count(),
        "versions": MappingSet.objects.count(),
        "rows": FieldMapping.objects.count(),
        "value_maps": ValueMap.objects.count(),
        "ownership": OwnershipRule.objects.count(),
        "routes": CaseRoute.objects.count(),
        "erp": RoutingRule.objects.count(),
        "sla": SlaPolicy.objects.count(),
    }


def _apply(document: dict[str, Any], actor: Any) -> Any:
    preview = config_import(document=document, actor=actor, dry_run=True)
    assert preview.refusals == []
    return config_import(
        document=document,
        actor=actor,
        dry_run=False,
        sha256=preview.sha256,
        diff_sha256=preview.diff_sha256,
    )


# -- export ---------------------------------------------------------------------------------------


def test_the_export_is_versioned_keyed_by_names_and_never_holds_a_secret(
    firm: dict[str, Any],
) -> None:
    document = config_export()
    text = config_document_text(document)
    assert (document["format"], document["version"]) == ("concord-config", 1)
    assert list(document) == [
        "format",
        "version",
        "connections",
        "value_maps",
        "mappings",
        "ownership_rules",
        "case_routes",
        "sla_policies",
        "erp_routes",
    ]
    for secret in (XERO_SECRET, HARVEST_TOKEN, "xero-client-id", "tenant-1", "identity.xero.com"):
        assert secret not in text
    assert "credential" not in text
    assert [c["name"] for c in document["connections"]] == ["Harvest", "Xero (new)"]
    assert document["connections"][1] == {
        "name": "Xero (new)",
        "vendor": "xero",
        "role": "erp",
        "base_url": "https://api.xero.com/api.xro/2.0",
        "rate_limit_per_minute": 60,
        "max_concurrency": 5,
        "enabled": True,
    }
    assert {"legal_entity": "UK01", "connection": "Xero (new)"} in document["erp_routes"]
    assert document["erp_routes"][0] == {"legal_entity": None, "connection": "Xero (new)"}
    route = next(r for r in document["case_routes"] if r["case_type"] == "vendor_validation")
    assert (route["legal_entity"], route["priority"], route["queue"]) == ("UK01", 2, None)
    mapping = next(m for m in document["mappings"] if m["connection"] == "Harvest")
    assert mapping["fields"]
    assert "id" not in mapping
    assert "id" not in mapping["fields"][0]
    # No database id anywhere: every reference is a name or a code.
    assert not re.search(r'"(id|pk|\w+_id)":', text)
    # Stable: the same configuration, the same bytes.
    assert config_document_text(config_export()) == text


# -- round trip -----------------------------------------------------------------------------------


def test_a_file_imported_into_an_empty_installation_exports_again_identically(
    firm: dict[str, Any],
) -> None:
    exported = config_document_text(config_export())
    published_before = {
        (ms.connection.name, ms.object_type): sorted(
            (f.canonical_field, f.direction, f.vendor_path, f.transform) for f in ms.fields.all()
        )
        for ms in MappingSet.objects.filter(status="published").select_related("connection")
    }
    _wipe_configuration()
    document = config_parse(exported)

    result = _apply(document, _admin())

    assert result.applied
    assert result.count("added") > 10
    assert result.count("changed") == 0
    assert config_document_text(config_export()) == exported
    published_after = {
        (ms.connection.name, ms.object_type): sorted(
            (f.canonical_field, f.direction, f.vendor_path, f.transform) for f in ms.fields.all()
        )
        for ms in MappingSet.objects.filter(status="published").select_related("connection")
    }
    assert published_after == published_before
    # Connections arrive without credentials, to be entered on their pages.
    for connection in Connection.objects.all():
        assert dict(connection.credentials) == {}
    # A second import of the same file finds nothing to do.
    again = config_import(document=document, actor=None, dry_run=True)
    assert again.changes == 0
    assert again.unchanged == result.count("added")


# -- the diff, the dry run, the apply -------------------------------------------------------------


def _edited(document: dict[str, Any]) -> dict[str, Any]:
    """The file a test installation would send after a week of work: one connection added and
    one changed, a value map changed (read by Harvest's projects) and one added, a rule of each
    kind added, changed or removed."""
    doc = copy.deepcopy(document)
    doc["connections"].append(
        {
            "name": "Xero (legacy)",
            "vendor": "xero",
            "role": "erp",
            "base_url": "https://legacy.example.com/api.xro/2.0",
            "rate_limit_per_minute": 30,
            "max_concurrency": 2,
            "enabled": False,
        }
    )
    harvest = next(c for c in doc["connections"] if c["name"] == "Harvest")
    harvest["rate_limit_per_minute"] = 200
    active = next(m for m in doc["value_maps"] if m["name"] == "harvest_project_active")
    active["entries"]["false"] = "on_hold"
    doc["value_maps"].append(
        {
            "name": "legacy_regions",
            "description": "Old region codes",
            "default": "",
            "entries": {"EU": "emea"},
        }
    )
    doc["ownership_rules"] = [
        r for r in doc["ownership_rules"] if (r["object_type"], r["field"]) != ("project", "budget")
    ]
    doc["ownership_rules"].append(
        {"object_type": "project", "field": "region", "owner_role": "crm", "note": "Sold region"}
    )
    route = next(r for r in doc["case_routes"] if r["case_type"] == "vendor_validation")
    route["priority"] = 1
    sla = next(p for p in doc["sla_policies"] if p["priority"] == 1)
    sla["resolve_within_seconds"] = 2 * 3600
    sla["due_soon_within_seconds"] = 1800
    uk = next(r for r in doc["erp_routes"] if r["legal_entity"] == "UK01")
    uk["connection"] = "Xero (legacy)"
    return doc


def _normalized(document: dict[str, Any]) -> dict[str, Any]:
    """A document with its lists in one order (a file edited by hand appends at the end)."""
    return {
        key: sorted(value, key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(value, list)
        else value
        for key, value in document.items()
    }


def _listed(result: Any) -> dict[str, dict[str, list[str]]]:
    return {
        s.name: {
            kind: [i.key for i in s.of(kind)]
            for kind in ("added", "changed", "removed")
            if s.of(kind)
        }
        for s in result.sections
    }


def test_a_dry_run_lists_exactly_the_changes_and_writes_nothing(firm: dict[str, Any]) -> None:
    before = _counts()
    was = config_export()

    result = config_import(document=_edited(was), actor=_admin(), dry_run=True)

    assert result.refusals == []
    assert not result.applied
    assert result.can_apply
    assert _listed(result) == {
        "connections": {"added": ["Xero (legacy)"], "changed": ["Harvest"]},
        "value_maps": {"added": ["legacy_regions"], "changed": ["harvest_project_active"]},
        "mappings": {"changed": ["Harvest projects"]},
        "ownership_rules": {"added": ["project.region"], "removed": ["project.budget"]},
        "case_routes": {"changed": ["vendor_validation / UK01"]},
        "sla_policies": {"changed": ["P1"]},
        "erp_routes": {"changed": ["UK01"]},
    }
    sections = {s.name: s for s in result.sections}
    (harvest,) = sections["connections"].changed
    assert harvest.changes == [("rate_limit_per_minute", 100, 200)]
    assert harvest.path == "connections[0]"
    (active,) = sections["value_maps"].changed
    assert active.changes == [("entry false", "closed", "on_hold")]
    assert "Harvest projects is published" in active.note
    (projects,) = sections["mappings"].changed
    assert projects.changes == [
        ("value map harvest_project_active", "as in this database", "as in the file")
    ]
    (sla,) = sections["sla_policies"].changed
    policy = SlaPolicy.objects.get(priority=1)
    assert sla.changes == [
        ("resolve_within_seconds", int(policy.resolve_within.total_seconds()), 7200),
        ("due_soon_within_seconds", int(policy.due_soon_within.total_seconds()), 1800),
    ]
    (uk,) = sections["erp_routes"].changed
    assert uk.changes == [("connection", "Xero (new)", "Xero (legacy)")]
    # Left alone: nothing the file does not name is removed but rules.
    assert sections["mappings"].left_alone == []
    assert sections["connections"].left_alone == []
    # The dry run tried every write (the services' own checks ran) and kept none of them.
    assert projects.outcome == "v2 published"
    assert _counts() == before
    assert config_export() == was
    assert not AuditEvent.objects.filter(object_type="consolesettings").exists()


def test_applying_writes_the_previewed_changes_through_the_audited_services(
    firm: dict[str, Any],
) -> None:
    ada = _admin()
    document = _edited(config_export())

    result = _apply(document, ada)

    assert result.applied
    assert _normalized(config_export()) == _normalized(document)
    legacy = Connection.objects.get(name="Xero (legacy)")
    assert (legacy.enabled, dict(legacy.credentials)) == (False, {})
    harvest = Connection.objects.get(name="Harvest")
    assert harvest.rate_limit_per_minute == 200
    assert harvest.credentials["access_token"] == HARVEST_TOKEN  # kept, never touched
    projects = MappingSet.objects.get(
        connection=harvest, object_type="projects", status="published"
    )
    assert (projects.version, projects.based_on, projects.published_by) == (2, 1, ada)
    assert projects.value_maps["harvest_project_active"]["entries"]["false"] == "on_hold"
    assert ValueMap.objects.get(name="legacy_regions").description == "Old region codes"
    assert RoutingRule.objects.get(legal_entity=firm["uk"]).connection == legacy
    assert SlaPolicy.objects.get(priority=1).resolve_within == timedelta(hours=2)
    assert not OwnershipRule.objects.filter(object_type="project", field="budget").exists()
    # One event for the import, with its counts, beside each service's own.
    (event,) = AuditEvent.objects.filter(object_type="consolesettings")
    assert event.actor_label == "ada"
    assert event.changes["configuration file"] == [None, result.sha256]
    assert (event.changes["added"], event.changes["changed"], event.changes["removed"]) == (
        [None, 3],
        [None, 6],
        [None, 1],
    )
    assert event.changes["Connections"] == [None, "1 added, 1 changed"]
    assert AuditEvent.objects.filter(
        object_type="mappingset", object_id=str(projects.pk), changes__has_key="source"
    ).exists()
    assert AuditEvent.objects.filter(object_type="ownershiprule", action="delete").exists()
    assert AuditEvent.objects.filter(
        object_type="connection", object_id=str(harvest.pk), action="update"
    ).exists()


def test_applying_needs_the_hashes_of_the_preview(firm: dict[str, Any]) -> None:
    document = _edited(config_export())
    preview = config_import(document=document, actor=None, dry_run=True)
    with pytest.raises(ConfigPreviewStale, match="not the file that was previewed"):
        config_import(document=document, actor=None, dry_run=False, sha256="0" * 64)
    # Someone changes the configuration after the preview: the changes are no longer those shown.
    ownership_rule_create(
        data={"object_type": "project", "field": "name", "owner_role": "psa"}, actor=None
    )
    with pytest.raises(ConfigPreviewStale, match="changed since this file was previewed"):
        config_import(
            document=document,
            actor=None,
            dry_run=False,
            sha256=preview.sha256,
            diff_sha256=preview.diff_sha256,
        )
    assert not Connection.objects.filter(name="Xero (legacy)").exists()


# -- refusals -------------------------------------------------------------------------------------


def _refused(document: Any) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        config_import(document=document, actor=None, dry_run=True)
    return refused.value.messages


def test_a_file_that_is_not_a_configuration_is_refused_in_words() -> None:
    with pytest.raises(ValidationError, match="not valid JSON: Expecting"):
        config_parse('{"format": "concord-config",')
    with pytest.raises(ValidationError, match="not a Concord configuration file"):
        config_parse('{"format": "other", "version": 1}')
    with pytest.raises(
        ValidationError, match="reads version 1 of the format, the file is version 2"
    ):
        config_parse('{"format": "concord-config", "version": 2}')
    with pytest.raises(ValidationError, match="not UTF-8"):
        config_parse(b"\xff\xfe{}")


def test_every_refusal_names_its_place_in_the_file(firm: dict[str, Any]) -> None:
    document = config_export()
    document["connections"][0]["vendor"] = "sap"
    document["connections"][1]["credentials"] = {"client_secret": "x"}
    document["mappings"].append({**document["mappings"][0], "connection": "Nowhere"})
    document["case_routes"].append({"case_type": "no_such_case", "queue": "accounting"})
    document["ownership_rules"].append(
        {"object_type": "customer", "field": "vat", "owner_role": "erp"}
    )
    document["erp_routes"].append({"legal_entity": "ZZ99", "connection": "Harvest"})
    before = _counts()

    problems = _refused(document)

    last = len(document["mappings"]) - 1
    routes = len(document["case_routes"]) - 1
    assert (
        'connections[0].vendor: unknown vendor "sap"; Concord connects to salesforce, harvest, xero'
        in problems
    )
    assert any(
        p.startswith("connections[1].credentials: a configuration file never carries credentials")
        for p in problems
    )
    assert (
        f"mappings[{last}].connection: no connection 'Nowhere' in the file nor in this database"
        in problems
    )
    assert (
        f'case_routes[{routes}].case_type: unknown case type "no_such_case": the catalogue has '
        "no such case" in problems
    )
    assert any(
        p.startswith(f'case_routes[{routes}].queue: unknown queue "accounting"') for p in problems
    )
    assert any(
        p.startswith("ownership_rules[") and "'vat' is not a field of customer" in p
        for p in problems
    )
    assert any(p.startswith('erp_routes[2].legal_entity: no legal entity "ZZ99"') for p in problems)
    assert (
        "erp_routes[2].connection: Harvest is a psa connection; an ERP route needs an ERP "
        "connection" in problems
    )
    assert _counts() == before


def test_a_base_url_that_would_take_stored_credentials_elsewhere_is_refused_and_nothing_applied(
    firm: dict[str, Any],
) -> None:
    document = config_export()
    xero = next(i for i, c in enumerate(document["connections"]) if c["name"] == "Xero (new)")
    document["connections"][xero]["base_url"] = "https://attacker.example/api.xro/2.0"
    document["ownership_rules"].append(
        {"object_type": "project", "field": "region", "owner_role": "crm", "note": ""}
    )

    preview = config_import(document=document, actor=None, dry_run=True)

    assert not preview.can_apply
    (refusal,) = preview.refusals
    assert refusal.startswith(
        f"connections[{xero}].base_url: This change would send the stored credentials to "
        "https://attacker.example"
    )
    assert "Enter them again in the same change" in refusal
    applied = config_import(
        document=document,
        actor=None,
        dry_run=False,
        sha256=preview.sha256,
        diff_sha256=preview.diff_sha256,
    )
    assert not applied.applied
    connection = Connection.objects.get(name="Xero (new)")
    assert connection.base_url == "https://api.xero.com/api.xro/2.0"
    assert connection.credentials["client_secret"] == XERO_SECRET  # never silently cleared
    # The file's valid change was not applied either: nothing half-applied.
    assert not OwnershipRule.objects.filter(object_type="project", field="region").exists()
    # The same origin, another path: no credential goes anywhere new, so it is accepted.
    document["connections"][xero]["base_url"] = "https://api.xero.com/api.xro/2.1"
    assert config_import(document=document, actor=None, dry_run=True).can_apply


def test_a_mapping_the_editor_would_refuse_is_refused_with_its_reasons(
    firm: dict[str, Any],
) -> None:
    document = config_export()
    index, projects = next(
        (i, m) for i, m in enumerate(document["mappings"]) if m["object_type"] == "projects"
    )
    projects["fields"].append(
        {
            "canonical_field": "no_such_field",
            "vendor_path": "name",
            "direction": "in",
            "transform": "copy",
            "options": {},
            "required": False,
        }
    )
    preview = config_import(document=document, actor=None, dry_run=True)
    assert not preview.can_apply
    assert any(
        r.startswith(f"mappings[{index}]: ") and "no_such_field" in r for r in preview.refusals
    )
    assert MappingSet.objects.filter(object_type="projects").count() == 1  # no draft left

    # An open draft in this installation is never overwritten by a file.
    projects["fields"].pop()
    projects["notes"] = "From test"
    from_editor = mapping_set_create_draft(
        connection=firm["harvest"], object_type="projects", canonical_model="project", actor=None
    )
    refused = config_import(document=document, actor=None, dry_run=True)
    assert refused.refusals == [
        f"mappings[{index}]: projects on Harvest already has a draft "
        f"(v{from_editor.version}): edit or delete it first."
    ]


# -- four eyes ------------------------------------------------------------------------------------


def test_under_four_eyes_an_imported_mapping_waits_for_another_admin(
    firm: dict[str, Any],
) -> None:
    ConsoleSettings.objects.update_or_create(pk=1, defaults={"mapping_four_eyes": True})
    ada, bob = _admin("ada"), _admin("bob")
    document = config_export()
    active = next(m for m in document["value_maps"] if m["name"] == "harvest_project_active")
    active["entries"]["false"] = "on_hold"

    result = _apply(document, ada)

    assert result.applied
    (projects,) = [i for s in result.sections for i in s.items if i.key == "Harvest projects"]
    assert projects.outcome.startswith("v2 waits for another admin's approval")
    pending = MappingSet.objects.get(object_type="projects", status="pending")
    assert pending.submitted_by == ada
    # Nothing changes what is applied until bob approves.
    assert (
        ValueMap.objects.get(name="harvest_project_active")
        .entries.get(vendor_value="false")
        .canonical_value
        == "closed"
    )
    assert MappingSet.objects.get(object_type="projects", status="published").version == 1
    with pytest.raises(ValidationError, match="another admin must approve"):
        mapping_set_approve(mapping_set=pending, actor=ada)
    mapping_set_approve(mapping_set=pending, actor=bob)
    assert (
        ValueMap.objects.get(name="harvest_project_active")
        .entries.get(vendor_value="false")
        .canonical_value
        == "on_hold"
    )


def test_under_four_eyes_a_value_map_published_mappings_read_travels_only_with_one(
    firm: dict[str, Any],
) -> None:
    ConsoleSettings.objects.update_or_create(pk=1, defaults={"mapping_four_eyes": True})
    document = config_export()
    document["mappings"] = [m for m in document["mappings"] if m["object_type"] != "projects"]
    index = next(
        i for i, m in enumerate(document["value_maps"]) if m["name"] == "harvest_project_active"
    )
    document["value_maps"][index]["entries"]["false"] = "on_hold"

    preview = config_import(document=document, actor=_admin(), dry_run=True)

    assert preview.refusals == [
        f"value_maps[{index}]: Harvest projects reads this map and four eyes is on: a change "
        "to it is published with a mapping that reads it; add that mapping to the file"
    ]


# -- who may ------------------------------------------------------------------------------------

PAGES = [
    ("get", "/config/files/"),
    ("get", "/config/files/export/"),
    ("post", "/config/files/upload/"),
    ("get", "/config/files/preview/"),
    ("post", "/config/files/apply/"),
]


@pytest.mark.parametrize("role", [FINANCE, PMO, SALES_OPS, VIEWER, ""])
def test_no_one_but_an_integration_admin_reaches_the_files_pages_or_api(
    firm: dict[str, Any], role: str, api_client_as: Callable[..., APIClient]
) -> None:
    client = Client()
    client.force_login(UserFactory.create(role=role))
    for method, address in PAGES:
        assert getattr(client, method)(address).status_code == 403, (role, method, address)
    api = api_client_as(role)
    assert api.get("/api/v1/config/export/").status_code == 403
    document = _edited(config_export())
    before = _counts()
    answer = api.post("/api/v1/config/import/?dry_run=1", document, format="json")
    assert answer.status_code == 403
    assert _counts() == before


def test_anonymous_is_sent_to_sign_in_or_asked_for_credentials(firm: dict[str, Any]) -> None:
    for method, address in PAGES:
        response = getattr(Client(), method)(address)
        assert response.status_code == 302, (method, address)
        assert response["Location"].startswith("/login/")
    anonymous = APIClient()
    assert anonymous.get("/api/v1/config/export/").status_code == 401
    assert anonymous.post("/api/v1/config/import/?dry_run=1", {}, format="json").status_code == 401


# -- the page -----------------------------------------------------------------------------------


def _text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def test_an_admin_downloads_uploads_previews_and_applies_a_file(firm: dict[str, Any]) -> None:
    client = Client()
    client.force_login(_admin())
    page = client.get("/config/files/")
    assert page.status_code == 200
    assert "Download the configuration (JSON)" in _text(page)
    assert "No file imported yet." in _text(page)

    download = client.get("/config/files/export/")
    assert download["Content-Disposition"] == 'attachment; filename="concord-config.json"'
    assert download.content.decode() == config_document_text(config_export())
    assert XERO_SECRET not in download.content.decode()

    edited = config_document_text(_edited(json.loads(download.content)))
    upload = SimpleUploadedFile("to-production.json", edited.encode(), "application/json")
    sent = client.post("/config/files/upload/", {"file": upload})
    assert sent.status_code == 302
    assert sent["Location"] == "/config/files/preview/"

    before = _counts()
    preview = client.get("/config/files/preview/")
    text = _text(preview)
    assert preview.status_code == 200
    assert "Preview of to-production.json" in text
    assert "Dry run, nothing written: 3 added, 6 changed, 1 removed, 0 left alone" in text
    assert "<code>rate_limit_per_minute</code>: 100 → 200" in text
    assert "<code>entry false</code>: closed → on_hold" in text
    assert "Xero (legacy)" in text
    assert "Apply these changes" in text
    assert _counts() == before
    sha256 = re.search(r'name="sha256" value="(\w+)"', text)
    diff_sha256 = re.search(r'name="diff_sha256" value="(\w+)"', text)
    assert sha256
    assert diff_sha256

    stale = client.post("/config/files/apply/", {"sha256": sha256[1], "diff_sha256": "0" * 64})
    assert stale.status_code == 409
    assert "The configuration changed since this file was previewed" in _text(stale)
    assert _counts() == before

    applied = client.post(
        "/config/files/apply/",
        {"sha256": sha256[1], "diff_sha256": diff_sha256[1]},
        follow=True,
    )
    text = _text(applied)
    assert "to-production.json applied: 3 added, 6 changed, 1 removed." in text
    assert "Harvest projects: v2 published" in text
    assert Connection.objects.filter(name="Xero (legacy)").exists()
    assert "ada</strong> imported configuration file" in text  # the page's list of imports
    # The file is applied once: the held copy is gone.
    assert client.get("/config/files/preview/").status_code == 302


def test_a_file_refused_on_upload_says_why(firm: dict[str, Any]) -> None:
    client = Client()
    client.force_login(_admin())
    bad = SimpleUploadedFile("broken.json", b'{"format": "concord-config",', "application/json")
    answer = client.post("/config/files/upload/", {"file": bad})
    assert answer.status_code == 400
    assert "The file is not valid JSON" in _text(answer)

    document = config_export()
    document["connections"][0]["vendor"] = "sap"
    upload = SimpleUploadedFile("sap.json", json.dumps(document).encode(), "application/json")
    assert client.post("/config/files/upload/", {"file": upload}).status_code == 302
    preview = client.get("/config/files/preview/")
    assert preview.status_code == 400
    assert "connections[0].vendor: unknown vendor &quot;sap&quot;" in _text(preview)
    assert "Apply these changes" not in _text(preview)


# -- the API ------------------------------------------------------------------------------------


def test_the_api_exports_previews_and_applies_only_with_the_preview_hashes(
    firm: dict[str, Any], api_client_as: Callable[..., APIClient]
) -> None:
    api = api_client_as(INTEGRATION_ADMIN)
    exported = api.get("/api/v1/config/export/")
    assert exported.status_code == 200
    assert exported.json() == config_export()
    assert XERO_SECRET not in exported.content.decode()
    assert HARVEST_TOKEN not in exported.content.decode()

    document = _edited(exported.json())
    before = _counts()
    dry = api.post("/api/v1/config/import/?dry_run=1", document, format="json")
    assert dry.status_code == 200
    body = dry.json()
    assert (body["dry_run"], body["applied"], body["can_apply"]) == (True, False, True)
    assert body["counts"]["added"] == 3
    assert body["sections"]["connections"]["changed"][0]["changes"] == {
        "rate_limit_per_minute": [100, 200]
    }
    assert _counts() == before

    blind = api.post("/api/v1/config/import/", document, format="json")
    assert blind.status_code == 400
    assert "Preview first" in blind.json()["detail"][0]

    query = f"sha256={body['sha256']}&diff_sha256={body['diff_sha256']}"
    applied = api.post(f"/api/v1/config/import/?{query}", document, format="json")
    assert applied.status_code == 200
    assert applied.json()["applied"] is True
    assert Connection.objects.get(name="Harvest").rate_limit_per_minute == 200

    again = api.post(f"/api/v1/config/import/?{query}", document, format="json")
    assert again.status_code == 409  # the configuration is no longer what was previewed

    bad = api.post(
        "/api/v1/config/import/?dry_run=1",
        {"format": "concord-config", "version": 7},
        format="json",
    )
    assert bad.status_code == 400
    assert "the file is version 7" in bad.json()["detail"][0]


def test_a_section_the_file_leaves_out_is_left_as_it_is(firm: dict[str, Any]) -> None:
    document = config_export()
    partial = {"format": "concord-config", "version": 1, "mappings": document["mappings"]}
    partial["mappings"][0]["notes"] = "Promoted alone"
    before = _counts()

    result = _apply(partial, _admin())

    assert result.applied
    assert [i.key for s in result.sections for i in s.items] == [
        f"{partial['mappings'][0]['connection']} {partial['mappings'][0]['object_type']}"
    ]
    assert {s.name: s.summary() for s in result.sections}["ownership_rules"] == (
        "not in the file: left as it is"
    )
    after = _counts()
    assert (after["ownership"], after["routes"], after["erp"]) == (
        before["ownership"],
        before["routes"],
        before["erp"],
    )
    # An empty list, though, is a section with nothing in it.
    emptied = config_import(
        document={"format": "concord-config", "version": 1, "erp_routes": []},
        actor=None,
        dry_run=True,
    )
    assert sorted(i.key for i in emptied.sections[-1].removed) == [
        "UK01",
        "every other legal entity (the default)",
    ]
