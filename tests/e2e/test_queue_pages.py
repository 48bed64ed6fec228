"""In headless Chromium: a finance user filters the queue list to their queue and opens a
"missing tax number" case; an integration admin retries a root-cause group in bulk and each
case's held work is re-run exactly once; an htmx filter keeps the URL and survives a reload; and
no page breaks the Content-Security-Policy."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from exceptions.models import CaseEvent, ExceptionCase, WorkQueue
from exceptions.services import Blocked, case_open_or_join
from integrations.models import OutboxMessage
from integrations.roles import FINANCE, INTEGRATION_ADMIN
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.e2e.test_content_security_policy import Watch
from tests.exceptions.cases import entries, mapping_case, pmo_case
from tests.factories import CustomerFactory, UserFactory, make_connection

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
Shots = Callable[[Page, str], Path]


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")


def _missing_tax_number_case(customer: str) -> ExceptionCase:
    """The case the ERP sandbox's refusal opens (integrations/sync/failures.py): an invoice for
    a reverse-charge customer with no VAT number."""
    return case_open_or_join(
        case_type="vendor_validation",
        subject={
            "vendor": "Xero",
            "noun": "invoice",
            "about": f"customer {customer}",
            "complaint": (
                "The tax rate 'Reverse Charge' requires the contact to have a tax number "
                f"(VAT number); contact '{customer}' has none."
            ),
        },
        records=[
            Blocked(
                record_type="invoice",
                record_id=5,
                label="Draft invoice CONCORD-INV-5 (3 lines)",
                amount=Decimal("3150.00"),
                currency="GBP",
                hours=Decimal("22.50"),
            )
        ],
        process="time_to_erp",
        step="post_invoice",
    )


def test_a_finance_user_filters_to_their_queue_and_opens_a_missing_tax_number_case(
    live_server, page: Page, shots: Shots
) -> None:
    fiona = UserFactory.create(username="fiona", role=FINANCE)
    WorkQueue.objects.get(code="pmo").members.add(fiona)  # she helps PMO too
    case = _missing_tax_number_case("Umbrella GmbH")
    other = pmo_case()
    watch = Watch(page)
    base = live_server.url

    _sign_in(page, base, "fiona")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Cases").click()
    expect(page).to_have_url(f"{base}/cases/")
    expect(page.get_by_role("heading", name="Cases", exact=True)).to_be_visible()
    results = page.locator("#queue-results")
    expect(results.locator(f"#case-{case.pk}")).to_be_visible()
    expect(results.locator(f"#case-{other.pk}")).to_be_visible()  # both her queues at first
    expect(results).to_contain_text("GBP 3,150.00")
    shots(page, "both-queues")

    filters = page.get_by_role("region", name="Filters")
    filters.get_by_label("PMO").uncheck()
    expect(filters.get_by_label("Finance")).to_be_checked()
    filters.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"/cases/\?queue=&queue=finance&q=&status=open&"))
    expect(results.locator(f"#case-{other.pk}")).to_have_count(0)
    row = results.locator(f"#case-{case.pk}")
    expect(row).to_contain_text("Vendor validation")
    expect(row).to_contain_text("requires the contact to have a tax number")
    expect(row).to_contain_text("Finance")
    expect(row).to_contain_text("P2")
    expect(row).to_contain_text("On time")  # the SLA state in words, not only a colour
    shots(page, "filtered-to-finance")

    row.get_by_role("link", name="tax number").click()
    expect(page).to_have_url(f"{base}/cases/{case.pk}/")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_be_visible()
    expect(page.locator("main")).to_contain_text("Umbrella GmbH")
    shots(page, "case-page")
    assert watch.violations() == []
    assert watch.errors == []


def test_an_htmx_filter_keeps_the_url_and_the_same_list_on_reload(
    live_server, page: Page, shots: Shots
) -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    big = _missing_tax_number_case("Umbrella GmbH")
    small = case_open_or_join(
        case_type="vendor_validation",
        subject={
            "vendor": "Xero",
            "noun": "invoice",
            "about": "customer Initech",
            "complaint": "x",
        },
        records=entries(1, amount="80", currency="EUR"),
        process="time_to_erp",
        step="post_invoice",
    )
    watch = Watch(page)
    base = live_server.url
    _sign_in(page, base, "fiona")
    page.goto(f"{base}/cases/")
    # A mark on the window: an htmx swap keeps it, a full page load would not.
    page.evaluate("window.__stayed = true")
    filters = page.get_by_role("region", name="Filters")
    filters.get_by_label("Amount from").fill("1000")
    filters.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"/cases/\?.*amount_min=1000&.*sort=sla$"))
    results = page.locator("#queue-results")
    expect(results.locator(f"#case-{small.pk}")).to_have_count(0)
    expect(results.locator(f"#case-{big.pk}")).to_be_visible()
    expect(results).to_contain_text("1 case matching these filters")
    assert page.evaluate("window.__stayed === true")
    shots(page, "filtered-by-htmx")

    # A sort link swaps the results, pushes its URL and keeps the filter.
    results.get_by_role("link", name="Amount blocked").click()
    expect(page).to_have_url(re.compile(r"/cases/\?.*amount_min=1000&.*sort=amount$"))
    expect(results.get_by_role("link", name="Amount blocked")).to_have_attribute(
        "aria-current", "true"
    )
    assert page.evaluate("window.__stayed === true")
    # The filter form's hidden sort followed (out-of-band swap): filtering again keeps it.
    assert page.locator("#queue-filters input[name=sort]").input_value() == "amount"

    page.reload()
    assert page.evaluate("window.__stayed === undefined")
    expect(page.get_by_role("region", name="Filters").get_by_label("Amount from")).to_have_value(
        "1000"
    )
    expect(results.locator(f"#case-{small.pk}")).to_have_count(0)
    expect(results.locator(f"#case-{big.pk}")).to_be_visible()
    shots(page, "after-reload")

    page.go_back()
    expect(page).to_have_url(re.compile(r"/cases/\?.*amount_min=1000&.*sort=sla$"))
    expect(page.locator("#queue-results").locator(f"#case-{big.pk}")).to_be_visible()
    assert watch.violations() == []
    assert watch.errors == []


def _parked_case(connection, name: str, error_kind: str, error: str) -> ExceptionCase:
    """A permanent-error case of `connection` with one outbox row parked on it, as
    integrations/sync/failures.py leaves them: one root-cause group per connection."""
    customer = CustomerFactory.create(name=name)
    case = case_open_or_join(
        case_type="permanent_error",
        subject={
            "vendor": "Xero",
            "noun": "contact",
            "about": f"customer {customer.name}",
            "connection_id": connection.pk,
            "error_kind": error_kind,
            "error": error,
            "attempts": 1,
        },
        records=[Blocked(record_type="customer", record_id=customer.pk, label=customer.name)],
        process="provisioning",
        step="push_contact",
        connection_id=connection.pk,
    )
    row = outbox_message(
        connection=connection,
        process="provisioning",
        step="push_contact",
        operation="put_contacts",
        record=customer,
        version=1,
        payload={"Name": customer.name},
    )
    outbox_enqueue(messages=[row])
    OutboxMessage.objects.filter(connection=connection, exception_case__isnull=True).update(
        state=OutboxMessage.State.PARKED, exception_case=case, last_error=error
    )
    return case


def test_a_bulk_retry_of_a_group_reruns_each_case_once(
    live_server, page: Page, shots: Shots
) -> None:
    UserFactory.create(username="ines", role=INTEGRATION_ADMIN)
    xero = make_connection(name="Xero UK")
    group = [
        _parked_case(xero, "Globex GmbH", "http_401", "http_401: token revoked"),
        _parked_case(xero, "Initech Ltd", "http_403", "http_403: organisation not connected"),
        _parked_case(xero, "Umbrella plc", "http_410", "http_410: endpoint retired"),
    ]
    assert len({c.group_key for c in group}) == 1
    outsider = mapping_case(99, "Contacts", "no value map for DefaultCurrency 'XBT'")
    watch = Watch(page)
    base = live_server.url
    _sign_in(page, base, "ines")
    page.goto(f"{base}/cases/")
    results = page.locator("#queue-results")
    for case in [*group, outsider]:
        expect(results.locator(f"#case-{case.pk}")).to_be_visible()

    # "Select all on this page" ticks every case (static/js/queue.js), and unticks them.
    select_all = results.get_by_label("Select all cases on this page")
    select_all.check()
    for case in [*group, outsider]:
        expect(results.get_by_label(f"Select case #{case.pk}", exact=True)).to_be_checked()
    select_all.uncheck()
    expect(results.get_by_label(f"Select case #{outsider.pk}", exact=True)).not_to_be_checked()

    for case in group:
        results.get_by_label(f"Select case #{case.pk}", exact=True).check()
    shots(page, "group-selected")
    results.get_by_role("button", name="Retry").click()
    message = page.locator("#queue-messages")
    expect(message).to_contain_text("Retried 3 cases")
    for case in group:
        expect(message).to_contain_text(f"#{case.pk} replayed 1 parked outbox row(s)")
    expect(page).to_have_url(f"{base}/cases/")  # the list stays where it was
    shots(page, "retried")

    for case in group:
        replays = OutboxMessage.objects.filter(exception_case=case, replay_of__isnull=False)
        assert replays.count() == 1, case.pk
        assert CaseEvent.objects.filter(case=case, action="retried").count() == 1, case.pk
    assert not CaseEvent.objects.filter(case=outsider, action="retried").exists()

    # Again, from the re-rendered page (new revisions): nothing is parked any more, nothing
    # is re-run a second time, and the person is told so.
    for case in group:
        results.get_by_label(f"Select case #{case.pk}", exact=True).check()
    results.get_by_role("button", name="Retry").click()
    expect(page.locator("#queue-messages")).to_contain_text(
        "None of these cases has anything left to retry; nothing was done."
    )
    shots(page, "nothing-left")
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3
    assert CaseEvent.objects.filter(action="retried").count() == 3
    assert watch.violations() == []
    assert watch.errors == []


def test_the_list_my_work_and_sla_pages_work_without_javascript(
    live_server, browser, shots: Shots
) -> None:
    fiona = UserFactory.create(username="fiona", role=FINANCE)
    case = _missing_tax_number_case("Umbrella GmbH")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        base = live_server.url
        _sign_in(page, base, "fiona")
        page.goto(f"{base}/cases/")
        results = page.locator("#queue-results")
        results.get_by_label(f"Select case #{case.pk}", exact=True).check()
        results.get_by_role("button", name="Take").click()
        # A plain POST, answered by a redirect back to the list with the result.
        expect(page).to_have_url(f"{base}/cases/")
        expect(page.locator(".messages")).to_contain_text("You took 1 case.")
        shots(page, "taken-without-js")
        page.goto(f"{base}/cases/mine/")
        expect(page.locator(f"#case-{case.pk}")).to_be_visible()
        page.goto(f"{base}/cases/sla/")
        expect(page.get_by_role("heading", name="Finance")).to_be_visible()
        shots(page, "sla")
    finally:
        context.close()
    assert ExceptionCase.objects.get(pk=case.pk).assignee_id == fiona.pk
