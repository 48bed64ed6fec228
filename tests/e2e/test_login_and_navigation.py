"""In a real browser: sign in, see your role's pages, be refused the others, sign out."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from integrations.roles import FINANCE
from tests.factories import CustomerFactory, ProjectFactory, TimeEntryFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_finance_user_signs_in_and_sees_only_finance_pages(live_server, page: Page) -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    project = ProjectFactory.create()
    TimeEntryFactory.create(project=project)
    TimeEntryFactory.create(project=project)
    CustomerFactory.create(name="Umbrella plc", tax_number="")

    page.goto(f"{live_server.url}/finance/")
    expect(page).to_have_url(f"{live_server.url}/login/?next=/finance/")
    page.get_by_label("Username").fill("fiona")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")

    page.get_by_label("Password").fill("correct horse battery staple")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/finance/")
    expect(page.get_by_role("heading", name="Finance", exact=True)).to_be_visible()
    expect(page.locator(".figure strong")).to_have_text("15.00")
    expect(page.get_by_role("cell", name="Umbrella plc")).to_be_visible()

    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Finance")).to_have_attribute("aria-current", "page")
    expect(nav.get_by_role("link", name="PMO")).to_have_count(0)
    expect(nav.get_by_role("link", name="Integration admin")).to_have_count(0)

    response = page.goto(f"{live_server.url}/integration-admin/")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading")).to_have_text("You don't have access to this page")

    page.goto(f"{live_server.url}/")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{live_server.url}/login/")
