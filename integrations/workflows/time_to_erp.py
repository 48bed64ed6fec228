"""Workflow 2: approved time to the ERP, exactly once.

A billing run takes approved, billable time entries that have no billing event yet, validates
them (project active, a rate for the role, a legal entity, a billable contract, an exchange rate
when needed), turns the valid ones into billing events, groups those into draft invoices by
contract, currency and legal entity, and writes one outbox row per invoice to the ERP connection
that serves the legal entity, all in one transaction. Entries that fail validation stay unbilled
and raise one exception case per root cause; the next run tries them again, and a case closes by
itself once every entry it held has been billed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Q

from exceptions.models import Queue
from exceptions.services import (
    blocked_record,
    case_fingerprint,
    exception_case_drop_records,
    exception_case_open_or_join,
)
from integrations.models import (
    ApprovalState,
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    ExchangeRate,
    Invoice,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    RoutingRule,
    SystemRole,
    TimeEntry,
)
from integrations.sync.bulk import copy_insert
from integrations.sync.outbox import outbox_enqueue, outbox_message

logger = logging.getLogger(__name__)

PROCESS = "time_to_erp"
# Entries per transaction: 5,000 keeps one run's locks and memory small (about 10 MB) and still
# amortises the per-chunk queries.
CHUNK = 5_000


def max_lines_per_invoice() -> int:
    """Lines per invoice (setting CONCORD_MAX_LINES_PER_INVOICE, default 100: a month of a busy
    project fits; Xero takes far more, but a 100-line draft is what a reviewer can still read)."""
    return int(getattr(settings, "CONCORD_MAX_LINES_PER_INVOICE", 100))


# Xero's default revenue account ("Sales"); the chart of accounts is the ERP's.
XERO_SALES_ACCOUNT = "200"
CENT = Decimal("0.01")
BILLABLE_MODELS = {Contract.BillingModel.TIME_AND_MATERIALS, Contract.BillingModel.RETAINER}


@dataclass
class BillingRunReport:
    considered: int = 0
    billed: int = 0
    invoices: int = 0
    blocked: int = 0
    not_billable: int = 0
    cases: set[int] = field(default_factory=set)


@dataclass
class _Problem:
    case_type: str
    queue: str
    subject_key: object
    subject: str
    reason: str


def billing_run(*, limit: int | None = None) -> BillingRunReport:
    """Bill every approved, unbilled time entry (up to `limit`), chunk by chunk."""
    report = BillingRunReport()
    # Exchange rates and ERP routes are the same for every chunk of a run: read them once.
    books = _RunBooks(fx=_FxBook.load(), routes=_Routes.load())
    last_id = 0
    while limit is None or report.considered < limit:
        size = CHUNK if limit is None else min(CHUNK, limit - report.considered)
        ids = list(
            _unbilled().filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:size]
        )
        if not ids:
            break
        last_id = ids[-1]
        _bill_chunk(ids, report, books)
    return report


def _unbilled() -> Any:
    return TimeEntry.objects.filter(
        approval_state=ApprovalState.APPROVED, billable=True, billing_event__isnull=True
    )


@transaction.atomic
def _bill_chunk(ids: Sequence[int], report: BillingRunReport, books: _RunBooks) -> None:
    # Lock the entries so two concurrent runs cannot both bill one; SKIP LOCKED lets a second run
    # take other entries instead of waiting.
    entries = list(
        TimeEntry.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(pk__in=ids, billing_event__isnull=True)
        .only("pk", "project_id", "resource_id", "date", "hours", "task")
        .order_by("pk")
    )
    # A chunk's entries share a few hundred projects and workers: load those once and attach
    # them, instead of joining them onto every entry row.
    projects = Project.objects.select_related(
        "contract__tax_rate", "legal_entity", "customer"
    ).in_bulk({e.project_id for e in entries})
    resources = Resource.objects.in_bulk({e.resource_id for e in entries})
    for entry in entries:
        entry.project = projects[entry.project_id]
        entry.resource = resources[entry.resource_id]
    report.considered += len(entries)
    rates = _RateBook.load(entries)
    fx, routes = books.fx, books.routes

    billable: list[tuple[TimeEntry, Decimal]] = []
    blocked: dict[tuple[str, Any], tuple[_Problem, list[TimeEntry]]] = {}
    for entry in entries:
        contract = entry.project.contract
        if contract is not None and contract.billing_model not in BILLABLE_MODELS:
            report.not_billable += 1  # fixed-fee work is invoiced by milestone, not by hour
            continue
        problem = _validate(entry, rates, fx, routes)
        if problem is not None:
            root = (problem.case_type, problem.subject_key)
            blocked.setdefault(root, (problem, []))[1].append(entry)
            report.blocked += 1
            continue
        billable.append((entry, rates.rate_for(entry)))  # type: ignore[arg-type]
    for problem, held in blocked.values():  # one case write per root cause, not per entry
        report.cases.add(_raise(held, problem, rates))

    report.billed += len(billable)
    report.invoices += _invoice(billable, routes)
    _close_cases([entry for entry, _ in billable])


def _line_description(entry: TimeEntry) -> str:
    # "TE-<id>" first: it identifies the entry on the ERP line, which is how reconciliation (and
    # the tests) count that every approved entry was posted exactly once.
    task = f" {entry.task}" if entry.task else ""
    return f"TE-{entry.pk} {entry.date:%Y-%m-%d} {entry.resource.name}{task} ({entry.hours} h)"


# --- Validation -------------------------------------------------------------------------------


class _RateBook:
    """Bill rates for the chunk: contract rates first, then the firm default per role+currency."""

    def __init__(self, by_key: dict[tuple[int | None, str, str], Decimal]) -> None:
        self.by_key = by_key

    @classmethod
    def load(cls, entries: Iterable[TimeEntry]) -> _RateBook:
        contracts = {e.project.contract_id for e in entries if e.project.contract_id}
        cards = RateCard.objects.filter(Q(contract__in=contracts) | Q(contract__isnull=True))
        return cls({(c.contract_id, c.role, c.currency): c.bill_rate for c in cards})

    def rate_for(self, entry: TimeEntry) -> Decimal | None:
        role, currency = entry.resource.role, entry.project.currency
        contract_rate = self.by_key.get((entry.project.contract_id, role, currency))
        return (
            contract_rate if contract_rate is not None else self.by_key.get((None, role, currency))
        )


class _FxBook:
    def __init__(self, pairs: set[tuple[str, str]]) -> None:
        self.pairs = pairs

    @classmethod
    def load(cls) -> _FxBook:
        recent = date.today() - timedelta(days=35)
        return cls(
            set(
                ExchangeRate.objects.filter(date__gte=recent).values_list(
                    "base_currency", "quote_currency"
                )
            )
        )

    def has_rate(self, currency: str, base: str) -> bool:
        return currency == base or (currency, base) in self.pairs or (base, currency) in self.pairs


class _Routes:
    """Which ERP connection serves each legal entity (RoutingRule, else the role's default)."""

    def __init__(self, by_entity: dict[int | None, Connection]) -> None:
        self.by_entity = by_entity

    @classmethod
    def load(cls) -> _Routes:
        rules = RoutingRule.objects.filter(role=SystemRole.ERP, connection__enabled=True)
        return cls({r.legal_entity_id: r.connection for r in rules.select_related("connection")})

    def connection_for(self, legal_entity_id: int | None) -> Connection | None:
        return self.by_entity.get(legal_entity_id) or self.by_entity.get(None)


@dataclass
class _RunBooks:
    fx: _FxBook
    routes: _Routes


def _validate(entry: TimeEntry, rates: _RateBook, fx: _FxBook, routes: _Routes) -> _Problem | None:
    project = entry.project
    if project.status != Project.Status.ACTIVE:
        return _Problem(
            "time_on_inactive_project",
            Queue.PMO,
            ("project", project.pk),
            f"project {project.code} {project.name}",
            f"the project is {project.get_status_display().lower()}, so its time cannot be billed",
        )
    if project.legal_entity is None:
        return _Problem(
            "project_without_legal_entity",
            Queue.SALES_OPS,
            ("project", project.pk),
            f"project {project.code} {project.name}",
            "the project has no legal entity to invoice from",
        )
    if project.contract is None:
        return _Problem(
            "project_without_contract",
            Queue.SALES_OPS,
            ("project", project.pk),
            f"project {project.code} {project.name}",
            "the project has no contract, so there are no billing terms",
        )
    if rates.rate_for(entry) is None:
        role = entry.resource.role
        return _Problem(
            "missing_rate",
            Queue.FINANCE,
            ("rate", project.contract_id, role, project.currency),
            f"role {role} on contract {project.contract.number}",
            f"no bill rate for the role {role} in {project.currency}",
        )
    base = project.legal_entity.base_currency
    if not fx.has_rate(project.currency, base):
        return _Problem(
            "missing_exchange_rate",
            Queue.FINANCE,
            ("fx", project.currency, base),
            f"{project.currency} to {base}",
            f"no exchange rate from {project.currency} to {base} in the last 35 days",
        )
    if routes.connection_for(project.legal_entity_id) is None:
        return _Problem(
            "no_erp_route",
            Queue.INTEGRATION_ADMIN,
            ("route", project.legal_entity_id),
            f"legal entity {project.legal_entity.code}",
            "no ERP connection is routed for this legal entity",
        )
    return None


def _raise(entries: Sequence[TimeEntry], problem: _Problem, rates: _RateBook) -> int:
    subject, reason = problem.subject, problem.reason

    def describe(case: Any) -> str:
        count = len(case.records)
        noun = "time entry" if count == 1 else "time entries"
        money = f" worth {case.currency} {case.amount_blocked:,.2f}" if case.amount_blocked else ""
        return (
            f"{count} approved {noun} ({case.hours_blocked:,.2f} hours{money}) on {subject} "
            f"cannot be invoiced: {reason}."
        )

    case = exception_case_open_or_join(
        fingerprint=case_fingerprint(PROCESS, "validate", problem.case_type, problem.subject_key),
        process=PROCESS,
        step="validate",
        case_type=problem.case_type,
        queue=problem.queue,
        message=describe,
        records=[_blocked_entry(entry, rates) for entry in entries],
    )
    return case.pk


def _blocked_entry(entry: TimeEntry, rates: _RateBook) -> dict[str, Any]:
    rate = rates.rate_for(entry)
    return blocked_record(
        record_type="timeentry",
        record_id=entry.pk,
        label=_line_description(entry),
        amount=(entry.hours * rate).quantize(CENT) if rate is not None else Decimal("0"),
        currency=entry.project.currency if rate is not None else "",
        hours=entry.hours,
    )


def _close_cases(billed: Sequence[TimeEntry]) -> None:
    """Entries billed now take themselves off the validation cases that held them before."""
    if not billed:
        return
    from exceptions.models import ExceptionCase

    ids = {e.pk for e in billed}
    open_cases = ExceptionCase.objects.filter(
        process=PROCESS, step="validate", status=ExceptionCase.Status.OPEN
    ).only("pk", "records")
    for case in open_cases:
        billed_here = [
            r for r in case.records if r.get("type") == "timeentry" and r.get("id") in ids
        ]
        if billed_here:
            exception_case_drop_records(
                case_id=case.pk,
                records=billed_here,
                note="Closed automatically: every entry it held has since been billed.",
            )


# --- Invoices ---------------------------------------------------------------------------------


def _invoice(billable: Sequence[tuple[TimeEntry, Decimal]], routes: _Routes) -> int:
    """Group the billable entries into draft invoices (by contract, legal entity and currency),
    write the invoices, their billing events (one per entry, pointing at its invoice) and one
    outbox row per invoice."""
    groups: dict[tuple[int | None, int, str], list[tuple[TimeEntry, Decimal]]]
    groups = defaultdict(list)
    for entry, rate in billable:
        project = entry.project
        entity_id = project.legal_entity_id
        assert entity_id is not None  # noqa: S101 - _validate refuses projects without one
        groups[(project.contract_id, entity_id, project.currency)].append((entry, rate))
    per_invoice = max_lines_per_invoice()
    invoices: list[tuple[Invoice, list[BillingEvent]]] = []
    for (_contract_id, entity_id, currency), group in groups.items():
        contract = group[0][0].project.contract
        tax_percent = contract.tax_rate.rate_percent if contract and contract.tax_rate else 0
        terms = contract.payment_terms_days if contract else 30
        for start in range(0, len(group), per_invoice):
            events = [
                BillingEvent(
                    source=BillingEvent.Source.TIME,
                    time_entry=entry,
                    project=entry.project,
                    contract=contract,
                    legal_entity_id=entity_id,
                    description=_line_description(entry),
                    quantity=entry.hours,
                    unit_amount=rate,
                    amount=(entry.hours * rate).quantize(CENT, ROUND_HALF_UP),
                    currency=currency,
                    source_system=SystemRole.PSA,
                    field_sources={},
                )
                for entry, rate in group[start : start + per_invoice]
            ]
            subtotal = sum((e.amount for e in events), Decimal("0"))
            tax = (subtotal * Decimal(tax_percent) / 100).quantize(CENT, ROUND_HALF_UP)
            invoice = Invoice(
                legal_entity_id=entity_id,
                customer=group[0][0].project.customer,  # loaded with the project
                contract=contract,
                currency=currency,
                issue_date=date.today(),
                due_date=date.today() + timedelta(days=terms),
                subtotal=subtotal,
                tax_total=tax,
                total=subtotal + tax,
                amount_due=subtotal + tax,
                source_system="",
                field_sources={},
            )
            invoices.append((invoice, events))
    copy_insert(Invoice, [invoice for invoice, _ in invoices])
    for invoice, events in invoices:
        for event in events:
            event.invoice = invoice
    # One COPY for all the billing events: at 100,000 entries an INSERT is several times slower.
    copy_insert(BillingEvent, [e for _, events in invoices for e in events])

    contact_ids = _contact_ids(invoices)
    messages = []
    for invoice, lines in invoices:
        connection = routes.connection_for(invoice.legal_entity_id)
        assert connection is not None  # noqa: S101 - validated per entry above
        contact_id = contact_ids.get((connection.pk, invoice.customer_id))
        hours = sum((e.quantity for e in lines), Decimal("0"))
        messages.append(
            outbox_message(
                connection=connection,
                process=PROCESS,
                step="post_invoice",
                operation="put_invoices",
                record=invoice,
                version=1,
                payload=_xero_invoice(invoice, lines, contact_id),
                context={
                    "what": "invoice",
                    "subject": f"customer {invoice.customer.name}",
                    "label": f"Draft invoice {xero_reference(invoice)} ({len(lines)} lines)",
                    "amount": str(invoice.total),
                    "currency": invoice.currency,
                    "hours": str(hours),
                    "queue": Queue.FINANCE,
                },
            )
        )
    outbox_enqueue(messages)
    return len(invoices)


def _contact_ids(
    invoices: Sequence[tuple[Invoice, list[BillingEvent]]],
) -> dict[tuple[int, int], str]:
    """The customer's contact id in each target ERP, where Concord knows it."""
    customer_type = ContentType.objects.get_for_model(Customer)
    wanted = {invoice.customer_id for invoice, _ in invoices}
    return {
        (x.connection_id, x.object_id): x.external_id
        for x in CrossReference.objects.filter(content_type=customer_type, object_id__in=wanted)
    }


def xero_reference(invoice: Invoice) -> str:
    """The invoice's Reference in Xero: how a retry finds an invoice that was already created."""
    return f"CONCORD-INV-{invoice.pk}"


def _xero_invoice(
    invoice: Invoice, lines: Sequence[BillingEvent], contact_id: str | None
) -> dict[str, Any]:
    contract = invoice.contract
    tax_type = contract.tax_rate.code if contract and contract.tax_rate else None
    # Known contact: by id. Unknown: by name, which Xero matches or creates.
    contact: dict[str, Any] = (
        {"ContactID": contact_id} if contact_id else {"Name": invoice.customer.name}
    )
    if not contact_id and invoice.customer.tax_number:
        contact["TaxNumber"] = invoice.customer.tax_number
    return {
        "Type": "ACCREC",
        "Contact": contact,
        "Date": f"{invoice.issue_date:%Y-%m-%d}",
        "DueDate": f"{invoice.due_date:%Y-%m-%d}",
        "CurrencyCode": invoice.currency,
        "Status": "DRAFT",
        "LineAmountTypes": "Exclusive",
        "Reference": xero_reference(invoice),
        "LineItems": [
            {
                "Description": event.description,
                # Xero's schema wants numbers; two-decimal values are exact as floats.
                "Quantity": float(event.quantity),
                "UnitAmount": float(event.unit_amount),
                "AccountCode": XERO_SALES_ACCOUNT,
                **({"TaxType": tax_type} if tax_type else {}),
            }
            for event in lines
        ],
    }


# --- After delivery ---------------------------------------------------------------------------


def invoices_posted(messages: Sequence[OutboxMessage]) -> None:
    """The ERP has the draft invoices: record its numbers and mark their billing events invoiced."""
    posted = {m.object_id: m.result for m in messages}
    invoices = Invoice.objects.in_bulk(list(posted))
    for invoice_id, result in posted.items():
        invoice = invoices.get(invoice_id)
        if invoice is None:
            continue
        invoice.number = str(result.get("InvoiceNumber") or invoice.number)
        invoice.status = Invoice.Status.DRAFT
        invoice.source_system = SystemRole.ERP
    Invoice.objects.bulk_update(list(invoices.values()), ["number", "status", "source_system"])
    BillingEvent.objects.filter(invoice_id__in=list(posted)).update(
        status=BillingEvent.Status.INVOICED
    )
