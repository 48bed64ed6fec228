"""In headless Chromium: an integration admin fixes an unmapped Harvest project state in the
mapping editor, and undoes it.

The cases are real ones. The firm's project-state value map was kept to "true" only, so the
Harvest sandbox's archived projects (``is_active: false``), read by a real poll, open a mapping
case; one archived project also has no code, which no value map fixes (a case of its own). The
admin starts a draft, adds the missing entry beside the archived project's real payload,
previews (the count of cases it fixes is checked against what then happens), publishes, retries
the fixed case as one group, and sees it resolve once the replays are applied; then rolls back to
v1, and the next archived project opens a case again.

The replays are applied by calling `inbound_process_batch` from the test (after the click), not
by a Celery worker: what is under test is the page and the services behind it; the workers'
own runs are tests/e2e/test_background_processes.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from exceptions.models import ExceptionCase
from integrations.mapping.selectors import mapping_cache_clear
from integrations.mapping.services import mapping_defaults_install, value_map_create
from integrations.models import Connection, InboundMessage, MappingSet, Project, ValueMap
from integrations.roles import INTEGRATION_ADMIN
from integrations.sync.inbound import inbound_process_batch
from integrations.sync.polling import poll_object
from tests.e2e.test_content_security_policy import Watch
from tests.factories import UserFactory
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    HARVEST_TOKEN,
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    mapping_cache_clear()
    yield
    mapping_cache_clear()


def _harvest_api(sandbox_url: str) -> httpx.Client:  # noqa: F811
    return httpx.Client(
        base_url=f"{sandbox_url}/harvest/v2",
        headers={
            "Authorization": f"Bearer {HARVEST_TOKEN}",
            "Harvest-Account-Id": "100001",
            "User-Agent": "Concord tests (tests@example.invalid)",
        },
        timeout=10,
    )


def _project(api: httpx.Client, client_id: int, name: str, code: str | None, active: bool) -> int:
    body = {
        "client_id": client_id,
        "name": name,
        "is_billable": True,
        "bill_by": "Project",
        "budget_by": "project",
        "is_active": active,
        "cost_budget": 12000.0,
        "starts_on": "2026-01-05",
    }
    if code:
        body["code"] = code
    response = api.post("/projects", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")


def _open_cases(connection: Connection) -> list[ExceptionCase]:
    return list(
        ExceptionCase.objects.filter(
            case_type="mapping_error", connection=connection, status="open"
        ).order_by("pk")
    )


def test_admin_adds_the_missing_project_state_previews_publishes_retries_and_rolls_back(
    live_server,
    browser: Browser,
    shots: Shots,
    sandbox: Sandbox,  # noqa: F811
    sandbox_url: str,  # noqa: F811
    make_connection: Callable[..., Connection],  # noqa: F811
) -> None:
    # An older installation: the project-state map knows "true" only.
    value_map_create(
        name="harvest_project_active",
        entries={"true": "active"},
        description="Harvest project is_active -> canonical project status",
        actor=None,
    )
    harvest = make_connection("harvest")
    mapping_defaults_install(connection=harvest)
    with _harvest_api(sandbox_url) as api:
        created = api.post("/clients", json={"name": "Acme Labs", "currency": "USD"})
        assert created.status_code == 201, created.text
        client_id = int(created.json()["id"])
        live = [_project(api, client_id, f"Live {n}", f"LIVE-{n}", True) for n in (1, 2)]
        for n in (1, 2, 3):
            _project(api, client_id, f"Archived {n}", f"ARCH-{n}", False)
        _project(api, client_id, "Archived without a code", None, False)
    poll_object(connection_id=harvest.pk, object_type="clients")
    poll_object(connection_id=harvest.pk, object_type="projects")
    # The archived projects with a code share one root cause; the one without has its own.
    by_size = {case.record_count: case for case in _open_cases(harvest)}
    assert sorted(by_size) == [1, 3]
    fixable, unfixable = by_size[3], by_size[1]
    archived = InboundMessage.objects.filter(
        connection=harvest, object_type="projects", payload__code="ARCH-1"
    ).get()
    UserFactory.create(username="ines", role=INTEGRATION_ADMIN)
    base = live_server.url
    editor = f"{base}/config/mappings/{harvest.pk}/projects/"

    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = Watch(page)
    try:
        _sign_in(page, base, "ines")
        page.goto(f"{base}/config/")
        page.get_by_role("link", name="Mappings").click()
        row = page.locator("table.mapping-index tr", has_text="projects")
        expect(row).to_contain_text("v1")
        expect(row.locator("td.num")).to_have_text("2")  # two open mapping cases
        shots(page, "mappings-of-every-connection")
        row.get_by_role("link", name="projects").click()
        expect(page).to_have_url(editor)
        expect(page.locator(".mapping-open-cases h2")).to_have_text("2 open mapping cases")

        # The archived project's real payload, picked beside the mapping (htmx swaps it in).
        page.locator("#sample-pick").select_option(str(archived.pk))
        sample = page.locator("#mapping-sample")
        expect(sample.locator(".mapping-payload")).to_contain_text('"code": "ARCH-1"')
        expect(sample.locator(".mapping-result-errors")).to_contain_text(
            "status (from is_active): value 'false' is not in value map "
            "'harvest_project_active' and the map has no default"
        )
        shots(page, "published-version-cannot-read-an-archived-project")

        page.get_by_role("button", name="Start a draft from v1").click()
        expect(page.locator(".messages")).to_contain_text("Draft v2 created (a copy of v1).")
        value_map = page.locator("#value-map-harvest_project_active")
        value_map.get_by_label("harvest_project_active: new value to look up").fill("false")
        value_map.get_by_label("harvest_project_active: what the new value gives").fill("archived")
        value_map.get_by_role("button", name="Add entry").click()
        # Checked before it is saved: "archived" is no project status.
        expect(page.locator(".mapping-value-map .notice.error")).to_contain_text(
            "'archived' is not a project status (planned, active, on_hold, closed)"
        )
        shots(page, "refused-entry-with-the-reason")
        value_map = page.locator("#value-map-harvest_project_active")
        value_map.get_by_label("harvest_project_active: what the new value gives").fill("closed")
        value_map.get_by_role("button", name="Add entry").click()
        expect(page.locator(".messages")).to_contain_text(
            "harvest_project_active: false → closed saved in the draft."
        )
        page.locator("#sample-pick").select_option(str(archived.pk))
        expect(page.locator("#mapping-sample .mapping-result-ok")).to_have_text(
            "v2 reads it; the published version does not."
        )
        shots(page, "draft-reads-the-archived-project")

        page.get_by_role("link", name="Preview against real payloads and open cases").click()
        summary = page.locator("#fix-summary")
        expect(summary).to_contain_text("v2 would fix 1 of 2 open cases")
        expect(summary).to_contain_text("(3 held payloads it reads)")
        shots(page, "preview-fixes-one-of-two-cases")

        page.get_by_role("button", name="Publish v2").click()
        expect(page.locator(".messages")).to_contain_text("v2 is published")
        expect(page.locator("#fixed-summary")).to_have_text(
            "v2 reads every payload of 1 of 2 open cases."
        )
        shots(page, "published-and-the-case-it-fixes")
        page.get_by_role("button", name="Retry the 1 fixed case").click()
        expect(page.locator(".messages")).to_contain_text(
            f"Retried 1 case(s): #{fixable.pk} replayed 3 inbound message(s)"
        )
        expect(page.locator(".mapping-replaying")).to_have_text(
            "Retried: its 3 replayed payloads wait to be applied; it closes once they are."
        )
        expect(page.get_by_role("button", name="Retry the 1 fixed case")).to_have_count(0)
        shots(page, "fixed-case-retried")

        # The replays are applied (a worker would do this on the ring): the case resolves.
        assert inbound_process_batch(connection_id=harvest.pk) == {"applied": 3}
        page.reload()
        expect(page.locator("#fixed-summary")).to_have_text(
            "v2 reads every payload of 0 of 1 open case."
        )
        page.goto(f"{base}/cases/{fixable.pk}/")
        expect(page.locator(".case-status")).to_have_text("Resolved")
        shots(page, "case-resolved")

        # Roll back to v1: a copy of v1, with the value map as v1 had it, is published as v3.
        page.goto(f"{editor}versions/")
        page.get_by_role("button", name="Roll back to v1").click()
        expect(page.locator(".messages")).to_contain_text(
            "Rolled back: v3, a copy of v1 with its value maps, is published."
        )
        expect(page.locator("#version-3")).to_contain_text("Published")
        expect(page.locator(".mapping-history")).to_contain_text("rollback_to")
        shots(page, "rolled-back-to-v1")
        assert watch.violations() == []
    finally:
        context.close()
    assert watch.errors == []

    # What the page showed is what happened: the one case it named is resolved, the other open.
    assert ExceptionCase.objects.get(pk=fixable.pk).status == "resolved"
    assert [case.pk for case in _open_cases(harvest)] == [unfixable.pk]
    assert set(Project.objects.filter(code__startswith="ARCH").values_list("code", "status")) == {
        ("ARCH-1", "closed"),
        ("ARCH-2", "closed"),
        ("ARCH-3", "closed"),
    }
    assert MappingSet.objects.get(connection=harvest, object_type="projects", version=3).status == (
        "published"
    )
    assert dict(
        ValueMap.objects.get(name="harvest_project_active").entries.values_list(
            "vendor_value", "canonical_value"
        )
    ) == {"true": "active"}

    # The earlier behaviour is back: the next project archived in Harvest opens a case again.
    sandbox.patch("harvest", "projects", live[0], {"is_active": False})
    poll_object(connection_id=harvest.pk, object_type="projects")
    reopened = [c for c in _open_cases(harvest) if c.pk != unfixable.pk]
    assert len(reopened) == 1
    assert reopened[0].record_count == 1
    assert "value 'false' is not in value map 'harvest_project_active'" in reopened[0].message
