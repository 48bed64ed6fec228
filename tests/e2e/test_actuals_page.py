"""In headless Chromium: a finance user opens the actuals page, filters it to one legal entity
and two months, sees the rows, the totals and the missing exchange rate in words, downloads the
CSV, and the file holds what the page showed; no page breaks the Content-Security-Policy."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from integrations.roles import FINANCE
from tests.e2e.test_content_security_policy import Watch
from tests.factories import UserFactory
from tests.integrations.test_actuals import small_firm

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


def test_finance_user_filters_sees_totals_and_downloads_the_csv(
    live_server, page: Page, shots: Shots
) -> None:
    firm = small_firm()
    UserFactory.create(username="fiona", role=FINANCE)
    watch = Watch(page)
    base = live_server.url

    page.goto(f"{base}/actuals/")
    expect(page).to_have_url(f"{base}/login/?next=/actuals/")
    page.get_by_label("Username").fill("fiona")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/actuals/")
    expect(page.get_by_role("heading", name="Actuals for forecasting")).to_be_visible()
    shots(page, "opened")

    page.get_by_label("Period").select_option("month")
    page.get_by_label("From", exact=True).fill("2026-01-01")
    page.get_by_label("To", exact=True).fill("2026-02-28")
    page.get_by_label("Legal entity").select_option(label=str(firm.de))
    page.get_by_role("button", name="Show actuals").click()
    # htmx swapped the results and pushed the filtered URL.
    expect(page).to_have_url(
        re.compile(
            rf"/actuals/\?period=month&from=2026-01-01&to=2026-02-28&legal_entity={firm.de.pk}&"
        )
    )
    results = page.locator("#actuals-results")
    table = results.locator("table.actuals")
    expect(table.locator("tbody tr[id^=row-]")).to_have_count(2)
    expect(table).not_to_contain_text("Globex")
    jan = table.locator("tbody tr[id$='-2026-01']")
    expect(jan).to_contain_text("1,060.00 EUR")
    expect(jan).to_contain_text("22.6%")
    feb = table.locator("tbody tr[id$='-2026-02']")
    expect(feb).to_contain_text("600.00 EUR")
    expect(feb.locator(".actuals-missing").first).to_have_text("missing")
    expect(results).to_contain_text(
        "No exchange rate for USD/EUR in the 35 days to 28 Feb 2026: the figures that need it "
        "are missing, not 0."
    )
    totals = results.locator("#total-EUR")
    expect(totals).to_contain_text("14.00")
    expect(totals).to_contain_text("1,060.00")
    expect(totals).to_contain_text("240.00")
    expect(totals).to_contain_text("1 row missing an exchange rate")
    shots(page, "filtered")

    with page.expect_download() as info:
        results.get_by_role("link", name="CSV").click()
    download = info.value
    assert download.suggested_filename == "actuals-month-20260101-20260228.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert [(r["project_code"], r["period"]) for r in rows] == [
        ("PA", "2026-01"),
        ("PA", "2026-02"),
    ]
    assert rows[0]["revenue"] == "1060.00"
    assert rows[0]["cost"] == "820.00"
    assert rows[0]["margin_pct"] == "22.6"
    assert rows[1]["revenue_base"] == "600.00"
    assert rows[1]["cost_base"] == ""
    assert rows[1]["missing_rates"] == "USD/EUR"

    # Without JavaScript's help too: a reload of the pushed URL renders the same page.
    page.reload()
    expect(page.locator("table.actuals tbody tr[id^=row-]")).to_have_count(2)
    expect(page.get_by_label("From", exact=True)).to_have_value("2026-01-01")

    # A range with nothing in it says so.
    page.get_by_label("From", exact=True).fill("2025-01-01")
    page.get_by_label("To", exact=True).fill("2025-01-31")
    page.get_by_role("button", name="Show actuals").click()
    expect(page.locator("#actuals-results .empty")).to_contain_text("No approved time")
    shots(page, "empty")

    assert watch.violations() == []
    assert watch.errors == []
