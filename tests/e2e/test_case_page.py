"""The case page in headless Chromium: a PMO user refused a finance case on the page and in the
API; two people retrying one case at the same moment, exactly one retry happening; assign, take,
comment and waive through the page, with htmx and without JavaScript; not one CSP violation."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from exceptions.models import CaseEvent, ExceptionCase
from integrations.models import OutboxMessage
from tests.e2e.test_content_security_policy import Watch
from tests.exceptions.cases import finance_case, finance_user, fresh, pmo_user
from tests.exceptions.test_case_page import parked_case

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


@contextmanager
def signed_in(
    browser: Browser, base: str, username: str, *, javascript: bool = True
) -> Iterator[tuple[Page, Watch]]:
    """A browser of its own (cookies and all), signed in as `username`."""
    context = browser.new_context(java_script_enabled=javascript)
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        watch = Watch(page)
        page.goto(f"{base}/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{base}/")
        yield page, watch
    finally:
        context.close()


def no_violations(watch: Watch) -> None:
    """Not one Content-Security-Policy violation, and no script error."""
    assert watch.violations() == []
    assert [text for text in watch.console if "Content Security Policy" in text] == []
    assert watch.errors == []


def notice(page: Page) -> Locator:
    return page.locator("#case-notice")


def test_a_pmo_user_is_refused_a_finance_case_on_the_page_and_in_the_api(
    live_server, browser: Browser, shots: Shots
) -> None:
    case = parked_case(1)
    pmo_user(username="pat")
    base = live_server.url
    refusal = f"Case #{case.pk} is in the Finance queue, which you do not work in."
    with signed_in(browser, base, "pat") as (page, watch):
        response = page.goto(f"{base}/cases/{case.pk}/")
        assert response is not None
        assert response.status == 403
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "You don't have access to this page"
        )
        expect(page.get_by_role("main")).to_contain_text(refusal)
        expect(page.get_by_text(case.message)).to_have_count(0)
        expect(page.get_by_role("button", name="Retry")).to_have_count(0)
        shots(page, "refused-page")
        no_violations(watch)

        # The API, with the same session: the same refusal, in the same words.
        api = page.request.get(f"{base}/api/v1/cases/{case.pk}/")
        assert api.status == 403
        assert api.json() == {"detail": refusal}
        listed = page.request.get(f"{base}/api/v1/cases/?queue=finance")
        assert listed.status == 200
        assert listed.json()["results"] == []
    assert list(CaseEvent.objects.filter(case=case).values_list("action", flat=True)) == ["opened"]


def test_two_browsers_retry_one_case_at_once_and_exactly_one_retry_happens(
    live_server, browser: Browser, shots: Shots
) -> None:
    case = parked_case(3)
    finance_user(username="ada")
    finance_user(username="bob")
    base = live_server.url
    url = f"{base}/cases/{case.pk}/"
    with (
        signed_in(browser, base, "ada") as (ada, ada_watch),
        signed_in(browser, base, "bob") as (bob, bob_watch),
    ):
        for page, name in ((ada, "ada"), (bob, "bob")):
            page.goto(url)
            expect(page.get_by_role("heading", level=1)).to_contain_text("Vendor validation")
            expect(page.locator("#mapped")).to_contain_text("TaxNumber is required")
            shots(page, f"{name}-opened")
        # Both saw revision 0; both click Retry, the second before the first has come back.
        ada.get_by_role("button", name="Retry", exact=True).click()
        bob.get_by_role("button", name="Retry", exact=True).click()
        for page in (ada, bob):
            expect(notice(page)).to_be_visible()
        shots(ada, "ada-after-retry")
        shots(bob, "bob-after-retry")

        (retried,) = CaseEvent.objects.filter(case=case, action="retried")
        who = retried.actor_label
        winner, loser = (ada, bob) if who == "ada" else (bob, ada)
        expect(notice(winner)).to_have_text(f"Retried: {retried.after['summary']}.")
        expect(notice(winner)).to_have_attribute("role", "status")
        # The other hears who acted, and nothing was done for them.
        expect(notice(loser)).to_have_text(
            re.compile(rf"^{who} retried this case \d+ seconds? ago; nothing was done\.$")
        )
        expect(notice(loser)).to_have_attribute("role", "alert")
        # Both now look at the case as it stands: revision 1, one retry in the trail.
        for page in (ada, bob):
            expect(page.locator('input[name="revision"]').first).to_have_value("1")
            expect(page.locator("#trail")).to_contain_text(f"{who} Retried")
        no_violations(ada_watch)
        no_violations(bob_watch)
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3
    assert CaseEvent.objects.filter(case=case, action="retried").count() == 1
    assert fresh(case).revision == 1


def test_take_reassign_comment_and_waive_through_the_page(
    live_server, browser: Browser, shots: Shots
) -> None:
    case = finance_case("customer Umbrella GmbH")
    finance_user(username="ada")
    finance_user(username="bob")
    base = live_server.url
    with signed_in(browser, base, "ada") as (page, watch):
        page.goto(f"{base}/cases/{case.pk}/")
        expect(page.get_by_role("heading", level=1)).to_contain_text("Vendor validation")
        shots(page, "opened")

        # A double click sends one request: the button is disabled while it is in flight.
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.get_by_role("button", name="Take it").dblclick()
        expect(notice(page)).to_have_text("You took this case.")
        assert posts == [f"{base}/cases/{case.pk}/take/"]
        expect(page.locator(".facts")).to_contain_text("ada (you)")
        shots(page, "taken")

        page.get_by_label("Reassign to").select_option(label="bob")
        page.get_by_role("button", name="Reassign").click()
        expect(notice(page)).to_have_text("Reassigned to bob.")
        shots(page, "reassigned")

        page.get_by_label("Add a comment").fill("Asked Umbrella for their VAT number.")
        page.get_by_role("button", name="Add comment").click()
        expect(notice(page)).to_have_text("Comment added.")
        expect(page.locator("#comments")).to_contain_text("Asked Umbrella for their VAT number.")
        shots(page, "commented")

        # A waiver without a reason is refused, next to the form.
        page.get_by_role("button", name="Waive").click()
        expect(page.locator("#waive-error")).to_have_text(
            "A waiver needs a reason: say why this case needs no fix."
        )
        shots(page, "waive-refused")
        page.get_by_label(re.compile("^Waive: why")).fill("Umbrella cancelled the project.")
        page.get_by_role("button", name="Waive").click()
        expect(notice(page)).to_have_text("Waived: Umbrella cancelled the project.")
        expect(page.locator(".case-status")).to_have_text("Waived")
        expect(page.get_by_role("button", name="Waive")).to_have_count(0)
        trail = page.locator("#trail")
        for what in ("Taken", "Reassigned", "Commented", "Waived"):
            expect(trail).to_contain_text(f"ada {what}")
        shots(page, "waived")
        no_violations(watch)
    assert list(CaseEvent.objects.filter(case=case).values_list("action", flat=True)) == [
        "opened",
        "taken",
        "reassigned",
        "commented",
        "waived",
    ]
    assert fresh(case).status == ExceptionCase.Status.WAIVED


def test_the_actions_work_without_javascript(live_server, browser: Browser, shots: Shots) -> None:
    case = finance_case()
    finance_user(username="ada")
    base = live_server.url
    with signed_in(browser, base, "ada", javascript=False) as (page, watch):
        page.goto(f"{base}/cases/{case.pk}/")
        # No script runs, so the fix form is not fetched: its link is there instead.
        expect(page.get_by_role("link", name="Fix customer billing profile")).to_be_visible()
        page.get_by_role("button", name="Take it").click()
        expect(page).to_have_url(f"{base}/cases/{case.pk}/")
        expect(page.locator(".messages")).to_have_text("You took this case.")
        shots(page, "taken")
        page.get_by_label("Add a comment").fill("Done without JavaScript.")
        page.get_by_role("button", name="Add comment").click()
        expect(page.locator(".messages")).to_have_text("Comment added.")
        expect(page.locator("#comments")).to_contain_text("Done without JavaScript.")
        shots(page, "commented")
        assert [text for text in watch.console if "Content Security Policy" in text] == []
    assert list(CaseEvent.objects.filter(case=case).values_list("action", flat=True)) == [
        "opened",
        "taken",
        "commented",
    ]
