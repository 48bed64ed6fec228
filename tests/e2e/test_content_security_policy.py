"""In headless Chromium: every page of every role, the sign-in pages and the API docs work under
the Content-Security-Policy with not one violation, and a violation would be seen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from exceptions.models import ExceptionCase
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from tests.exceptions.cases import finance_case, pmo_case
from tests.factories import CustomerFactory, ProjectFactory, TimeEntryFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
# Each role's pages besides the overview and the API docs, which every role opens.
CASE_PAGES = ["/cases/", "/cases/mine/", "/cases/sla/"]
ROLE_PAGES = {
    VIEWER: [],
    FINANCE: ["/finance/", "/actuals/", *CASE_PAGES],
    PMO: ["/pmo/", "/actuals/", *CASE_PAGES],
    SALES_OPS: ["/sales-ops/", *CASE_PAGES],
    INTEGRATION_ADMIN: ["/integration-admin/", "/admin/", "/actuals/", *CASE_PAGES],
}
# A case each role opens (its page loads the fix form with htmx, so that is checked too).
ROLE_CASE: dict[str, Callable[[], ExceptionCase]] = {
    FINANCE: finance_case,
    PMO: pmo_case,
    INTEGRATION_ADMIN: finance_case,
}
# Runs in every document before its own scripts, outside the page's policy (Playwright injects it
# through the DevTools protocol): it records each violation the browser reports.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


class Watch:
    """What the browser said about the policy: console messages and violation events."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _console(self, message) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.console.append(message.text)

    def violations(self) -> list[str]:
        return list(self.page.evaluate("window.__cspViolations"))


def _visit(page: Page, watch: Watch, url: str, shot: Path) -> None:
    response = page.goto(url)
    assert response is not None
    assert response.status == 200, url
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_load_state("networkidle")
    page.screenshot(path=shot, full_page=True)
    assert watch.violations() == [], url


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")


def _api_docs(page: Page, watch: Watch, base: str, shot: Path) -> None:
    _visit(page, watch, f"{base}/api/v1/docs/", shot)
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Concord API")
    # Swagger UI works, not only draws: open an operation and call it from the page (a fetch to
    # this origin under connect-src 'self'). Assignments come first, drawn before any scrolling.
    operation = page.locator("#operations-assignments-assignments_list")
    operation.locator(".opblock-summary-control").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(
        operation.locator(".live-responses-table tr.response .response-col_status")
    ).to_have_text("200")
    page.screenshot(path=shot.with_name(f"{shot.stem}-tried.png"))
    assert watch.violations() == []


@pytest.mark.parametrize("role", list(ROLE_PAGES))
def test_each_role_browses_its_pages_without_a_policy_violation(
    live_server, browser: Browser, tmp_path: Path, role: str
) -> None:
    username = role.lower().replace(" ", "-")
    UserFactory.create(username=username, role=role, is_staff=role == INTEGRATION_ADMIN)
    project = ProjectFactory.create()
    TimeEntryFactory.create(project=project)
    CustomerFactory.create(name="Umbrella plc", tax_number="")

    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = Watch(page)
    try:
        base = live_server.url
        _visit(page, watch, f"{base}/login/", tmp_path / f"{username}-login.png")
        _sign_in(page, base, username)
        assert watch.violations() == []
        case = ROLE_CASE[role]() if role in ROLE_CASE else None
        for url in ["/", *ROLE_PAGES[role], *([f"/cases/{case.pk}/"] if case else [])]:
            name = url.strip("/").replace("/", "-") or "home"
            _visit(page, watch, f"{base}{url}", tmp_path / f"{username}-{name}.png")
        _api_docs(page, watch, base, tmp_path / f"{username}-api-docs.png")
    finally:
        context.close()
    assert watch.console == []
    assert watch.errors == []


def test_the_admin_sign_in_page_shows_no_policy_violation(
    live_server, page: Page, tmp_path: Path
) -> None:
    watch = Watch(page)
    _visit(page, watch, f"{live_server.url}/admin/login/", tmp_path / "admin-login.png")
    expect(page.get_by_label("Username")).to_be_visible()
    assert watch.console == []
    assert watch.errors == []


def test_an_inline_script_is_refused_and_reported(live_server, page: Page) -> None:
    """The watch above sees violations: an injected inline script does not run, and is named."""
    watch = Watch(page)
    page.goto(f"{live_server.url}/login/")
    page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.__ran = true;";
          document.body.appendChild(script);
        }"""
    )
    page.wait_for_function("window.__cspViolations.length > 0")
    assert page.evaluate("window.__ran === undefined")
    assert watch.violations() == ["script-src-elem blocked inline"]
    assert any("Content Security Policy" in text for text in watch.console)
