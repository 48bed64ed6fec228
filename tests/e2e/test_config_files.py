"""In headless Chromium: an integration admin downloads the test installation's configuration
from /config/files/, changes the file (a rate limit, a value-map entry Harvest's projects read,
an ownership rule), uploads it, reads the dry run's diff, applies it and sees the result; the
file holds no secret and nothing breaks the Content-Security-Policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from integrations.models import AuditEvent, Connection, MappingSet, OwnershipRule, ValueMap
from integrations.roles import INTEGRATION_ADMIN
from tests.console.test_config_files import (  # noqa: F401 - the firm fixture
    HARVEST_TOKEN,
    XERO_SECRET,
    firm,
)
from tests.e2e.test_content_security_policy import Watch
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


def test_an_admin_promotes_a_changed_configuration_file(
    live_server: Any,
    page: Page,
    shots: Shots,
    firm: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    UserFactory.create(username="ada", role=INTEGRATION_ADMIN)
    watch = Watch(page)
    base = live_server.url

    page.goto(f"{base}/config/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/config/")
    page.get_by_role("link", name="Configuration as files").click()
    expect(page.get_by_role("heading", name="Configuration as files")).to_be_visible()
    shots(page, "files")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download the configuration (JSON)").click()
    assert download.value.suggested_filename == "concord-config.json"
    text = Path(download.value.path()).read_text()
    for secret in (XERO_SECRET, HARVEST_TOKEN):
        assert secret not in text
    document = json.loads(text)
    assert (document["format"], document["version"]) == ("concord-config", 1)

    # What the admin changed on the test installation, by hand here.
    harvest = next(c for c in document["connections"] if c["name"] == "Harvest")
    harvest["rate_limit_per_minute"] = 200
    active = next(m for m in document["value_maps"] if m["name"] == "harvest_project_active")
    active["entries"]["false"] = "on_hold"
    document["ownership_rules"].append(
        {"object_type": "project", "field": "region", "owner_role": "crm", "note": "Sold region"}
    )
    changed = tmp_path / "to-production.json"
    changed.write_text(json.dumps(document, indent=2))

    page.get_by_label("Configuration file").set_input_files(changed)
    page.get_by_role("button", name="Preview the changes").click()
    expect(page.get_by_role("heading", name="Preview of to-production.json")).to_be_visible()
    preview = page.locator("#files-preview")
    expect(preview).to_contain_text("Dry run, nothing written: 1 added, 3 changed, 0 removed")
    expect(page.locator("#files-connections + table")).to_contain_text(
        "rate_limit_per_minute: 100 → 200"
    )
    expect(page.locator("#files-value_maps + table")).to_contain_text(
        "entry false: closed → on_hold"
    )
    expect(page.locator("#files-mappings + table")).to_contain_text("Harvest projects")
    expect(page.locator("#files-ownership_rules + table")).to_contain_text("project.region")
    shots(page, "preview")
    # Nothing written by the preview.
    assert Connection.objects.get(name="Harvest").rate_limit_per_minute == 100
    assert not OwnershipRule.objects.filter(object_type="project", field="region").exists()

    page.get_by_role("button", name="Apply these changes").click()
    expect(page.locator(".messages")).to_contain_text(
        "to-production.json applied: 1 added, 3 changed, 0 removed. "
        "Mappings: Harvest projects: v2 published."
    )
    expect(page.locator(".console-trail")).to_contain_text("ada imported configuration file")
    expect(page.locator("#files-preview")).to_have_count(0)
    shots(page, "applied")

    assert Connection.objects.get(name="Harvest").rate_limit_per_minute == 200
    assert Connection.objects.get(name="Harvest").credentials["access_token"] == HARVEST_TOKEN
    assert OwnershipRule.objects.get(object_type="project", field="region").owner_role == "crm"
    assert (
        ValueMap.objects.get(name="harvest_project_active")
        .entries.get(vendor_value="false")
        .canonical_value
        == "on_hold"
    )
    assert MappingSet.objects.get(object_type="projects", status="published").version == 2
    (event,) = AuditEvent.objects.filter(object_type="consolesettings")
    assert (event.actor_label, event.changes["changed"]) == ("ada", [None, 3])

    assert watch.violations() == []
    assert watch.errors == []
