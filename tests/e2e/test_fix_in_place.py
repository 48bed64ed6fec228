"""In headless Chromium: a finance user fixes a "missing tax number" case in place, sees the case
resolve, and the invoice appears in the ERP sandbox, exactly once, with the tax number on its
contact.

The case is a real one: a billing run bills Umbrella GmbH's approved time under EU reverse
charge, the dispatcher sends the invoice to the Xero sandbox (a process of its own), and Xero
refuses it because the contact has no tax number. The outbox is dispatched by calling
`outbox_dispatch` from the test (after the refusal, and after the click), not by a Celery
worker: what is under test is the page and the order of the two writes the fix makes (the
contact's update first, then the invoice), which the dispatcher decides the same either way;
the workers' own end-to-end runs are tests/e2e/test_background_processes.py and
test_time_to_erp_exactly_once.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from exceptions.models import ExceptionCase
from integrations.models import Connection, Customer, Invoice, OutboxMessage
from integrations.roles import FINANCE
from integrations.workflows.time_to_erp import invoice_reference
from tests.e2e.test_content_security_policy import Watch
from tests.factories import UserFactory
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)
from tests.workflows.test_fixes import (
    dispatch_all,
    refused_case,
    sandbox_contact,
    sandbox_invoices,
    umbrella_firm,
    xero_contact,
)

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")


def test_finance_fixes_a_missing_tax_number_and_the_invoice_reaches_xero(
    live_server,
    browser: Browser,
    shots: Shots,
    sandbox: Sandbox,  # noqa: F811
    make_connection: Callable[..., Connection],  # noqa: F811
) -> None:
    xero = make_connection("xero", rate_limit_per_minute=600)
    umbrella_firm(xero, contact_id=xero_contact(xero, "Umbrella GmbH"))
    case = refused_case(xero)
    UserFactory.create(username="fiona", role=FINANCE)
    base = live_server.url

    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = Watch(page)
    try:
        _sign_in(page, base, "fiona")
        page.goto(f"{base}/cases/{case.pk}/")
        fix = page.locator("section#fix")
        # The case page loads the fix form into its section with htmx.
        tax_number = fix.get_by_label("Tax number")
        expect(tax_number).to_have_value("")
        expect(fix.get_by_role("heading")).to_contain_text("customer billing profile")
        expect(fix).to_contain_text("Umbrella GmbH")
        shots(page, "case-with-its-fix-form")

        # A number that is not a German VAT number comes back with the reason, as typed (400).
        tax_number.fill("DE123")
        fix.get_by_role("button", name="Save and send again").click()
        expect(fix.get_by_role("alert")).to_have_text(
            "DE123 is not a valid DE tax number: The number has an invalid length."
        )
        expect(fix.get_by_label("Tax number")).to_have_value("DE123")
        shots(page, "refused-with-the-reason")
        assert Customer.objects.get().tax_number == ""

        fix.get_by_label("Tax number").fill("de 811 907 980")
        fix.get_by_role("button", name="Save and send again").click()
        notice = fix.get_by_role("status")
        expect(notice).to_have_text(
            f"Tax number set on Umbrella GmbH; written to Xero ({xero.name}) through the "
            "outbox; the invoice will be sent again once it is there."
        )
        # The form again, with the number as Concord now holds it.
        expect(fix.get_by_label("Tax number")).to_have_value("DE811907980")
        shots(page, "fixed-and-written-to-xero")
        assert Customer.objects.get().tax_number == "DE811907980"

        # The outbox goes: the contact's update first, then the invoice it was waiting for.
        dispatch_all(xero)

        page.reload()
        expect(page.locator(".case-status")).to_have_text("Resolved")
        expect(page.locator("section#fix")).to_contain_text("This case is resolved")
        shots(page, "case-resolved")
        assert watch.violations() == []
    finally:
        context.close()
    assert watch.errors == []
    # The browser and htmx log the refused attempt's 400 (it is swapped all the same, by the
    # responseHandling in base.html); nothing else.
    assert [
        text
        for text in watch.console
        if "status of 400 (Bad Request)" not in text
        and not text.startswith("Response Status Error Code 400 from")
    ] == []

    assert ExceptionCase.objects.get(pk=case.pk).status == "resolved"
    update = OutboxMessage.objects.get(process="fix_in_place")
    resent = OutboxMessage.objects.get(process="time_to_erp", state="done")
    assert update.done_at is not None
    assert resent.done_at is not None
    assert update.done_at < resent.done_at
    # In the ERP sandbox: one invoice for the reference, on the contact that has the number.
    invoice = Invoice.objects.get()
    (posted,) = sandbox_invoices(sandbox, invoice_reference(invoice))
    contact = sandbox_contact(sandbox, "Umbrella GmbH")
    assert posted["ContactID"] == contact["id"]
    assert contact["TaxNumber"] == "DE811907980"
    assert invoice.number == posted["InvoiceNumber"]
