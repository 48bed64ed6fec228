"""In headless Chromium: an integration admin opens the configuration console, changes how often
a connection is polled (the row changes in place and says so; beat's row holds the new interval
and its expiry), then tests the connection against the Harvest sandbox (a process of its own)
and reads the vendor's answer on the page; nothing breaks the Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import Page, expect

from integrations.models import AuditEvent
from integrations.roles import INTEGRATION_ADMIN
from integrations.services.connections import connection_create
from tests.e2e.test_content_security_policy import Watch
from tests.factories import UserFactory
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    HARVEST_TOKEN,
    Sandbox,
    isolated_state,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


def test_an_admin_changes_a_polling_interval_and_tests_the_connection(
    live_server,
    page: Page,
    shots: Shots,
    sandbox: Sandbox,  # noqa: F811
    sandbox_url: str,  # noqa: F811
) -> None:
    harvest = connection_create(
        name="Harvest (firm)",
        role="psa",
        vendor="harvest",
        base_url=f"{sandbox_url}/harvest/v2",
        credentials={"access_token": HARVEST_TOKEN, "account_id": "100001"},
        rate_limit_per_minute=400,
        max_concurrency=5,
    )
    UserFactory.create(username="ada", role=INTEGRATION_ADMIN)
    task = PeriodicTask.objects.get(name=f"poll connection {harvest.pk}")
    watch = Watch(page)
    base = live_server.url

    page.goto(f"{base}/config/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/config/")
    page.get_by_role("link", name="Schedules").first.click()
    expect(page.get_by_role("heading", name="Schedules")).to_be_visible()
    row = page.locator(f"#schedule-{task.pk}")
    expect(row).to_contain_text("Polls Harvest (firm) (Harvest).")
    interval = row.get_by_label(f"Interval of poll connection {harvest.pk} in seconds")
    expect(interval).to_have_value("120")
    shots(page, "schedules")

    # Too often first: refused in words, nothing changed.
    interval.fill("5")
    row.get_by_role("button", name="Save").click()
    expect(page.locator("#console-status")).to_contain_text(
        "was not changed: Run it every 10 seconds at the most often"
    )
    expect(page.locator(f"#schedule-{task.pk} .error")).to_be_visible()
    task.refresh_from_db()
    assert task.interval.every == 120

    page.locator(f"#schedule-{task.pk}").get_by_label(
        f"Interval of poll connection {harvest.pk} in seconds"
    ).fill("300")
    page.locator(f"#schedule-{task.pk}").get_by_role("button", name="Save").click()
    expect(page.locator("#console-status")).to_contain_text(
        f"poll connection {harvest.pk} now runs every 300 s (was 120 s)"
    )
    expect(
        page.locator(f"#schedule-{task.pk}").get_by_label(
            f"Interval of poll connection {harvest.pk} in seconds"
        )
    ).to_have_value("300")
    shots(page, "interval-changed")
    task.refresh_from_db()
    assert (task.interval.every, task.expire_seconds, task.enabled) == (300, 300, True)
    changed = AuditEvent.objects.get(object_type="periodictask", action="update")
    assert (changed.actor_label, changed.changes["interval"]) == ("ada", ["120 s", "300 s"])
    # A reload shows what is stored, and the change in the page's trail.
    page.reload()
    expect(
        page.locator(f"#schedule-{task.pk}").get_by_label(
            f"Interval of poll connection {harvest.pk} in seconds"
        )
    ).to_have_value("300")
    expect(page.locator(".console-trail")).to_contain_text("interval 120 s \u2192 300 s")

    # The connection, from its schedule's row: test it against the sandbox.
    page.locator(f"#schedule-{task.pk}").get_by_role("link", name="Harvest (firm)").click()
    expect(page.get_by_role("heading", name="Harvest (firm)")).to_be_visible()
    expect(page.locator("#connection-test")).to_contain_text("Not tested from here yet.")
    page.get_by_role("button", name="Test connection").click()
    result = page.locator("#connection-test")
    expect(result).to_contain_text("It works.")
    expect(result).to_contain_text(
        "Harvest account Concord Sandbox (concord-sandbox.harvestapp.com), active."
    )
    expect(result).to_contain_text("GET /company")
    expect(result.locator("dd").nth(1)).to_have_text("200")
    expect(result).to_contain_text("Earlier tests")
    expect(result).not_to_contain_text(HARVEST_TOKEN)
    expect(page.locator("body")).not_to_contain_text(HARVEST_TOKEN)
    shots(page, "tested")
    (tested,) = AuditEvent.objects.filter(object_type="connection", action="test")
    assert (tested.actor_label, tested.changes["outcome"], tested.changes["status"]) == (
        "ada",
        "ok",
        200,
    )

    assert watch.violations() == []
    assert watch.errors == []
