"""Workflow 4: status back-sync, so delivery and account teams see what the ERP says.

Invoice status and payments are the ERP's (DOMAIN.md's ownership). They come back from the ERP
into the canonical records by the sync layer like any other record it owns: the ERP's invoice
webhook (a payment shows there as an invoice update: its status and amount due), and the
polls of its invoices and payments with ``If-Modified-Since`` (the payments mapping in
integrations/vendors/xero/mappings.py links each payment to its canonical invoice; a payment
read twice is one Payment, keyed by its cross-reference). What changed then flows on from here,
for the invoices Concord posted (those with billing events), one ``WorkflowRun`` per invoice
(process ``status_back_sync``; integrations/workflows/runs.py). Its steps, each idempotent:

1. ``crm_billing_status``: the contract's billing status on its CRM record (Salesforce custom
   fields on the Contract: not invoiced / invoiced / partly paid / paid, the amounts invoiced,
   paid and due, the last invoice number and payment date), summed over all of the contract's
   issued invoices, so the account team sees the whole contract, not one invoice. A contract
   the CRM does not know (no CRM id) is a sales ops case (below).
2. ``psa_invoice``: the ERP invoice mirrored in the PSA once it is issued (authorised or
   paid): a Harvest invoice for the client with the ERP's number, dates, tax and one line per
   billed item (its project, hours and rate; a milestone's invoice its amount), so its total
   is the ERP's. A customer the PSA does not know as a client is a PMO case (below).
3. ``psa_time_billed``: the time entries on the invoice marked billed in the PSA.
4. ``psa_payments``: each ERP payment recorded on the mirrored Harvest invoice
   (``POST /invoices/{id}/payments``), whose ``notes`` name the ERP payment (how a retried
   create finds the one it made); the payment that settles it makes the Harvest invoice paid.

Why a mirrored invoice and a billed flag, and not Harvest's own invoicing: in Harvest
(harvest-v2.yaml) ``is_billed`` is read-only; Harvest sets it when an entry is imported into one
of its own invoices (``line_items_import``). That import selects by project and date range and
prices at Harvest's rates, so it would take entries Concord has not billed (approved later in
the same range, or on the other half of an invoice split at 100 lines) and give a total other
than the ERP's. Concord bills exactly the entries on its billing events, so: the Harvest
invoice mirrors the ERP's lines and payments (spec-faithful: free-form line items and invoice
payments are Harvest's API), and each entry's ``is_billed`` is set by ``PATCH`` through a
documented sandbox extension (sandbox/README.md). Against the real Harvest that one write is
not applied (a read-only field); the mirrored invoice and its payments still show the time
invoiced and paid, per project. Milestone status ``invoiced`` in the PSA is written when the
milestone's invoice is created (the milestone workflow), not here.

A run is reopened whenever its invoice's state (status, amount due, payments known) differs
from the one it last carried over: its steps run again, and only what is new is sent (the
outbox keys each write by process, step, record and version: the PSA invoice, each entry and
each payment once; the CRM contract once per billing state). Every write goes through the
outbox, rendered by the target connection's published mapping; nothing here names a vendor
field. Polled records reach no workflow by themselves (the polls write in bulk), so
``back_sync_sweep`` runs after each poll of an ERP connection (an after-poll hook, registered
below): it moves on the runs of the invoices whose state changed, and opens those of newly
issued ones.

Cases: a record missing on one side (the contract in the CRM, the client in the PSA) is a case
for the queue that owns that data, holding the run. It holds only that system's steps: the
other system's go on (the PSA's view does not wait for the CRM's), and the run stays blocked by
the case, at the step that opened it, until the case's retry looks at every step again (the
step that gets through takes the run off the case, which then closes). A write the target
refuses parks in the outbox on the sync layer's case, as every write does. Not carried over: a
payment deleted in the ERP (the canonical invoice's amount due, and so the CRM's figures, follow
it; the PSA's recorded payment stays), and a voided invoice's PSA copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q, Sum

from exceptions.models import ExceptionCase, Queue
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.models import (
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Invoice,
    OutboxMessage,
    Payment,
    RunState,
    StepState,
    SystemRole,
    TimeEntry,
    WorkflowRun,
    WorkflowStep,
)
from integrations.selectors import routing_connection
from integrations.sync.outbound import (
    RENDER_CASE,
    OutboundItem,
    PartialUpdate,
    outbound_messages,
    partial_update_message,
)
from integrations.sync.outbox import outbox_enqueue
from integrations.sync.steps import (
    Arrival,
    after_poll_register,
    arrival_register,
    delivered_step_register,
)
from integrations.workflows.runs import (
    RUN_RECORD,
    Process,
    StepResult,
    run_advance,
    run_lock,
    run_lock_by_subject,
    run_open,
    run_subject_set,
    runs_held_by,
)

logger = logging.getLogger(__name__)

PROCESS = "status_back_sync"
CRM_BILLING_STATUS = "crm_billing_status"
PSA_INVOICE = "psa_invoice"
PSA_TIME_BILLED = "psa_time_billed"
PSA_PAYMENTS = "psa_payments"

CONTRACT_NOT_IN_CRM = "back_sync_contract_not_in_crm"
CLIENT_NOT_IN_PSA = "back_sync_client_not_in_psa"
CASE_TYPES = (CONTRACT_NOT_IN_CRM, CLIENT_NOT_IN_PSA)

# Invoices the customer has been sent: what the PSA mirrors and the CRM counts as invoiced.
ISSUED = (Invoice.Status.AUTHORISED, Invoice.Status.PAID)
# States that make a run worth opening; a voided invoice only moves a run it has already.
OPENING = ISSUED
OPEN = ExceptionCase.Status.OPEN
CENT = Decimal("0.01")


# --- Triggers -----------------------------------------------------------------------------------


def back_sync_arrival(arrival: Arrival) -> None:
    """After inbound processing (integrations/sync/steps.py): an invoice or a payment the ERP
    sent moves its invoice's run on (a webhook, a replay; polls come through the sweep)."""
    if arrival.record_id is None or arrival.connection.role != SystemRole.ERP:
        return
    if arrival.canonical_model == "payment":
        invoice_id = (
            Payment.objects.filter(pk=arrival.record_id)
            .values_list("invoice_id", flat=True)
            .first()
        )
    else:
        invoice_id = arrival.record_id
    if invoice_id is not None:
        back_sync_invoice(invoice_id=invoice_id)


def back_sync_invoice(*, invoice_id: int) -> WorkflowRun | None:
    """The run of one invoice Concord posted, opened when the invoice is issued, reopened when
    its state changed since the run last carried it over, and moved on. Returns the run, or
    None (not Concord's invoice, or not issued and without a run)."""
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_related("customer", "contract", "legal_entity")
            .filter(pk=invoice_id)
            .first()
        )
        if invoice is None or not _posted_by_concord(invoice):
            return None
        key = subject_key(invoice)
        run = run_lock_by_subject(process=PROCESS, subject_key=key)
        if run is None:
            if invoice.status not in OPENING:
                return None
            run, _ = run_open(
                process=BACK_SYNC,
                subject_key=key,
                label=f"Invoice {invoice.number or invoice.pk} for {invoice.customer.name}",
                input={"invoice_id": invoice.pk},
                legal_entity=invoice.legal_entity,
            )
            run_subject_set(run=run, record=invoice)
        state = invoice_state(invoice)
        if run.context.get("state") != state:
            _reopen(run)
            run.context["state"] = state
        return _advance(run)


def back_sync_sweep(*, connection_id: int, since: datetime | None = None) -> int:
    """After a poll of an ERP connection: move on the run of every invoice Concord posted whose
    state changed since its run last carried it over (and open those of newly issued ones),
    one transaction each. `since`: only the invoices the poll touched, itself or through a
    payment (their cross-references were synced since then); None looks at every posted
    invoice of the connection. The cross-references are found through the connection's
    invoice and payment entries of their unique index, filtered by the sync time (one pass
    over them per poll: an index on the sync time would make it a range read, at a write cost
    on every poll). Returns how many runs moved."""
    connection = Connection.objects.filter(pk=connection_id, role=SystemRole.ERP).first()
    if connection is None:
        return 0
    invoice_type = ContentType.objects.get_for_model(Invoice)
    touched = CrossReference.objects.filter(connection=connection)
    if since is not None:
        touched = touched.filter(last_synced_at__gte=since)
    paid = Payment.objects.filter(
        pk__in=touched.filter(content_type=ContentType.objects.get_for_model(Payment)).values(
            "object_id"
        )
    ).values("invoice_id")
    candidates = list(
        Invoice.objects.filter(
            Q(pk__in=touched.filter(content_type=invoice_type).values("object_id")) | Q(pk__in=paid)
        )
        .filter(Exists(BillingEvent.objects.filter(invoice_id=OuterRef("pk"))))
        .annotate(payments_known=Count("payments"), paid_known=Sum("payments__amount"))
        .order_by("pk")
        .values_list("pk", "status", "amount_due", "payments_known", "paid_known")
    )
    carried = dict(
        WorkflowRun.objects.filter(
            process=PROCESS,
            subject_type=invoice_type,
            subject_id__in=[row[0] for row in candidates],
        ).values_list("subject_id", "context__state")
    )
    moved = 0
    for pk, status, due, count, paid_sum in candidates:
        state = _state_text(status, due, count, paid_sum)
        if pk not in carried and status not in OPENING:
            continue
        if carried.get(pk) == state:
            continue
        try:
            if back_sync_invoice(invoice_id=pk) is not None:
                moved += 1
        except Exception:
            logger.exception("status back-sync of invoice %s failed", pk)
    return moved


def subject_key(invoice: Invoice) -> str:
    return f"invoice:{invoice.pk}"


def invoice_state(invoice: Invoice) -> str:
    """What the run carries over, in one comparable string: status, amount due, payments."""
    found = Payment.objects.filter(invoice=invoice).aggregate(n=Count("pk"), paid=Sum("amount"))
    return _state_text(invoice.status, invoice.amount_due, found["n"], found["paid"])


def _state_text(status: str, due: Decimal, count: int, paid: Decimal | None) -> str:
    return f"{status}|{Decimal(due).quantize(CENT)}|{count}|{Decimal(paid or 0).quantize(CENT)}"


def _posted_by_concord(invoice: Invoice) -> bool:
    return BillingEvent.objects.filter(invoice=invoice).exists()


def _reopen(run: WorkflowRun) -> None:
    """The invoice changed (or a case holding the run was retried): every step is looked at
    again, each sending only what is new."""
    WorkflowStep.objects.filter(run=run).update(
        state=StepState.PENDING, finished_at=None, exception_case=None
    )
    run.state = RunState.RUNNING
    run.finished_at = None
    run.current_step = BACK_SYNC.step_names[0]
    run.step_started_at = None
    run.context["held"] = []


def _advance(run: WorkflowRun) -> WorkflowRun:
    """Run the steps; a run whose steps all finished but that left work on a case (a CRM or
    PSA record missing: the other system's steps went on) stays blocked by that case, at the
    step that opened it, until its retry."""
    run = run_advance(run=run, process=BACK_SYNC)
    if run.state != RunState.DONE:
        return run
    held = ExceptionCase.objects.filter(
        pk__in=[case_id for case_id, _ in run.context.get("held", [])], status=OPEN
    ).order_by("pk")
    case = held.first()
    if case is None:
        return run
    step = dict((case_id, name) for case_id, name in run.context["held"])[case.pk]
    run.state = RunState.BLOCKED
    run.exception_case = case
    run.current_step = step
    run.finished_at = None
    run.save()
    WorkflowStep.objects.filter(run=run, name=step).update(exception_case=case)
    return run


def _held(run: WorkflowRun, case: ExceptionCase, why: str) -> StepResult:
    """This step's system cannot be written until a person fixes `case`; the other steps go on
    (the PSA's view does not wait for the CRM's, nor the other way round)."""
    held = [pair for pair in run.context.get("held", []) if pair[0] != case.pk]
    run.context["held"] = [*held, [case.pk, run.current_step]]
    return StepResult.skipped(f"Held on case {case.pk}: {why}")


def _invoice(run: WorkflowRun) -> Invoice:
    return Invoice.objects.select_related("customer", "contract__tax_rate", "legal_entity").get(
        pk=run.input["invoice_id"]
    )


# --- Step 1: the contract's billing status in the CRM -------------------------------------------


@dataclass(frozen=True)
class BillingStatus:
    """Where a contract's issued invoices stand, summed."""

    status: str  # not_invoiced | invoiced | partly_paid | paid
    invoiced: Decimal
    paid: Decimal
    due: Decimal
    last_invoice_number: str
    last_payment_date: Any

    def canonical(self) -> dict[str, Any]:
        return {
            "billing_status": self.status,
            "amount_invoiced": self.invoiced,
            "amount_paid": self.paid,
            "amount_due": self.due,
            "last_invoice_number": self.last_invoice_number,
            "last_payment_date": self.last_payment_date,
        }


def contract_billing_status(contract: Contract) -> BillingStatus:
    issued = Invoice.objects.filter(contract=contract, status__in=ISSUED)
    sums = issued.aggregate(invoiced=Sum("total"), due=Sum("amount_due"))
    invoiced = Decimal(sums["invoiced"] or 0).quantize(CENT)
    due = Decimal(sums["due"] or 0).quantize(CENT)
    paid = invoiced - due
    last = issued.exclude(number="").order_by("-issue_date", "-pk").values_list("number", flat=True)
    last_paid = Payment.objects.filter(invoice__in=issued).aggregate(day=Max("date"))["day"]
    if invoiced == 0:
        status = "not_invoiced"
    elif due <= 0:
        status = "paid"
    elif paid > 0:
        status = "partly_paid"
    else:
        status = "invoiced"
    return BillingStatus(status, invoiced, paid, due, str(last.first() or ""), last_paid)


def _crm_billing_status(run: WorkflowRun) -> StepResult:
    invoice = _invoice(run)
    contract = invoice.contract
    if contract is None:
        return StepResult.skipped("The invoice names no contract: nothing to show in the CRM.")
    xref = (
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(Contract),
            object_id=contract.pk,
            connection__role=SystemRole.CRM,
            connection__enabled=True,
        )
        .select_related("connection")
        .order_by("pk")
        .first()
    )
    if xref is None:
        case = case_open_or_join(
            case_type=CONTRACT_NOT_IN_CRM,
            subject={
                "contract_id": contract.pk,
                "contract": contract.number,
                "customer": invoice.customer.name,
            },
            records=[_run_blocked(run, invoice)],
            process=PROCESS,
            step=CRM_BILLING_STATUS,
            legal_entity_id=invoice.legal_entity_id,
        )
        return _held(
            run,
            case,
            f"Contract {contract.number} has no record in the CRM to show its billing on.",
        )
    _clear(run, CONTRACT_NOT_IN_CRM)
    billing = contract_billing_status(contract)
    values = billing.canonical()
    update = _update_message(
        run,
        invoice,
        xref.connection,
        contract,
        "contract",
        xref.external_id,
        values,
        step=CRM_BILLING_STATUS,
        version=contract_billing_version(contract),
        label=f"Billing status of contract {contract.number}",
        queue=Queue.SALES_OPS,
    )
    if update.message is None:
        return StepResult.blocked(_render_case(run, xref.connection, update.reason), update.reason)
    return _await(
        run,
        [update.message],
        what=f"contract {contract.number} {billing.status.replace('_', ' ')} "
        f"({invoice.currency} {billing.paid:,.2f} of {billing.invoiced:,.2f} paid)",
        ids={"crm": {"contract": xref.external_id}},
    )


def contract_billing_version(contract: Contract) -> int:
    """The version of a contract's billing state: the newest ERP stamp (modification time in
    microseconds) of its invoices and payments, times 1,000, plus the number of payments. It
    grows with every change the ERP makes, so the outbox sends the states in order and never
    an older one after a newer, and the same state keeps its version, so a retry sends nothing
    new. The count is there because Xero stamps a payment no later than the invoice it settles:
    a payment read after its invoice's update changes the state (its date) but not the newest
    stamp. (Up to 999 payments per contract count; the stamp alone orders beyond that.)"""
    invoices = Invoice.objects.filter(contract=contract)
    newest = invoices.aggregate(v=Max("source_version"))["v"] or 0
    paid = Payment.objects.filter(invoice__in=invoices).aggregate(
        v=Max("source_version"), n=Count("pk")
    )
    stamp = max(int(newest), int(paid["v"] or 0))
    return stamp * 1000 + min(int(paid["n"]), 999) + 1


# --- Step 2: the invoice mirrored in the PSA ----------------------------------------------------


def _psa_of(invoice: Invoice) -> Connection | None:
    """The PSA the invoice's time came from (its entries' cross-references), else the one that
    serves its legal entity."""
    entries = BillingEvent.objects.filter(invoice=invoice, time_entry__isnull=False).values(
        "time_entry_id"
    )
    found = (
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(TimeEntry),
            object_id__in=entries,
            connection__role=SystemRole.PSA,
            connection__enabled=True,
        )
        .order_by("connection_id")
        .values_list("connection_id", flat=True)
        .first()
    )
    if found is not None:
        return Connection.objects.get(pk=found)
    return routing_connection(role=SystemRole.PSA, legal_entity_id=invoice.legal_entity_id)


def _psa_invoice(run: WorkflowRun) -> StepResult:
    invoice = _invoice(run)
    result = _psa_mirror(run, invoice)
    result.detail += _kept_words(invoice)
    return result


def _kept_words(invoice: Invoice) -> str:
    """What the run says of an invoice Concord made for an ERP that no longer serves its legal
    entity (switched to another since, integrations/services/route_switches.py): its status
    still comes back from that ERP. "" otherwise (no query for an invoice without a record of
    its ERP)."""
    if invoice.erp_connection_id is None:
        return ""
    now = routing_connection(role=SystemRole.ERP, legal_entity_id=invoice.legal_entity_id)
    if now is None or now.pk == invoice.erp_connection_id:
        return ""
    kept = Connection.objects.get(pk=invoice.erp_connection_id)
    return (
        f" Continued from {_system(kept)}, where the invoice was posted: legal entity "
        f"{invoice.legal_entity.code} moved to {_system(now)} since, for new work only."
    )


def _psa_mirror(run: WorkflowRun, invoice: Invoice) -> StepResult:
    if invoice.status not in ISSUED:
        return StepResult.skipped(
            f"The invoice is {invoice.get_status_display().lower()}: not mirrored in the PSA."
        )
    psa = _psa_of(invoice)
    if psa is None:
        return StepResult.skipped("No PSA serves the invoice's legal entity.")
    found = _xref(invoice, psa)
    if found is not None:
        return StepResult.done(
            f"Invoice {invoice.number} is in {_system(psa)} ({found}).", psa={"invoice": found}
        )
    client = _xref(invoice.customer, psa)
    if client is None:
        case = case_open_or_join(
            case_type=CLIENT_NOT_IN_PSA,
            subject={
                "customer_id": invoice.customer_id,
                "customer": invoice.customer.name,
                "connection": psa.name,
            },
            records=[_run_blocked(run, invoice)],
            process=PROCESS,
            step=PSA_INVOICE,
            connection_id=psa.pk,
            legal_entity_id=invoice.legal_entity_id,
        )
        return _held(
            run, case, f"Customer {invoice.customer.name} is not a client in {_system(psa)}."
        )
    _clear(run, CLIENT_NOT_IN_PSA)
    item = OutboundItem(
        connection=psa,
        record=invoice,
        canonical=psa_invoice_canonical(invoice, psa, client),
        context=_context(run, invoice, label=f"Invoice {invoice.number} in the PSA"),
    )
    messages = outbound_messages(
        items=[item],
        canonical_model="psa_invoice",
        action="create",
        process=PROCESS,
        step=PSA_INVOICE,
        version=1,
        retried=True,
    )
    if not messages:
        return _render_blocked(run, PSA_INVOICE, invoice)
    return _await(run, messages, what=f"invoice {invoice.number} mirrored in {_system(psa)}")


def psa_invoice_canonical(invoice: Invoice, psa: Connection, client: str) -> dict[str, Any]:
    """The ERP invoice as the PSA mirrors it: its number, dates, tax and one line per billing
    event (the project's id in the PSA, hours and rate; a milestone or expense line its amount)."""
    contract = invoice.contract
    tax = contract.tax_rate.rate_percent if contract and contract.tax_rate else Decimal("0")
    events = list(
        BillingEvent.objects.filter(invoice=invoice).select_related("project").order_by("pk")
    )
    projects = _xrefs([e.project for e in events], psa)
    return {
        "customer__external_id": client,
        "number": invoice.number or f"CONCORD-INV-{invoice.pk}",
        "currency": invoice.currency,
        "issue_date": invoice.issue_date,
        "due_date": invoice.due_date,
        "subject": f"Invoice {invoice.number} (issued in the ERP)",
        "notes": f"Mirrors the ERP invoice {invoice.number}; payments are recorded as the ERP "
        "receives them.",
        "tax_percent": tax if tax else None,
        "lines": [
            {
                **({"project": projects[e.project_id]} if e.project_id in projects else {}),
                "description": e.description,
                "quantity": e.quantity,
                "unit_amount": e.unit_amount,
                "taxed": bool(tax),
            }
            for e in events
        ],
    }


# --- Step 3: its time entries billed in the PSA -------------------------------------------------


def _psa_time_billed(run: WorkflowRun) -> StepResult:
    invoice = _invoice(run)
    if invoice.status not in ISSUED:
        return StepResult.skipped("The invoice is not issued: its time is not billed yet.")
    entry_type = ContentType.objects.get_for_model(TimeEntry)
    entries = BillingEvent.objects.filter(invoice=invoice, time_entry__isnull=False).values(
        "time_entry_id"
    )
    xrefs = list(
        CrossReference.objects.filter(
            content_type=entry_type,
            object_id__in=entries,
            connection__role=SystemRole.PSA,
            connection__enabled=True,
        )
        .select_related("connection")
        .order_by("object_id")
    )
    if not xrefs:
        return StepResult.skipped("None of the invoice's time came from a PSA.")
    records = TimeEntry.objects.in_bulk([x.object_id for x in xrefs])
    messages: list[OutboxMessage] = []
    for xref in xrefs:
        update = _update_message(
            run,
            invoice,
            xref.connection,
            records[xref.object_id],
            "timeentry",
            xref.external_id,
            {"is_billed": True},
            step=PSA_TIME_BILLED,
            version=1,
            label=f"Time entry {xref.external_id} billed on invoice {invoice.number}",
            queue=Queue.PMO,
        )
        if update.message is None:
            reason = update.reason
            return StepResult.blocked(_render_case(run, xref.connection, reason), reason)
        messages.append(update.message)
    return _await(
        run, messages, what=f"{len(messages)} time entries billed on invoice {invoice.number}"
    )


# --- Step 4: its payments recorded in the PSA ---------------------------------------------------


def _psa_payments(run: WorkflowRun) -> StepResult:
    invoice = _invoice(run)
    psa = _psa_of(invoice)
    psa_invoice = _xref(invoice, psa) if psa is not None else None
    if psa is None or psa_invoice is None:
        return StepResult.skipped("The invoice is not mirrored in a PSA: no payments to record.")
    payments = list(Payment.objects.filter(invoice=invoice).order_by("date", "pk"))
    if not payments:
        return StepResult.skipped("No payment received yet.")
    erp_ids = _xrefs_by_role(payments, SystemRole.ERP)
    items = [
        OutboundItem(
            connection=psa,
            record=payment,
            canonical={
                "invoice__external_id": psa_invoice,
                "amount": payment.amount,
                "date": payment.date,
                "notes": payment_notes(payment, erp_ids.get(payment.pk, "")),
            },
            context=_context(
                run,
                invoice,
                label=f"Payment of {payment.currency} {payment.amount:,.2f} on {payment.date} "
                f"for invoice {invoice.number}",
                amount=payment.amount,
            ),
        )
        for payment in payments
    ]
    messages = outbound_messages(
        items=items,
        canonical_model="psa_payment",
        action="create",
        process=PROCESS,
        step=PSA_PAYMENTS,
        version=1,
        retried=True,
    )
    if len(messages) < len(items):
        return _render_blocked(run, PSA_PAYMENTS, invoice)
    total = sum((p.amount for p in payments), Decimal("0"))
    return _await(
        run,
        messages,
        what=f"{len(payments)} payment(s), {invoice.currency} {total:,.2f}, on invoice "
        f"{invoice.number} in {_system(psa)}",
    )


def payment_notes(payment: Payment, erp_id: str) -> str:
    """What the PSA's payment says: the ERP's payment (its id: how a retried create finds the
    one it made) and its reference."""
    words = f"ERP payment {erp_id or payment.pk}"
    return f"{words}: {payment.reference}" if payment.reference else words


# --- Writing and waiting ------------------------------------------------------------------------


def _update_message(
    run: WorkflowRun,
    invoice: Invoice,
    connection: Connection,
    record: models.Model,
    model_name: str,
    external_id: str,
    values: dict[str, Any],
    *,
    step: str,
    version: int,
    label: str,
    queue: str,
) -> PartialUpdate:
    """The outbox row updating `values` on the connection's copy of a record, rendered by its
    published mapping (only the fields sent), or why it cannot be rendered."""
    return partial_update_message(
        connection=connection,
        canonical_model=model_name,
        external_id=external_id,
        values=values,
        process=PROCESS,
        step=step,
        record=record,
        version=version,
        context=_context(run, invoice, label=label, queue=queue),
    )


def _await(
    run: WorkflowRun,
    messages: Sequence[OutboxMessage],
    *,
    what: str,
    ids: dict[str, dict[str, str]] | None = None,
) -> StepResult:
    """Queue the rows not queued yet and say where they stand: all delivered (DONE), one
    parked on an open case (BLOCKED), else WAITING for the dispatcher."""
    existing = {
        m.idempotency_key: m
        for m in OutboxMessage.objects.filter(
            idempotency_key__in=[m.idempotency_key for m in messages]
        )
    }
    outbox_enqueue(messages=[m for m in messages if m.idempotency_key not in existing])
    states = [
        _latest(existing[m.idempotency_key]) if m.idempotency_key in existing else None
        for m in messages
    ]
    if all(s is not None and s.state == OutboxMessage.State.DONE for s in states):
        return StepResult.done(f"Delivered: {what}.", **(ids or {}))
    parked = next((s for s in states if s is not None and s.state == "parked"), None)
    if parked is not None and parked.exception_case_id is not None:
        case = ExceptionCase.objects.get(pk=parked.exception_case_id)
        if case.status == OPEN:
            return StepResult.blocked(
                case, f"Refused by {_system(parked.connection)}: {parked.last_error[:300]}"
            )
    return StepResult.waiting(f"Sent through the outbox: {what}.")


def _latest(message: OutboxMessage) -> OutboxMessage:
    """The row as it stands now: a parked row's newest replay, when it has one."""
    replay = OutboxMessage.objects.filter(replay_of=message).order_by("-pk").first()
    return _latest(replay) if replay is not None else message


def _render_blocked(run: WorkflowRun, step: str, invoice: Invoice) -> StepResult:
    """A record the published mapping could not render went on the integration admins' case
    (sync/outbound.py); the run waits on it."""
    case = (
        ExceptionCase.objects.filter(status=OPEN, case_type=RENDER_CASE, process=PROCESS, step=step)
        .order_by("-pk")
        .first()
    )
    if case is None:
        return StepResult.waiting("Waiting for the mapping to render the PSA's copy.")
    return StepResult.blocked(
        case,
        f"The PSA's copy of invoice {invoice.number} cannot be rendered: "
        f"{case.subject.get('reason', '')}",
    )


def _render_case(run: WorkflowRun, connection: Connection, reason: str) -> ExceptionCase:
    return case_open_or_join(
        case_type=RENDER_CASE,
        subject={
            "connection_id": connection.pk,
            "connection": connection.name,
            "object_type": "back-sync",
            "reason": reason,
            "noun": "invoice",
        },
        records=[_run_blocked(run, _invoice(run))],
        process=PROCESS,
        step=run.current_step,
        connection_id=connection.pk,
    )


# --- After delivery -----------------------------------------------------------------------------


def back_sync_delivered(messages: Sequence[OutboxMessage]) -> None:
    """Rows of a back-sync step were delivered (in the outbox's transaction): the runs that
    sent them move on."""
    run_ids = {int(m.context["run_id"]) for m in messages if m.context.get("run_id")}
    back_sync_resume(run_ids=sorted(run_ids))


def back_sync_resume(*, run_ids: Iterable[int], reopen: bool = False) -> int:
    """Move these runs on from where they stand (`reopen`: from their first step again, a
    case's retry), each in a savepoint (a run that cannot move on must not undo the caller's
    work). Returns how many moved."""
    moved = 0
    for run_id in sorted(set(run_ids)):
        try:
            with transaction.atomic():
                run = run_lock(run_id=run_id)
                if run is None or (run.state == RunState.DONE and not reopen):
                    continue
                if reopen:
                    _reopen(run)
                _advance(run)
                moved += 1
        except Exception:
            logger.exception("status back-sync run %s could not move on", run_id)
    return moved


def back_sync_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a back-sync case (exceptions/retry.py): the runs it holds look at every step
    again (the CRM record or the PSA client exists now); what was sent is not sent again."""
    ids = set(runs_held_by(case=case)) | set(
        WorkflowRun.objects.filter(exception_case=case, process=PROCESS).values_list(
            "pk", flat=True
        )
    )
    moved = back_sync_resume(run_ids=ids, reopen=True)
    done = WorkflowRun.objects.filter(pk__in=ids, state=RunState.DONE).count()
    return RetryResult(
        count=moved, summary=f"resumed {moved} status back-sync run(s); {done} are done"
    )


# --- Helpers ------------------------------------------------------------------------------------


def _clear(run: WorkflowRun, case_type: str) -> None:
    case_records_clear(
        records=[(RUN_RECORD, run.pk)],
        process=PROCESS,
        case_types=[case_type],
        note="Closed automatically: the invoices it held got through this step.",
    )


def _xref(record: models.Model, connection: Connection) -> str | None:
    return (
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(record),
            object_id=record.pk,
            connection=connection,
        )
        .values_list("external_id", flat=True)
        .first()
    )


def _xrefs(records: Sequence[models.Model], connection: Connection) -> dict[int, str]:
    if not records:
        return {}
    return dict(
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(records[0]),
            object_id__in={r.pk for r in records},
            connection=connection,
        ).values_list("object_id", "external_id")
    )


def _xrefs_by_role(records: Sequence[models.Model], role: str) -> dict[int, str]:
    if not records:
        return {}
    return dict(
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(records[0]),
            object_id__in={r.pk for r in records},
            connection__role=role,
        ).values_list("object_id", "external_id")
    )


def _run_blocked(run: WorkflowRun, invoice: Invoice) -> Blocked:
    return Blocked(
        record_type=RUN_RECORD,
        record_id=run.pk,
        label=f"invoice {invoice.number or invoice.pk} ({invoice.customer.name})",
        amount=invoice.total,
        currency=invoice.currency,
    )


def _context(
    run: WorkflowRun,
    invoice: Invoice,
    *,
    label: str,
    queue: str = Queue.PMO,
    amount: Decimal | None = None,
) -> dict[str, Any]:
    """What the outbox row (and a case about it) says, and which run it moves on."""
    return {
        "what": "invoice",
        "subject": f"invoice {invoice.number} for {invoice.customer.name}",
        "label": label,
        "amount": str(invoice.total if amount is None else amount),
        "currency": invoice.currency,
        "hours": "0",
        "queue": queue,
        "run_id": run.pk,
    }


def _system(connection: Connection) -> str:
    return f"{connection.get_vendor_display()} ({connection.name})"


BACK_SYNC = Process(
    PROCESS,
    (
        (CRM_BILLING_STATUS, _crm_billing_status),
        (PSA_INVOICE, _psa_invoice),
        (PSA_TIME_BILLED, _psa_time_billed),
        (PSA_PAYMENTS, _psa_payments),
    ),
)

arrival_register(canonical_model="invoice", handler=back_sync_arrival)
arrival_register(canonical_model="payment", handler=back_sync_arrival)
# Polls store the ERP's invoices and payments in bulk, handing none over: swept after each.
after_poll_register(back_sync_sweep)
for _step in BACK_SYNC.step_names:
    delivered_step_register(process=PROCESS, step=_step, handler=back_sync_delivered)
retry_handler_register(
    case_types=(*CASE_TYPES, RENDER_CASE), handler=back_sync_case_retry, process=PROCESS
)
