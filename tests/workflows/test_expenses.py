"""Approved expenses to the ERP with the time (workflow 2): an approved, billable expense becomes
one billing event and one line (``EX-<id>``, at cost) on the draft invoice of its contract,
legal entity and currency, beside that contract's time; the rules that apply to an expense hold
it on a case of its own type until fixed; it is billed once however many runs there are; and a
contract that says so has a run add its lines to its unsent draft of the month instead of
opening a new one, never to a draft that may have reached the ERP."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext

from exceptions.catalogue import QUEUE_ROLES, case_type_get
from exceptions.models import ExceptionCase
from exceptions.retry import retry_handler_for
from integrations.models import (
    ApprovalState,
    BillingEvent,
    Connection,
    Contract,
    Customer,
    ExchangeRate,
    Expense,
    Invoice,
    Milestone,
    OutboxMessage,
    Project,
    Resource,
    TaxRate,
    TimeEntry,
)
from integrations.workflows.time_to_erp import POST_STEP, PROCESS, billing_run
from tests.factories import make_connection
from tests.firms import BILLING_MONTH, approved_time, tm_project_firm

pytestmark = pytest.mark.django_db


@dataclass
class Firm:
    """Initech's time-and-materials project in GBP (VAT 20%) billed by a UK entity, with Ada
    Byron's approved time (two days of 7.50 hours at GBP 140 unless told otherwise)."""

    erp: Connection
    project: Project
    contract: Contract
    vat: TaxRate

    @property
    def worker(self) -> Resource:
        return Resource.objects.get(name="Ada Byron")


def _firm(*, days: tuple[int, ...] = (2, 3), add_to_open_draft: bool = False) -> Firm:
    erp = make_connection()
    vat = TaxRate.objects.create(code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20)
    project = tm_project_firm(
        erp,
        customer={"name": "Initech Ltd", "tax_number": "GB123456789"},
        contract_number="C-INI-1",
        project={"code": "P-INI", "name": "Apollo"},
        days=days,
        hours="7.50",
        tax_rate=vat,
    )
    contract = project.contract
    assert contract is not None
    if add_to_open_draft:
        Contract.objects.filter(pk=contract.pk).update(add_to_open_draft=True)
    return Firm(erp=erp, project=project, contract=contract, vat=vat)


def _spend(
    project: Project, amount: str, *, currency: str = "GBP", day: int = 5, **fields: Any
) -> Expense:
    """Ada Byron's approved, billable expense on `day` of the billing month."""
    values: dict[str, Any] = {
        "resource": Resource.objects.get(name="Ada Byron"),
        "project": project,
        "date": BILLING_MONTH.replace(day=day),
        "category": "Travel",
        "amount": Decimal(amount),
        "currency": currency,
        "approval_state": ApprovalState.APPROVED,
        **fields,
    }
    return Expense.objects.create(**values)


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from _walk(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _walk(inner)


def _sent_lines(invoice: Invoice) -> list[str]:
    """The line descriptions of the invoice's (one) outbox row, as the ERP would receive them:
    the payload its published mapping rendered."""
    (row,) = OutboxMessage.objects.filter(
        content_type=ContentType.objects.get_for_model(Invoice),
        object_id=invoice.pk,
        process=PROCESS,
        step=POST_STEP,
    )
    return [
        str(item["Description"])
        for node in _walk(row.payload)
        for item in node.get("LineItems", [])
    ]


def _ids(lines: list[str], prefix: str) -> list[int]:
    return sorted(int(line.split()[0][len(prefix) :]) for line in lines if line.startswith(prefix))


def test_expenses_go_on_the_invoice_of_their_contracts_time() -> None:
    firm = _firm()
    taxi = _spend(firm.project, "120.50", category="Taxi")
    hotel = _spend(firm.project, "45.00", category="Hotel", day=6)

    report = billing_run()

    assert (report.billed, report.expenses_billed, report.invoices) == (2, 2, 1)
    assert (report.blocked, report.expenses_blocked) == (0, 0)
    invoice = Invoice.objects.get()
    # 2 x 7.50 h x GBP 140 = 2,100.00 of time, 165.50 of expenses at cost, VAT 20% on both.
    assert (invoice.subtotal, invoice.tax_total, invoice.total) == (
        Decimal("2265.50"),
        Decimal("453.10"),
        Decimal("2718.60"),
    )
    events = BillingEvent.objects.filter(source=BillingEvent.Source.EXPENSE).order_by("expense_id")
    assert [(e.expense_id, e.quantity, e.unit_amount, e.amount, e.invoice_id) for e in events] == [
        (taxi.pk, Decimal("1"), Decimal("120.50"), Decimal("120.50"), invoice.pk),
        (hotel.pk, Decimal("1"), Decimal("45.00"), Decimal("45.00"), invoice.pk),
    ]
    lines = _sent_lines(invoice)
    assert _ids(lines, "EX-") == [taxi.pk, hotel.pk]
    assert len(_ids(lines, "TE-")) == 2
    assert f"EX-{taxi.pk} 2026-11-05 Ada Byron Taxi (GBP 120.50)" in lines
    row = OutboxMessage.objects.get()
    # The row's context counts the time's hours only, not one "hour" per expense.
    assert row.context["hours"] == "15.00"
    assert not ExceptionCase.objects.exists()


def test_an_expense_is_billed_once_however_many_runs() -> None:
    firm = _firm()
    spends = [_spend(firm.project, "10.00", day=d) for d in range(1, 8)]
    assert billing_run().expenses_billed == 7
    again = billing_run()
    assert (again.expenses_considered, again.expenses_billed, again.invoices) == (0, 0, 0)
    billed = Counter(
        BillingEvent.objects.filter(source="expense").values_list("expense_id", flat=True)
    )
    assert billed == {spend.pk: 1 for spend in spends}


def test_expenses_not_approved_or_not_billable_are_left_alone() -> None:
    firm = _firm()
    _spend(firm.project, "10.00", approval_state=ApprovalState.SUBMITTED)
    _spend(firm.project, "11.00", approval_state=ApprovalState.REJECTED)
    _spend(firm.project, "12.00", billable=False)
    kept = _spend(firm.project, "13.00")

    report = billing_run()

    assert (report.expenses_considered, report.expenses_billed) == (1, 1)
    assert list(BillingEvent.objects.filter(source="expense").values_list("expense_id")) == [
        (kept.pk,)
    ]


def test_an_expense_in_another_currency_goes_on_an_invoice_of_that_currency() -> None:
    firm = _firm()
    ExchangeRate.objects.create(
        base_currency="EUR", quote_currency="GBP", date=date.today(), rate=Decimal("0.86")
    )
    euros = _spend(firm.project, "80.00", currency="EUR")

    report = billing_run()

    assert (report.invoices, report.expenses_billed) == (2, 1)
    eur = Invoice.objects.get(currency="EUR")
    assert (eur.subtotal, eur.tax_total) == (Decimal("80.00"), Decimal("16.00"))
    assert _ids(_sent_lines(eur), "EX-") == [euros.pk]
    assert _ids(_sent_lines(Invoice.objects.get(currency="GBP")), "EX-") == []


def test_fixed_fee_time_waits_for_milestones_but_its_expenses_are_billed() -> None:
    firm = _firm()
    Contract.objects.filter(pk=firm.contract.pk).update(
        billing_model=Contract.BillingModel.FIXED_FEE
    )
    spend = _spend(firm.project, "99.90")

    report = billing_run()

    assert (report.billed, report.not_billable, report.expenses_billed) == (0, 2, 1)
    assert BillingEvent.objects.get().expense_id == spend.pk


# --- The rules, one at a time -----------------------------------------------------------------


def _project(firm: Firm, **fields: object) -> None:
    Project.objects.filter(pk=firm.project.pk).update(**fields)


def _route(firm: Firm, enabled: bool) -> None:
    Connection.objects.filter(pk=firm.erp.pk).update(enabled=enabled)


def _tax(firm: Firm, **fields: object) -> None:
    TaxRate.objects.filter(pk=firm.vat.pk).update(**fields)


def _customer_tax_number(firm: Firm, number: str) -> None:
    Customer.objects.filter(pk=firm.project.customer_id).update(tax_number=number)


def _tax_number_needed(firm: Firm) -> None:
    """Reverse charge: the tax profile needs the customer's tax number, which is blank."""
    _tax(firm, requires_customer_tax_number=True)
    _customer_tax_number(firm, "")


def _eur_rate(present: bool) -> None:
    if present:
        ExchangeRate.objects.create(
            base_currency="EUR", quote_currency="GBP", date=date.today(), rate=Decimal("0.86")
        )
    else:
        ExchangeRate.objects.all().delete()


Change = Callable[[Firm], None]
# case type, queue, currency of the expense, break, fix, words the message carries
RULES: list[tuple[str, str, str, Change, Change, str]] = [
    (
        "expense_on_inactive_project",
        "pmo",
        "GBP",
        lambda f: _project(f, status=Project.Status.CLOSED),
        lambda f: _project(f, status=Project.Status.ACTIVE),
        "the project is closed",
    ),
    (
        "expense_project_without_legal_entity",
        "pmo",
        "GBP",
        lambda f: _project(f, legal_entity=None),
        lambda f: _project(f, legal_entity=f.contract.legal_entity),
        "no legal entity",
    ),
    (
        "expense_project_without_contract",
        "pmo",
        "GBP",
        lambda f: _project(f, contract=None),
        lambda f: _project(f, contract=f.contract),
        "no contract",
    ),
    (
        "expense_missing_exchange_rate",
        "finance",
        "EUR",
        lambda f: _eur_rate(False),
        lambda f: _eur_rate(True),
        "no exchange rate from EUR to GBP",
    ),
    (
        "expense_no_erp_route",
        "integration_admin",
        "GBP",
        lambda f: _route(f, False),
        lambda f: _route(f, True),
        "no ERP connection is routed",
    ),
    (
        "expense_tax_treatment",
        "finance",
        "GBP",
        lambda f: _tax(f, active=False),
        lambda f: _tax(f, active=True),
        "its tax profile OUTPUT2 is no longer active",
    ),
    (
        "expense_tax_treatment",
        "finance",
        "GBP",
        lambda f: _tax(f, country="DE"),
        lambda f: _tax(f, country="GB"),
        "is a DE tax, which a GB legal entity cannot charge",
    ),
    (
        "expense_tax_treatment",
        "finance",
        "GBP",
        lambda f: _tax_number_needed(f),
        lambda f: _customer_tax_number(f, "GB123456789"),
        "needs the customer's tax number, and Initech Ltd has none",
    ),
]
RULE_IDS = [
    "inactive_project",
    "no_legal_entity",
    "no_contract",
    "no_exchange_rate",
    "no_erp_route",
    "tax_profile_inactive",
    "tax_of_another_country",
    "tax_number_missing",
]


@pytest.mark.parametrize(
    ("case_type", "queue", "currency", "brk", "fix", "words"), RULES, ids=RULE_IDS
)
def test_a_broken_rule_holds_the_expense_on_its_case_until_fixed(
    case_type: str, queue: str, currency: str, brk: Change, fix: Change, words: str
) -> None:
    firm = _firm(days=())  # expenses alone: the run's last pass bills them
    spend = _spend(firm.project, "80.00", currency=currency)
    brk(firm)

    report = billing_run()

    assert (report.expenses_considered, report.expenses_billed, report.expenses_blocked) == (
        1,
        0,
        1,
    )
    assert not BillingEvent.objects.exists()
    (case,) = ExceptionCase.objects.all()
    assert (case.case_type, case.queue, case.status) == (case_type, queue, "open")
    held = list(case.blocked_records.values_list("record_type", "record_id", "amount", "hours"))
    assert held == [("expense", spend.pk, Decimal("80.00"), Decimal("0.00"))]
    assert case.message.startswith(f"1 approved expense ({currency} 80.00)"), case.message
    assert words in case.message
    if case_type != "expense_project_without_legal_entity":
        assert case.legal_entity_id == firm.contract.legal_entity_id
    permission = case_type_get(case_type).fix_permission
    app_label, codename = permission.split(".")
    assert Group.objects.filter(
        name__in=QUEUE_ROLES[queue],
        permissions__codename=codename,
        permissions__content_type__app_label=app_label,
    ).exists(), f"no role of the {queue} queue has {permission}"
    # A run before the fix holds it still, on the same case.
    assert billing_run().expenses_blocked == 1
    assert ExceptionCase.objects.get().record_count == 1

    fix(firm)
    handler = retry_handler_for(case)
    assert handler is not None
    result = handler(case)

    assert result.summary == "billed 1 of 1 held expenses"
    assert BillingEvent.objects.get().expense_id == spend.pk
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED


def test_a_blocked_expense_does_not_hold_back_the_time_or_other_expenses() -> None:
    firm = _firm()
    other = tm_project_other(firm)
    blocked = _spend(other, "40.00")
    kept = _spend(firm.project, "15.00")
    Project.objects.filter(pk=other.pk).update(status=Project.Status.ON_HOLD)

    report = billing_run()

    assert (report.billed, report.expenses_billed, report.expenses_blocked) == (2, 1, 1)
    assert BillingEvent.objects.filter(source="expense").get().expense_id == kept.pk
    case = ExceptionCase.objects.get(case_type="expense_on_inactive_project")
    assert list(case.blocked_records.values_list("record_id", flat=True)) == [blocked.pk]


def tm_project_other(firm: Firm) -> Project:
    """A second project of Initech's contract."""
    return Project.objects.create(
        code="P-INI-2",
        name="Gemini",
        customer=firm.project.customer,
        contract=firm.contract,
        legal_entity=firm.contract.legal_entity,
        region="emea",
        currency="GBP",
        status="active",
    )


# --- Cost: nothing when no expense waits; set-based when thousands do ---------------------------


def test_a_run_with_no_expense_waiting_reads_the_expenses_once() -> None:
    _firm(days=tuple(range(1, 21)))
    with CaptureQueriesContext(connection) as queries:
        report = billing_run()
    assert report.billed == 20
    touching = [q["sql"] for q in queries.captured_queries if '"integrations_expense"' in q["sql"]]
    assert len(touching) == 1, touching
    assert "EXISTS" in touching[0].upper() or "LIMIT 1" in touching[0].upper()


def test_thousands_of_expenses_with_time_each_billed_once(settings: Any) -> None:
    """40 projects of 40 contracts, each with 50 approved entries and 60 expenses, 10 contracts
    with expenses alone, 100 expenses on a closed project: 2,000 entries and 3,100 expenses in
    one run of several chunks."""
    settings.CONCORD_MAX_LINES_PER_INVOICE = 100
    firm = _firm(days=())
    worker = firm.worker
    entity = firm.contract.legal_entity
    customer = firm.project.customer
    contracts = Contract.objects.bulk_create(
        Contract(
            number=f"C-BULK-{i:03d}",
            customer=customer,
            legal_entity=entity,
            billing_model="tm",
            currency="GBP",
            tax_rate=firm.vat,
            status="active",
        )
        for i in range(51)
    )
    projects = Project.objects.bulk_create(
        Project(
            code=f"P-BULK-{i:03d}",
            name=f"Bulk {i}",
            customer=customer,
            contract=contract,
            legal_entity=entity,
            region="emea",
            currency="GBP",
            status="closed" if i == 50 else "active",
        )
        for i, contract in enumerate(contracts)
    )
    with_time, alone, closed = projects[:40], projects[40:50], projects[50]
    day = BILLING_MONTH
    TimeEntry.objects.bulk_create(
        TimeEntry(
            resource=worker,
            project=p,
            date=day + timedelta(days=d % 28),
            hours=Decimal("1.25"),
            approval_state=ApprovalState.APPROVED,
        )
        for p in with_time
        for d in range(50)
    )
    Expense.objects.bulk_create(
        Expense(
            resource=worker,
            project=p,
            date=day + timedelta(days=d % 28),
            category="Travel",
            amount=Decimal("10.00") + d,
            currency="GBP",
            approval_state=ApprovalState.APPROVED,
        )
        for p in [*with_time, *alone]
        for d in range(60)
    )
    Expense.objects.bulk_create(
        Expense(
            resource=worker,
            project=closed,
            date=day,
            category="Hotel",
            amount=Decimal("100"),
            currency="GBP",
            approval_state=ApprovalState.APPROVED,
        )
        for _ in range(100)
    )
    waiting = set(Expense.objects.exclude(project=closed).values_list("pk", flat=True))
    assert len(waiting) == 3000

    with CaptureQueriesContext(connection) as queries:
        report = billing_run()

    assert (report.billed, report.expenses_billed, report.expenses_blocked) == (2000, 3000, 100)
    billed = Counter(
        BillingEvent.objects.filter(source="expense").values_list("expense_id", flat=True)
    )
    assert set(billed) == waiting
    assert set(billed.values()) == {1}
    # Per project with time: 50 entries + 60 expenses = 110 lines, two invoices (100 + 10);
    # per project of expenses alone: one invoice of 60.
    per_invoice = Counter(BillingEvent.objects.values_list("invoice_id", flat=True))
    assert max(per_invoice.values()) == 100
    assert len(per_invoice) == report.invoices == 40 * 2 + 10
    mixed = Invoice.objects.filter(billing_events__source="time").filter(
        billing_events__source="expense"
    )
    assert mixed.distinct().count() == 40  # every project's time invoice carries its expenses
    expected = Decimal("1.25") * 140 * 2000 + sum((Decimal("10.00") + d) * 50 for d in range(60))
    assert sum(Invoice.objects.values_list("subtotal", flat=True)) == expected
    assert OutboxMessage.objects.count() == report.invoices
    # Set-based: the query count does not follow the number of expenses (3,100 here).
    assert len(queries.captured_queries) < 80, len(queries.captured_queries)
    case = ExceptionCase.objects.get()
    assert (case.case_type, case.record_count) == ("expense_on_inactive_project", 100)


# --- Adding to the open draft (Contract.add_to_open_draft) ----------------------------------------


def test_a_contract_that_says_so_adds_to_its_unsent_draft() -> None:
    firm = _firm(add_to_open_draft=True)
    first = billing_run()
    assert first.invoices == 1
    draft = Invoice.objects.get()
    more = approved_time(firm.project, days=[9], hours="2.00")
    spend = _spend(firm.project, "30.00", day=9)

    second = billing_run()

    assert (second.invoices, second.drafts_extended, second.billed) == (0, 1, 1)
    assert Invoice.objects.get() == draft
    draft.refresh_from_db()
    # 17.00 h x 140 = 2,380.00 + 30.00, VAT 20%.
    assert (draft.subtotal, draft.tax_total, draft.total, draft.amount_due) == (
        Decimal("2410.00"),
        Decimal("482.00"),
        Decimal("2892.00"),
        Decimal("2892.00"),
    )
    lines = _sent_lines(draft)  # one row, rendered again from every line
    assert len(_ids(lines, "TE-")) == 3
    assert more[0].pk in _ids(lines, "TE-")
    assert _ids(lines, "EX-") == [spend.pk]
    row = OutboxMessage.objects.get()
    assert (row.state, row.attempts, row.context["hours"]) == ("pending", 0, "17.00")
    assert set(BillingEvent.objects.values_list("invoice_id", flat=True)) == {draft.pk}


def test_a_draft_that_may_have_reached_the_erp_is_never_changed() -> None:
    firm = _firm(add_to_open_draft=True)
    billing_run()
    draft = Invoice.objects.get()
    row = OutboxMessage.objects.get()
    before = (draft.subtotal, draft.total, row.payload)
    # A worker sent it once (the answer never came back): it may be in the ERP.
    OutboxMessage.objects.filter(pk=row.pk).update(attempts=1)
    spend = _spend(firm.project, "30.00", day=9)

    report = billing_run()

    assert (report.invoices, report.drafts_extended) == (1, 0)
    draft.refresh_from_db()
    row.refresh_from_db()
    assert (draft.subtotal, draft.total, row.payload) == before
    new = Invoice.objects.exclude(pk=draft.pk).get()
    assert _ids(_sent_lines(new), "EX-") == [spend.pk]


@pytest.mark.parametrize("why", ["posted", "in_flight", "other_month", "not_flagged"])
def test_lines_go_on_a_new_draft_when_the_open_one_does_not_qualify(why: str) -> None:
    firm = _firm(add_to_open_draft=why != "not_flagged")
    billing_run()
    draft = Invoice.objects.get()
    rows = OutboxMessage.objects.filter(object_id=draft.pk)
    if why == "posted":  # delivered: the ERP has it, with its number
        rows.update(state="done", attempts=1)
        Invoice.objects.filter(pk=draft.pk).update(source_system="erp", number="INV-0001")
    elif why == "in_flight":
        rows.update(state="in_flight", attempts=1)
    elif why == "other_month":
        Invoice.objects.filter(pk=draft.pk).update(
            issue_date=date.today().replace(day=1) - timedelta(days=1)
        )
    _spend(firm.project, "30.00", day=9)

    report = billing_run()

    assert (report.invoices, report.drafts_extended) == (1, 0)
    assert BillingEvent.objects.filter(invoice=draft).count() == 2


def test_the_open_draft_takes_lines_up_to_an_invoices_size(settings: Any) -> None:
    settings.CONCORD_MAX_LINES_PER_INVOICE = 3
    firm = _firm(add_to_open_draft=True)
    billing_run()  # two lines
    draft = Invoice.objects.get()
    spends = [_spend(firm.project, "10.00", day=d) for d in (10, 11, 12)]

    report = billing_run()

    assert (report.invoices, report.drafts_extended) == (1, 1)
    assert BillingEvent.objects.filter(invoice=draft).count() == 3
    new = Invoice.objects.exclude(pk=draft.pk).get()
    assert _ids(_sent_lines(new), "EX-") == [s.pk for s in spends[1:]]
    assert _ids(_sent_lines(draft), "EX-") == [spends[0].pk]


def test_an_unrendered_draft_gets_the_new_lines_and_is_rendered_with_them() -> None:
    firm = _firm(add_to_open_draft=True)
    billing_run()
    draft = Invoice.objects.get()
    OutboxMessage.objects.all().delete()  # as when its mapping could not render it
    spend = _spend(firm.project, "30.00", day=9)

    report = billing_run()

    assert (report.invoices, report.drafts_extended) == (0, 1)
    assert _ids(_sent_lines(draft), "EX-") == [spend.pk]
    assert len(_ids(_sent_lines(draft), "TE-")) == 2


def test_a_milestones_pending_billing_event_is_not_sent_by_the_billing_run() -> None:
    """milestones.py posts its own invoice and links the billing event late; a pending one on
    an invoice without a billing-run row is not the billing run's to render."""
    firm = _firm(days=())
    milestone = Milestone.objects.create(
        project=firm.project, name="Go-live", amount=Decimal("5000"), currency="GBP"
    )
    entity = firm.contract.legal_entity
    assert entity is not None
    invoice = Invoice.objects.create(
        legal_entity=entity,
        customer=firm.project.customer,
        contract=firm.contract,
        currency="GBP",
        subtotal=Decimal("5000"),
        total=Decimal("5000"),
    )
    BillingEvent.objects.create(
        source="milestone",
        milestone=milestone,
        project=firm.project,
        contract=firm.contract,
        legal_entity=entity,
        description="Go-live",
        unit_amount=Decimal("5000"),
        amount=Decimal("5000"),
        currency="GBP",
        invoice=invoice,
    )

    billing_run()

    assert not OutboxMessage.objects.exists()


# --- Two runs at once ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_bill_each_expense_once() -> None:
    """Billing runs in two threads at once (two database connections), 100 expenses a run, share
    2,000 waiting expenses without waiting on each other: each expense is billed by one of
    them, once."""
    firm = _firm(days=())
    worker = firm.worker
    Expense.objects.bulk_create(
        Expense(
            resource=worker,
            project=firm.project,
            date=BILLING_MONTH + timedelta(days=d % 28),
            category="Travel",
            amount=Decimal("5.00") + d % 50,
            currency="GBP",
            approval_state=ApprovalState.APPROVED,
        )
        for d in range(2000)
    )
    start = threading.Barrier(2)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            # Runs of 100 expenses each, until one finds none waiting: the two interleave.
            while (report := billing_run(limit=100)).expenses_considered:
                reports.append(report)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(r.expenses_billed for r in reports) == 2000
    billed = Counter(
        BillingEvent.objects.filter(source="expense").values_list("expense_id", flat=True)
    )
    assert len(billed) == 2000
    assert set(billed.values()) == {1}
    assert BillingEvent.objects.filter(invoice__isnull=True).count() == 0
