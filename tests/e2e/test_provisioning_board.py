"""In headless Chromium, the way PMO and an integration admin use the provisioning board: the
board from the navigation, a stuck run that stands out, the filters (htmx, kept in the address),
one run's steps, the board refreshing itself when a run moves on, and the case that holds a run
one click away. One run is blocked by the real provisioning workflow (an opportunity whose CRM
account Concord does not know), the others are made as the workflow leaves them. No page breaks
the Content-Security-Policy."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from integrations.models import RunState, WorkflowRun, WorkflowStep
from integrations.roles import INTEGRATION_ADMIN, PMO
from integrations.workflows.provisioning import provisioning_start
from tests.e2e.test_content_security_policy import Watch
from tests.factories import LegalEntityFactory, UserFactory, make_connection
from tests.provisioning_runs import provisioning_runs

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")


def _blocked_by_validation() -> WorkflowRun:
    """A closed-won opportunity of an account Concord does not know: the workflow's own
    validation blocks its run on a case."""
    crm = make_connection(
        name="Salesforce (board)",
        role="crm",
        vendor="salesforce",
        base_url="http://127.0.0.1:8100/salesforce",
        credentials={"client_id": "cid", "client_secret": "s3cr3t-value-for-tests"},
    )
    run = provisioning_start(
        connection=crm,
        external_id="006BOARD0001",
        fields={
            "is_won": True,
            "name": "Globex rollout",
            "customer__external_id": "001UNKNOWN",
            "currency": "EUR",
            "amount": "48200",
            "region": "emea",
        },
    )
    assert run is not None
    assert run.state == RunState.BLOCKED
    return run


def test_pmo_finds_a_stuck_run_filters_opens_it_and_sees_the_board_refresh(
    live_server, page: Page, shots: Shots
) -> None:
    UserFactory.create(username="petra", role=PMO)
    uk = LegalEntityFactory.create(code="UK01", name="Concord UK Ltd")
    stuck = provisioning_runs(
        2, step="erp_customer", since=timedelta(hours=3), region="emea", legal_entity=uk
    )
    (moving,) = provisioning_runs(
        1, step="psa_project", since=timedelta(minutes=4), region="apac", legal_entity=uk
    )
    provisioning_runs(1, step="write_back", since=timedelta(days=1), state="done", region="emea")
    blocked = _blocked_by_validation()
    watch = Watch(page)
    base = live_server.url

    _sign_in(page, base, "petra")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Provisioning").click()
    expect(page).to_have_url(f"{base}/provisioning/")
    expect(page.get_by_role("heading", name="Provisioning board")).to_be_visible()
    results = page.get_by_role("region", name="Provisioning runs")
    expect(results).to_contain_text("5 runs")
    row = results.locator(f"#run-{stuck[0].pk}")
    expect(row).to_have_class(re.compile(r"\bstuck\b"))
    expect(row).to_contain_text("Customer in the ERP")
    expect(row).to_contain_text("3 hours")
    expect(row).to_contain_text("Stuck")
    # The workflow's own block: the check it stopped at, and why, in words.
    blocked_row = results.locator(f"#run-{blocked.pk}")
    expect(blocked_row).to_contain_text("Globex rollout")
    expect(blocked_row).to_contain_text("Checking account, contract and tax profile")
    expect(blocked_row).to_contain_text("account 001UNKNOWN is not known to Concord")
    expect(blocked_row.get_by_role("link", name=re.compile(r"Case #\d+"))).to_be_visible()
    expect(results.locator(f"#run-{moving.pk}")).not_to_have_class(re.compile(r"\bstuck\b"))
    shots(page, "board")

    # Filters by htmx: the address keeps them, the page is not reloaded.
    page.evaluate("window.__stayed = true")
    filters = page.get_by_role("region", name="Filters")
    filters.get_by_label("Stuck").select_option("yes")
    filters.get_by_label("Legal entity").select_option(label="Concord UK Ltd (UK01)")
    filters.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"/provisioning/\?.*stuck=yes"))
    expect(results).to_contain_text("2 runs")
    expect(results.locator(f"#run-{moving.pk}")).to_have_count(0)
    expect(results.locator(f"#run-{stuck[1].pk}")).to_be_visible()
    assert page.evaluate("window.__stayed === true")
    shots(page, "stuck-in-uk01")

    # One run: its steps, their timings and the ids each system gave.
    results.get_by_role("link", name=stuck[0].label).click()
    expect(page).to_have_url(f"{base}/provisioning/{stuck[0].pk}/")
    expect(page.get_by_role("heading", name=stuck[0].label)).to_be_visible()
    steps = page.locator("#run-steps")
    expect(steps.locator("#step-validate")).to_contain_text("Done")
    expect(steps.locator("#step-erp_customer")).to_contain_text("Waiting on the system")
    expect(steps.locator("#step-erp_customer")).to_contain_text("3 hours so far")
    expect(steps.locator("#step-psa_client")).to_contain_text("Not started")
    expect(steps).to_contain_text("Stuck")
    shots(page, "run")

    # The board refreshes itself: a run that moves on shows its new stage without a reload.
    page.go_back()
    page.goto(f"{base}/provisioning/")
    page.evaluate("window.__stayed = true")
    moving_row = page.locator(f"#run-{moving.pk}")
    expect(moving_row).to_contain_text("Project in the PSA")
    now = timezone.now()
    WorkflowStep.objects.filter(run=moving, name="psa_project").update(
        state="done", finished_at=now
    )
    WorkflowRun.objects.filter(pk=moving.pk).update(
        current_step="erp_dimension", step_started_at=now
    )
    expect(moving_row).to_contain_text("Project dimension in the ERP", timeout=25_000)
    assert page.evaluate("window.__stayed === true")
    shots(page, "refreshed")
    assert watch.violations() == []
    assert watch.errors == []


def test_an_integration_admin_opens_the_case_that_holds_a_run(
    live_server, page: Page, shots: Shots
) -> None:
    UserFactory.create(username="ian", role=INTEGRATION_ADMIN)
    blocked = _blocked_by_validation()
    watch = Watch(page)
    base = live_server.url

    _sign_in(page, base, "ian")
    page.goto(f"{base}/provisioning/?state=blocked")
    row = page.locator(f"#run-{blocked.pk}")
    row.get_by_role("link", name=re.compile(r"Case #\d+")).click()
    assert blocked.exception_case_id is not None
    expect(page).to_have_url(f"{base}/cases/{blocked.exception_case_id}/")
    expect(page.locator("main")).to_contain_text("001UNKNOWN")
    shots(page, "case")
    assert watch.violations() == []
    assert watch.errors == []
