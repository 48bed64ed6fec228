"""Workflow 3: milestone to invoice, once per milestone.

A fixed-fee contract is invoiced by milestone. The PSA owns a milestone's completion: when it
sends a milestone marked complete (its change feed; inbound processing maps it and hands it
here, integrations/sync/steps.py), one run per milestone (integrations/workflows/runs.py) takes
it to the ERP. Its steps, each idempotent and visible as a stage:

1. ``validate``: the project is linked to a contract and a legal entity; the contract bills by
   milestone (fixed fee), is active, has payment terms and value, and its tax profile is
   active; the milestone is in the contract's currency and does not take the contract's
   invoiced milestones past its value; the milestones due before it in the same project are
   complete (milestones are invoiced in the order of their due dates: the data says which come
   first, no list is kept anywhere else); the customer has the tax number the tax profile
   requires; an exchange rate into the legal entity's base currency exists; an ERP connection
   serves the legal entity. Each missing item is a case naming the milestone, project, customer
   and the amount it blocks, in the queue that can fix it (exceptions/catalogue.py); the run
   stops here until it is fixed (a retry, or the next change of the milestone, its project,
   contract or customer, or of an earlier milestone of the project, resumes it).
2. ``bill``: the milestone's billing event (one per milestone: the table's unique key) and a
   draft invoice of one line for the ERP the run decides on here and keeps (pinned on the run:
   a switch of the legal entity to another ERP since leaves it there, and the step says so),
   rendered by the ERP connection's published invoice mapping exactly as the billing run
   renders its invoices (time_to_erp.invoice_canonical: the customer by its ERP id where
   known, else by value; ``CONCORD-INV-<id>`` as the reference a retried create is looked up
   by), through the outbox; the step waits for its delivery and then records the ERP's number.
3. ``mark_invoiced``: the billing event invoiced on its invoice, the canonical milestone
   invoiced, and the PSA's milestone PATCHed to ``invoiced`` through the outbox, rendered by
   the connection's published milestone mapping (only the status and the id are sent).

A completion delivered twice (or three times: the feed, a re-save in the PSA, the write-back
announcing itself) finds the same run: a finished step is never repeated, and a write asked for
again has the same idempotency key (process, step, record, version), so the outbox keeps one.
The billing event is linked to its invoice only once the ERP has the invoice: until then the
billing run (time_to_erp, which renders again the invoices of pending billing events that have
no row of its own) cannot mistake the milestone's invoice for one of its own and send it again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q

from exceptions.catalogue import (
    MILESTONE_AMOUNT_MISMATCH,
    MILESTONE_CASE_TYPES,
    MILESTONE_CONTRACT_TERMS,
    MILESTONE_DEPENDENCY_OPEN,
    MILESTONE_PROJECT_WITHOUT_CONTRACT,
    MILESTONE_PROJECT_WITHOUT_LEGAL_ENTITY,
    MILESTONE_TAX_NUMBER_MISSING,
)
from exceptions.models import BlockedRecord, ExceptionCase, Queue
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.models import (
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    ExchangeRate,
    Invoice,
    LegalEntity,
    Milestone,
    OutboxMessage,
    RunState,
    SystemRole,
    WorkflowRun,
    WorkflowStep,
)
from integrations.selectors import routes_remembered, routing_connection
from integrations.services.route_switches import RUN_PIN, route_switch_latest
from integrations.sync.outbound import (
    RENDER_CASE,
    OutboundItem,
    PartialUpdate,
    outbound_answer,
    outbound_messages,
    partial_update_message,
)
from integrations.sync.outbox import outbox_enqueue, outbox_enqueue_together, outbox_flush
from integrations.sync.records import record_update
from integrations.sync.ring import MILESTONE_SWEEP, ring
from integrations.sync.steps import (
    Arrival,
    after_poll_register,
    arrival_register,
    delivered_step_register,
)
from integrations.workflows.runs import (
    RUN_RECORD,
    LookedUpTogether,
    LookUps,
    Opening,
    Process,
    StepResult,
    run_advance,
    run_lock,
    run_lock_by_subject,
    run_open,
    run_subject_set,
    runs_held_by,
    runs_open,
    runs_saved_together,
)
from integrations.workflows.time_to_erp import (
    FX_RECENT_DAYS,
    invoice_canonical,
    invoice_contact_ids,
    invoice_reference,
)

logger = logging.getLogger(__name__)

PROCESS = "milestone_billing"
VALIDATE = "validate"
BILL = "bill"
MARK_INVOICED = "mark_invoiced"

# The case types validation raises (exceptions/catalogue.py); each holds the run. The last two
# are the billing run's, worded for any blocked record (their subject names the noun).
VALIDATION_CASE_TYPES = (*MILESTONE_CASE_TYPES, "missing_exchange_rate", "no_erp_route")
NOUN = "completed milestone"
OPEN = ExceptionCase.Status.OPEN
CENT = Decimal("0.01")


# --- The trigger ----------------------------------------------------------------------------------


def subject_key(*, connection: Connection, external_id: str) -> str:
    return f"milestone:{connection.pk}:{external_id}"


def milestone_start(
    *, connection: Connection, external_id: str, milestone_id: int
) -> WorkflowRun | None:
    """A milestone as the PSA sent it (stored): complete, its run is opened (or found) and
    moved on from where it stands; otherwise only a run it already has is moved on (a
    completion taken back waits at validation; one invoiced by this run finishes). A milestone
    invoiced before any run of Concord's opens none. Returns the run, or None."""
    with transaction.atomic():
        milestone = _milestones().filter(pk=milestone_id).first()
        if milestone is None:
            return None
        return _start(connection, external_id, milestone)


def _start(connection: Connection, external_id: str, milestone: Milestone) -> WorkflowRun | None:
    key = subject_key(connection=connection, external_id=external_id)
    if milestone.status != Milestone.Status.COMPLETE:
        run = run_lock_by_subject(process=PROCESS, subject_key=key)
        if run is not None and run.state != RunState.DONE:
            _advance(run, milestone=milestone)
        return run
    project = milestone.project
    run, created = run_open(
        process=MILESTONE_BILLING,
        subject_key=key,
        label=f"Milestone {milestone.name} ({project.code})",
        input={
            "connection_id": connection.pk,
            "external_id": external_id,
            "milestone_id": milestone.pk,
        },
        legal_entity=project.legal_entity,
        region=project.region,
    )
    if created:
        run_subject_set(run=run, record=milestone)
    if run.state == RunState.DONE:
        return run
    return _advance(run, milestone=milestone, opened=created)


# What one advance of a run looks up once: its milestone, which every step reads, and whether
# the run was opened by this very call (no case can hold a run that did not exist before, so
# its steps skip taking it off cases). For 200 completions: 4 milestone reads and 2 case
# statements per run became one read.
_memo: ContextVar[dict[str, Any] | None] = ContextVar("milestone_memo", default=None)


def _advance(
    run: WorkflowRun,
    *,
    milestone: Milestone | None = None,
    opened: bool = False,
    steps: dict[str, WorkflowStep] | None = None,
) -> WorkflowRun:
    token = _memo.set({"milestone": milestone, "opened": opened})
    try:
        return run_advance(run=run, process=MILESTONE_BILLING, steps=steps)
    finally:
        _memo.reset(token)


def _opened_now() -> bool:
    memo = _memo.get()
    return bool(memo and memo.get("opened"))


def _may_be_held(run: WorkflowRun) -> bool:
    """Whether a case may hold the run: asked once per advance (one indexed look-up; none for
    a run opened just now), and true from the moment one of its steps puts it on a case. Each
    step takes the run off the cases its success fixes; a run no case holds, the usual one,
    need not try each time (three statements and their savepoints a delivery, before)."""
    memo = _memo.get()
    if memo is None:
        return True
    if "held" not in memo:
        memo["held"] = not memo.get("opened") and (
            BlockedRecord.objects.filter(record_type=RUN_RECORD, record_id=run.pk).exists()
        )
    return bool(memo["held"])


def _case_for_run(**kwargs: Any) -> ExceptionCase:
    """`case_open_or_join` for a case that holds the advancing run."""
    memo = _memo.get()
    if memo is not None:
        memo["held"] = True
    return case_open_or_join(**kwargs)


def milestone_arrival(arrival: Arrival) -> None:
    """After inbound processing (integrations/sync/steps.py): a milestone starts or moves on
    its run, and those of later milestones of its project that wait for it; a project,
    contract or customer applied resumes the runs waiting at validation for it (one indexed
    query when none does, the usual state)."""
    if arrival.record_id is None:
        return
    if arrival.canonical_model == "milestone":
        if arrival.connection.role != SystemRole.PSA:
            return
        with transaction.atomic():
            milestone = _milestones().filter(pk=arrival.record_id).first()
            if milestone is None:
                return
            _start(arrival.connection, arrival.external_id, milestone)
        # Later milestones of the project that waited for this one (their dependency).
        others = Q(context__project_id=milestone.project_id) & ~Q(
            input__milestone_id=arrival.record_id
        )
        milestones_resume(run_ids=_waiting_at_validation(others))
        return
    key = _WAITS_FOR.get(arrival.canonical_model)
    if key is not None:
        ids = _waiting_at_validation(Q(**{f"context__{key}": arrival.record_id}))
        milestones_resume(run_ids=ids)


# The records a run waiting at validation may wait for, by the run's context key naming it.
_WAITS_FOR = {"project": "project_id", "contract": "contract_id", "customer": "customer_id"}


def milestone_arrivals(arrivals: Sequence[Arrival]) -> None:
    """`milestone_arrival` for a batch of webhooks (integrations/sync/steps.py `on_arrivals`).
    The PSA's completed milestones that have no run yet (the usual delivery) are read in one
    query, their runs opened together and moved on in one transaction, their rows (runs,
    steps, outbox) written together; then the runs of their projects that wait at validation
    for them are resumed, once for the batch. Every other arrival goes one by one, as before."""
    key = _WAITS_FOR.get(arrivals[0].canonical_model) if arrivals else None
    if key is not None and all(a.canonical_model == arrivals[0].canonical_model for a in arrivals):
        # Projects, contracts or customers: the runs waiting at validation for any of them,
        # in one query for the batch (none, the usual answer).
        ids = [a.record_id for a in arrivals if a.record_id is not None]
        milestones_resume(run_ids=_waiting_at_validation(Q(**{f"context__{key}__in": ids})))
        return
    fresh: dict[int, Arrival] = {}
    rest: list[Arrival] = []
    for arrival in arrivals:
        if (
            arrival.canonical_model == "milestone"
            and arrival.record_id is not None
            and arrival.connection.role == SystemRole.PSA
        ):
            fresh[arrival.record_id] = arrival  # delivered twice: one run, as the newest says
        else:
            rest.append(arrival)
    if len(fresh) > 1:
        rest += _start_together(fresh)
    else:
        rest += fresh.values()
    for arrival in rest:
        milestone_arrival(arrival)


def _start_together(arrivals: Mapping[int, Arrival]) -> list[Arrival]:
    """Open and move on the runs of these complete milestones (milestone id -> arrival) that
    have none, in one transaction; resume the runs of their projects waiting at validation.
    Returns the arrivals left to `milestone_arrival` (a milestone not complete, or with a run
    already)."""
    left: list[Arrival] = []
    with transaction.atomic(), _batch_remembered():
        found = _milestones().in_bulk(list(arrivals))
        keys = {
            subject_key(connection=a.connection, external_id=a.external_id): milestone_id
            for milestone_id, a in arrivals.items()
        }
        have = set(
            WorkflowRun.objects.filter(process=PROCESS, subject_key__in=list(keys)).values_list(
                "subject_key", flat=True
            )
        )
        openings: list[tuple[Opening, Milestone]] = []
        for key, milestone_id in keys.items():
            milestone = found.get(milestone_id)
            if milestone is None:
                continue  # gone since it was stored: nothing to start
            if key in have or milestone.status != Milestone.Status.COMPLETE:
                left.append(arrivals[milestone_id])
                continue
            project = milestone.project
            arrival = arrivals[milestone_id]
            openings.append(
                (
                    Opening(
                        subject_key=key,
                        label=f"Milestone {milestone.name} ({project.code})",
                        input={
                            "connection_id": arrival.connection.pk,
                            "external_id": arrival.external_id,
                            "milestone_id": milestone.pk,
                        },
                        legal_entity=project.legal_entity,
                        region=project.region,
                        subject=milestone,
                    ),
                    milestone,
                )
            )
        opened = runs_open(process=MILESTONE_BILLING, openings=[o for o, _ in openings])
        with (
            _shared.sharing(_look_up_together([m for _, m in openings])),
            outbox_enqueue_together(),
            runs_saved_together(),
        ):
            for (run, steps), (_, milestone) in zip(opened, openings, strict=True):
                _advance(run, milestone=milestone, opened=True, steps=steps)
    # Later milestones of these projects that waited for one of them (their dependency). A
    # project with one milestone in the batch: its own run is not asked again.
    by_project: dict[int, list[int]] = defaultdict(list)
    for _, milestone in openings:
        by_project[milestone.project_id].append(milestone.pk)
    if by_project:
        alone = [ids[0] for ids in by_project.values() if len(ids) == 1]
        others = Q(context__project_id__in=list(by_project)) & ~Q(input__milestone_id__in=alone)
        milestones_resume(run_ids=_waiting_at_validation(others))
    return left


# What the runs of a batch look up, read once for all of them (`_look_up_together`) in the
# batch's transaction; outside a batch each step asks for itself.
_shared = LookedUpTogether("milestone_shared")


def _look_up_together(started: Sequence[Milestone]) -> LookUps:
    """For the milestones whose runs a batch starts: their projects' milestones not complete
    (the dependency check), their billing events, the milestone billing events on their
    contracts (the sum check: kept up to date as the batch's runs make theirs), and their
    customers' ids in each ERP."""
    shared: LookUps = {}
    projects = {m.project_id for m in started}
    for project_id in projects:
        shared[("planned", project_id)] = []
    for planned in Milestone.objects.filter(
        project_id__in=projects, status=Milestone.Status.PLANNED
    ).order_by("due_date", "pk"):
        shared[("planned", planned.project_id)].append(planned)
    for milestone in started:
        shared[("event", milestone.pk)] = None
    contracts = {m.project.contract_id for m in started} - {None}
    for contract_id in contracts:
        shared[("billed", contract_id)] = {}
    ids = {m.pk for m in started}
    for event in BillingEvent.objects.filter(
        Q(milestone__in=ids) | Q(contract__in=contracts, source=BillingEvent.Source.MILESTONE)
    ):
        if event.milestone_id in ids:
            shared[("event", event.milestone_id)] = event
        if event.contract_id in contracts and event.source == BillingEvent.Source.MILESTONE:
            _billed_add(shared, event)
    customers = {m.project.customer_id for m in started}
    shared[("contacts",)] = {
        (x.connection_id, x.object_id): x.external_id
        for x in CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(Customer), object_id__in=customers
        )
    }
    return shared


def _billed_add(shared: LookUps, event: BillingEvent) -> None:
    """A milestone billing event on a contract the batch checks sums on (not waived)."""
    billed = shared.get(("billed", event.contract_id))
    if billed is not None and event.status != BillingEvent.Status.WAIVED:
        billed[event.milestone_id] = event.amount


def _planned(project_id: int) -> list[Milestone]:
    """The project's milestones the PSA has not completed, by due date."""
    return list(
        Milestone.objects.filter(project_id=project_id, status=Milestone.Status.PLANNED).order_by(
            "due_date", "pk"
        )
    )


def _milestones_billed(contract: Contract) -> dict[int, Decimal]:
    """The contract's milestone billing events that count against its value: milestone id ->
    amount (the rule of `_billed_add`)."""
    found: LookUps = {("billed", contract.pk): {}}
    for event in BillingEvent.objects.filter(
        contract=contract, source=BillingEvent.Source.MILESTONE
    ):
        _billed_add(found, event)
    billed: dict[int, Decimal] = found[("billed", contract.pk)]
    return billed


def _waiting_at_validation(where: Q) -> list[int]:
    return list(
        WorkflowRun.objects.filter(
            where, process=PROCESS, state=RunState.BLOCKED, current_step=VALIDATE
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def milestones_resume(*, run_ids: Sequence[int]) -> int:
    """Move these runs on from where they stand (one transaction each). Returns how many."""
    moved = 0
    for run_id in sorted(set(run_ids)):
        with transaction.atomic():
            run = run_lock(run_id=run_id)
            if run is None or run.state == RunState.DONE:
                continue
            _advance(run)
            moved += 1
    return moved


def milestone_after_poll(*, connection_id: int, since: datetime) -> int:
    """After a PSA's poll (integrations/sync/steps.py): the milestones it found completed
    start their billing (one query when there are none). Only a PSA's poll stores milestones:
    the sweep after another connection's poll, running beside the PSA's, only fought it for
    the same runs (the first polls: both sweeps took 22 s for 300 milestones)."""
    if not Connection.objects.filter(pk=connection_id, role=SystemRole.PSA).exists():
        return 0
    if _waiting_milestones().exists():
        ring(MILESTONE_SWEEP, key=0)
    return 0


def _waiting_milestones() -> models.QuerySet[Milestone]:
    milestone_type = ContentType.objects.get_for_model(Milestone)
    has_run = WorkflowRun.objects.filter(
        process=PROCESS, subject_type=milestone_type, subject_id=OuterRef("pk")
    )
    return (
        Milestone.objects.filter(status=Milestone.Status.COMPLETE, billing_event__isnull=True)
        .exclude(Exists(has_run))
        .order_by("pk")
    )


def milestone_billing_sweep() -> int:
    """Completed milestones no run has taken yet (a poll stored them; polls hand nothing to
    the workflows): a run each, from the PSA connection that holds the milestone. Returns how
    many runs were started. In the usual state this is one query that finds none."""
    # Those with a run already (held by a case, say) are left out in the same query: a sweep
    # over a thousand blocked milestones is still one query, not one per milestone.
    waiting = list(_waiting_milestones().values_list("pk", flat=True))
    started = 0
    for at in range(0, len(waiting), SWEEP_BATCH):
        started += _sweep_batch(waiting[at : at + SWEEP_BATCH])
    if started:
        outbox_flush()  # the last runs' invoices go now, not after a wait for more
    return started


# The sweep takes the waiting milestones this many at a time, as inbound processing takes its
# messages: per batch one query for their cross-references, and each route and exchange rate
# looked up once (``_batch_remembered``). At the 10-30 ms a run costs (measured alone, and in
# the benchmark beside the billing run), a batch lasts 0.5-1.5 s: what it remembers is no older
# than what an inbound batch remembers. For 300 milestones: 26 queries and 12-15 ms of CPU a
# milestone before the batches (and the savings in ``_invoice`` and ``_await``), 20 and 8-10 ms
# after.
SWEEP_BATCH = 50


def _sweep_batch(milestone_ids: Sequence[int]) -> int:
    """Start the runs of these waiting milestones, each in its own transaction (one that fails
    undoes no other). The milestone itself is read again in its run's transaction, as a
    delivery reads it: read with the batch it would save a query and ~0.5 ms a milestone, but
    be a second older by the batch's last run, and a completion taken back in the PSA in that
    second would still be billed."""
    # The PSA connection's oldest cross-reference of each milestone, for the whole batch at
    # once (it was one query per milestone).
    xrefs: dict[int, CrossReference] = {}
    for row in (
        CrossReference.objects.select_related("connection")
        .filter(
            content_type=ContentType.objects.get_for_model(Milestone),
            object_id__in=milestone_ids,
            connection__role=SystemRole.PSA,
        )
        .order_by("pk")
    ):
        xrefs.setdefault(row.object_id, row)
    started = 0
    with _batch_remembered():
        for milestone_id in milestone_ids:
            xref = xrefs.get(milestone_id)
            if xref is None:
                continue
            milestone_start(
                connection=xref.connection, external_id=xref.external_id, milestone_id=milestone_id
            )
            started += 1
    return started


# What runs started together look up once (``_batch_remembered``): whether an exchange rate
# exists for a pair of currencies, per pair and cut-off date. The routes are remembered by
# ``routes_remembered`` (integrations/selectors.py). Outside a batch, each run asks.
_rates_memo: ContextVar[dict[tuple[str, str, date], bool] | None] = ContextVar(
    "milestone_rates_memo", default=None
)


@contextmanager
def _batch_remembered() -> Iterator[None]:
    """Within it, each ERP route and each exchange rate's existence is looked up once: a
    sweep's run asked for its route three times (validate, and twice in bill), 3 of its 26
    queries and 15-20% of the sweep's CPU (py-spy, 300 milestones). A route or rate changed
    meanwhile applies from the next batch; a run pins the route it started on anyway."""
    token = _rates_memo.set({})
    try:
        with routes_remembered():
            yield
    finally:
        _rates_memo.reset(token)


# --- Step 1: validation -------------------------------------------------------------------------


@dataclass
class _Problem:
    case_type: str
    subject: dict[str, Any]
    why: str  # the step's detail


def _validate(run: WorkflowRun) -> StepResult:
    milestone = _milestone(run)
    project = milestone.project
    contract = project.contract
    entity = project.legal_entity
    customer = project.customer
    run.context.update(
        milestone_id=milestone.pk,
        project_id=project.pk,
        customer_id=customer.pk,
        contract_id=contract.pk if contract is not None else None,
        legal_entity_id=entity.pk if entity is not None else None,
    )
    if entity is not None and run.legal_entity_id != entity.pk:
        run.legal_entity = entity
    if milestone.status == Milestone.Status.PLANNED:
        # Completion taken back in the PSA: nothing to fix here, and nothing to invoice yet.
        _clear_fixed(run, fixed=VALIDATION_CASE_TYPES)
        return StepResult.waiting(
            f"Milestone {milestone.name} is open again in the PSA: it waits for its completion."
        )
    about = {
        "milestone_id": milestone.pk,
        "milestone": _quoted(milestone),
        "project_id": project.pk,
        "project": f"{project.code} {project.name}",
        "customer": customer.name,
        "noun": NOUN,
    }
    problems: list[_Problem] = []
    if contract is None:
        problems.append(
            _Problem(
                MILESTONE_PROJECT_WITHOUT_CONTRACT,
                about,
                f"project {project.code} is linked to no contract",
            )
        )
    if entity is None:
        problems.append(
            _Problem(
                MILESTONE_PROJECT_WITHOUT_LEGAL_ENTITY,
                about,
                f"project {project.code} has no legal entity",
            )
        )
    if contract is not None:
        problems += _terms_problems(milestone, contract, about)
    problems += _dependency_problems(milestone, about)
    if entity is not None:
        problems += _entity_problems(milestone, entity, about)

    held = _run_blocked(run, milestone)
    cases = [
        _case_for_run(
            case_type=p.case_type,
            subject=p.subject,
            records=[held],
            process=PROCESS,
            step=VALIDATE,
            legal_entity_id=entity.pk if entity is not None else None,
            region=project.region,
        )
        for p in problems
    ]
    found = {p.case_type for p in problems}
    _clear_fixed(run, fixed=[t for t in VALIDATION_CASE_TYPES if t not in found])
    if problems:
        return StepResult.blocked(cases[0], "; ".join(p.why for p in problems))
    assert contract is not None  # noqa: S101 - no problem means each was found
    assert entity is not None  # noqa: S101
    return StepResult.done(
        f"Milestone {_quoted(milestone)} of project {project.code} for {customer.name}: "
        f"{milestone.currency} {milestone.amount:,.2f} to invoice under contract "
        f"{contract.number} from legal entity {entity.code}."
    )


def _terms_problems(
    milestone: Milestone, contract: Contract, about: dict[str, Any]
) -> list[_Problem]:
    problems: list[_Problem] = []
    missing = []
    if contract.billing_model != Contract.BillingModel.FIXED_FEE:
        missing.append(f"it bills {contract.get_billing_model_display().lower()}, not by milestone")
    if contract.status != Contract.Status.ACTIVE:
        missing.append(f"it is not active (status {contract.get_status_display().lower()})")
    if not contract.payment_terms_days:
        missing.append("it has no payment terms")
    if not contract.total_value or contract.total_value <= 0:
        missing.append("it has no value to invoice against")
    tax = contract.tax_rate
    if tax is not None and not tax.active:
        missing.append(f"its tax profile {tax.code} is no longer active")
    on_contract = {**about, "contract_id": contract.pk, "contract": contract.number}
    if missing:
        text = "; ".join(missing)
        problems.append(
            _Problem(
                MILESTONE_CONTRACT_TERMS,
                {**on_contract, "missing": text},
                f"contract {contract.number}: {text}",
            )
        )
    why = ""
    if milestone.currency != contract.currency:
        why = (
            f"the milestone is in {milestone.currency}, its contract {contract.number} in "
            f"{contract.currency}"
        )
    elif milestone.amount <= 0:
        why = "the milestone has no amount"
    elif contract.total_value and contract.total_value > 0:
        # The batch keeps its contracts' sums current as its runs bill (`_billing_event`).
        billed = _shared.get(("billed", contract.pk), lambda: _milestones_billed(contract))
        before = sum((amount for pk, amount in billed.items() if pk != milestone.pk), Decimal("0"))
        if before + milestone.amount > contract.total_value:
            why = (
                f"with it, the milestones invoiced on contract {contract.number} would come to "
                f"{contract.currency} {before + milestone.amount:,.2f}, more than its value of "
                f"{contract.currency} {contract.total_value:,.2f}"
            )
    if why:
        problems.append(_Problem(MILESTONE_AMOUNT_MISMATCH, {**on_contract, "why": why}, why))
    if tax is not None and tax.active and tax.requires_customer_tax_number:
        customer = milestone.project.customer
        if not customer.tax_number:
            problems.append(
                _Problem(
                    MILESTONE_TAX_NUMBER_MISSING,
                    {**on_contract, "customer_id": customer.pk, "tax_rate": tax.code},
                    f"customer {customer.name} has no tax number for tax profile {tax.code}",
                )
            )
    return problems


def _dependency_problems(milestone: Milestone, about: dict[str, Any]) -> list[_Problem]:
    """The milestones of the same project due before this one that the PSA has not completed."""
    if milestone.due_date is None:
        return []
    planned = _shared.get(("planned", milestone.project_id), lambda: _planned(milestone.project_id))
    earlier = [m for m in planned if m.due_date is not None and m.due_date < milestone.due_date]
    if not earlier:
        return []
    names = ", ".join(f"{_quoted(m)} (due {m.due_date:%Y-%m-%d})" for m in earlier)
    words = f"milestone{'s' if len(earlier) > 1 else ''} {names}"
    return [
        _Problem(
            MILESTONE_DEPENDENCY_OPEN,
            {**about, "earlier": words},
            f"the earlier {words} {'are' if len(earlier) > 1 else 'is'} not complete",
        )
    ]


def _entity_problems(
    milestone: Milestone, entity: LegalEntity, about: dict[str, Any]
) -> list[_Problem]:
    problems: list[_Problem] = []
    base = entity.base_currency
    if milestone.currency != base and not _has_rate(milestone.currency, base):
        problems.append(
            _Problem(
                "missing_exchange_rate",
                {**about, "currency": milestone.currency, "base": base, "days": FX_RECENT_DAYS},
                f"no exchange rate from {milestone.currency} to {base} in the last "
                f"{FX_RECENT_DAYS} days",
            )
        )
    if routing_connection(role=SystemRole.ERP, legal_entity_id=entity.pk) is None:
        problems.append(
            _Problem(
                "no_erp_route",
                {**about, "legal_entity_id": entity.pk, "legal_entity": entity.code},
                f"no ERP connection serves legal entity {entity.code}",
            )
        )
    return problems


def _has_rate(currency: str, base: str) -> bool:
    """A rate between the two currencies (either way) as recent as the billing run wants."""
    recent = date.today() - timedelta(days=FX_RECENT_DAYS)
    memo = _rates_memo.get()
    if memo is not None and (currency, base, recent) in memo:
        return memo[(currency, base, recent)]
    found = ExchangeRate.objects.filter(
        Q(base_currency=currency, quote_currency=base)
        | Q(base_currency=base, quote_currency=currency),
        date__gte=recent,
    ).exists()
    if memo is not None:
        memo[(currency, base, recent)] = found
    return found


def _clear_fixed(run: WorkflowRun, *, fixed: Sequence[str]) -> None:
    """The run leaves the validation cases whose cause is fixed; a case holding nothing more
    closes."""
    _clear_run_off(run, case_types=fixed)


def _clear_run_off(run: WorkflowRun, *, case_types: Sequence[str]) -> None:
    if not _may_be_held(run):
        return
    case_records_clear(
        records=[(RUN_RECORD, run.pk)],
        process=PROCESS,
        case_types=case_types,
        note="Closed automatically: the milestones it held got past the step it named.",
    )


# --- Step 2: the billing event and the draft invoice in the ERP ---------------------------------


def _bill(run: WorkflowRun) -> StepResult:
    milestone = _milestone(run)
    project = milestone.project
    entity = project.legal_entity
    erp = _erp_of(run, entity)
    if entity is None or erp is None:
        # Only a change since validation gets here (a route removed): the same case again.
        code = entity.code if entity is not None else "(none)"
        case = _case_for_run(
            case_type="no_erp_route",
            subject={
                "legal_entity_id": entity.pk if entity is not None else None,
                "legal_entity": code,
                "project_id": project.pk,
                "noun": NOUN,
            },
            records=[_run_blocked(run, milestone)],
            process=PROCESS,
            step=BILL,
        )
        return StepResult.blocked(case, f"no ERP connection serves legal entity {code}")
    # A route found again takes the run off the case that said there was none.
    _clear_run_off(run, case_types=["no_erp_route"])
    event = _billing_event(milestone)
    made_now = run.context.get("invoice_id") is None
    invoice = _invoice(run, milestone, event, erp)
    words = f"draft invoice {invoice_reference(invoice)} for milestone {_quoted(milestone)}"
    contacts = _shared.get(("contacts",), lambda: invoice_contact_ids([(invoice, [event])]))
    contact_id = contacts.get((erp.pk, invoice.customer_id))
    item = OutboundItem(
        connection=erp,
        record=invoice,
        canonical=invoice_canonical(invoice, [event], contact_id),
        context=_context(
            run,
            milestone,
            invoice,
            label=f"Draft invoice {invoice_reference(invoice)} (milestone {_quoted(milestone)})",
        ),
    )
    messages = outbound_messages(
        items=[item],
        canonical_model="invoice",
        action="create",
        process=PROCESS,
        step=BILL,
        version=1,
        # Rendered now after an earlier refusal: it takes itself off the mapping's case (an
        # invoice this run made just now was refused nowhere).
        retried=not _opened_now(),
    )
    if not messages:
        refused = _open_render_case(invoice, step=BILL)
        if refused is not None:
            reason = str(refused.subject.get("reason", ""))
            return StepResult.blocked(refused, f"The {words} cannot be rendered: {reason}")
        return StepResult.waiting(f"The {words} could not be rendered.")
    result, delivered = _await(run, messages, what=words, new=made_now)
    stayed = _stayed_words(run, entity, erp)
    if delivered:
        number = _invoice_posted(invoice, delivered[0])
        erp_id = delivered[0].result.get("external_id") or ""
        return StepResult.done(
            f"Draft invoice {number or invoice_reference(invoice)} is in {_system(erp)} "
            f"({milestone.currency} {invoice.total:,.2f}).{stayed}",
            erp={"invoice": str(erp_id)},
        )
    result.detail += stayed
    return result


def _erp_of(run: WorkflowRun, entity: LegalEntity | None) -> Connection | None:
    """The ERP this run bills in: the one it decided on the first time it got here (pinned on
    the run), so a switch of the legal entity to another ERP since leaves its invoice where it
    started; else the route now, pinned. A run whose invoice exists from before pins were kept
    takes the connection its invoice's outbox row names."""
    pinned = run.context.get(RUN_PIN)
    if pinned is None and run.context.get("invoice_id") is not None:
        pinned = (
            OutboxMessage.objects.filter(
                content_type=ContentType.objects.get_for_model(Invoice),
                object_id=run.context["invoice_id"],
                process=PROCESS,
                step=BILL,
            )
            .order_by("pk")
            .values_list("connection_id", flat=True)
            .first()
        )
    if pinned is not None:
        found = Connection.objects.filter(pk=pinned).first()
        if found is not None:
            run.context[RUN_PIN] = found.pk
            return found
    erp = (
        routing_connection(role=SystemRole.ERP, legal_entity_id=entity.pk)
        if entity is not None
        else None
    )
    if erp is not None:
        run.context[RUN_PIN] = erp.pk
    return erp


def _stayed_words(run: WorkflowRun, entity: LegalEntity | None, erp: Connection) -> str:
    """What the step says when its legal entity has moved to another ERP since the run chose
    this one: it continued where it started ("" when the route still points here)."""
    if entity is None:
        return ""
    now = routing_connection(role=SystemRole.ERP, legal_entity_id=entity.pk)
    if now is None or now.pk == erp.pk:
        return ""
    switch = route_switch_latest(legal_entity_id=entity.pk)
    since = f" on {switch.effective_at:%Y-%m-%d %H:%M}" if switch is not None else ""
    return (
        f" Continued on {_system(erp)}, where it started: legal entity {entity.code} moved to "
        f"{_system(now)}{since}, and only new work goes there."
    )


def _billing_event(milestone: Milestone) -> BillingEvent:
    """The milestone's billing event: one per milestone (its unique key), made the first
    time. Linked to its invoice once the ERP has it (mark_invoiced; see the module's note)."""
    found = _shared.get(
        ("event", milestone.pk), BillingEvent.objects.filter(milestone=milestone).first
    )
    if found is not None:
        return found
    project = milestone.project
    assert project.legal_entity_id is not None  # noqa: S101 - validation refused it otherwise
    made = BillingEvent.objects.create(
        source=BillingEvent.Source.MILESTONE,
        milestone=milestone,
        project=project,
        contract=project.contract,
        legal_entity_id=project.legal_entity_id,
        description=_line_description(milestone),
        quantity=Decimal("1"),
        unit_amount=milestone.amount,
        amount=milestone.amount,
        currency=milestone.currency,
        source_system=SystemRole.PSA,
        field_sources={},
    )
    shared = _shared.current
    if shared is not None:
        shared[("event", milestone.pk)] = made
        _billed_add(shared, made)
    return made


def _invoice(
    run: WorkflowRun, milestone: Milestone, event: BillingEvent, erp: Connection
) -> Invoice:
    """The run's draft invoice, made the first time for the run's ERP: one line, the
    milestone's amount, taxed at the contract's tax profile, due by its payment terms."""
    invoice_id = run.context.get("invoice_id")
    related = ("customer", "contract__tax_rate", "legal_entity")
    if invoice_id is not None:
        return Invoice.objects.select_related(*related).get(pk=invoice_id)
    project = milestone.project
    contract = project.contract
    entity = project.legal_entity
    assert contract is not None  # noqa: S101 - validation refused it otherwise
    assert entity is not None  # noqa: S101
    percent = contract.tax_rate.rate_percent if contract.tax_rate is not None else Decimal("0")
    subtotal = event.amount
    tax = (subtotal * Decimal(percent) / 100).quantize(CENT, ROUND_HALF_UP)
    today = date.today()
    # Made with the customer, contract (with its tax profile) and legal entity loaded with the
    # milestone's project: rendering reads them from the invoice, and the row just written is
    # not read back (a five-table join a run).
    invoice = Invoice.objects.create(
        legal_entity=entity,
        customer=project.customer,
        contract=contract,
        currency=event.currency,
        issue_date=today,
        # Validation held a contract without terms; the default only satisfies the type.
        due_date=today
        + timedelta(days=contract.payment_terms_days or Contract.DEFAULT_PAYMENT_TERMS_DAYS),
        subtotal=subtotal,
        tax_total=tax,
        total=subtotal + tax,
        amount_due=subtotal + tax,
        source_system="",
        field_sources={},
        erp_connection=erp,
    )
    run.context["invoice_id"] = invoice.pk
    return invoice


def _invoice_posted(invoice: Invoice, delivered: OutboxMessage) -> str:
    """The ERP has the draft invoice: its number, read through the published mapping."""
    answer = outbound_answer(delivered)
    number = str(answer.get("number") or invoice.number)
    if (invoice.number, invoice.source_system) != (number, SystemRole.ERP):
        invoice.number = number
        invoice.status = Invoice.Status.DRAFT
        invoice.source_system = SystemRole.ERP
        invoice.save(update_fields=["number", "status", "source_system", "updated_at"])
    return number


def _line_description(milestone: Milestone) -> str:
    # "MS-<id>" first: it identifies the milestone on the ERP line, as "TE-<id>" a time entry.
    return f"MS-{milestone.pk} Milestone {milestone.name} ({milestone.project.code})"[:400]


# --- Step 3: the milestone marked invoiced, in Concord and in the PSA ---------------------------


def _mark_invoiced(run: WorkflowRun) -> StepResult:
    milestone = _milestone(run)
    invoice = Invoice.objects.get(pk=run.context["invoice_id"])
    BillingEvent.objects.filter(milestone=milestone).exclude(
        status=BillingEvent.Status.INVOICED, invoice=invoice
    ).update(status=BillingEvent.Status.INVOICED, invoice=invoice)
    if milestone.status != Milestone.Status.INVOICED:
        # Concord's own write, through the one write path (stamped and audited as Concord's);
        # the PSA, which owns it, announces the same status once the write below lands.
        milestone = record_update(
            record=milestone, data={"status": Milestone.Status.INVOICED}, actor=None
        )
    psa = Connection.objects.get(pk=run.input["connection_id"])
    update = _status_message(run, psa, milestone, invoice)
    if update.message is None:
        case = _case_for_run(
            case_type=RENDER_CASE,
            subject={
                "connection_id": psa.pk,
                "connection": psa.name,
                # The vendor object whose mapping renders it names the mapping to fix (its
                # editor link).
                "object_type": update.object_type or "milestone",
                "reason": update.reason,
                "noun": "invoiced milestone",
            },
            records=[_run_blocked(run, milestone)],
            process=PROCESS,
            step=MARK_INVOICED,
            connection_id=psa.pk,
        )
        return StepResult.blocked(case, f"The invoiced status cannot be sent: {update.reason}")
    # Rendered now after an earlier refusal: the run leaves the mapping's case.
    _clear_run_off(run, case_types=[RENDER_CASE])
    result, delivered = _await(
        run,
        [update.message],
        what=f"milestone {_quoted(milestone)} marked invoiced in {_system(psa)}",
    )
    if delivered:
        return StepResult.done(
            f"Milestone {_quoted(milestone)} is invoiced in Concord and {_system(psa)} "
            f"(invoice {invoice.number or invoice_reference(invoice)}).",
            psa={"milestone": str(run.input["external_id"])},
        )
    return result


def _status_message(
    run: WorkflowRun, connection: Connection, milestone: Milestone, invoice: Invoice
) -> PartialUpdate:
    """The outbox row setting the PSA milestone's status, rendered by the connection's
    published mapping (only the status, and the milestone's id where the mapping reads it);
    or why it cannot be rendered, in an admin's words."""
    context = _context(
        run, milestone, invoice, label=f"Milestone {_quoted(milestone)} marked invoiced"
    )
    return partial_update_message(
        connection=connection,
        canonical_model="milestone",
        external_id=str(run.input["external_id"]),
        values={"status": Milestone.Status.INVOICED},
        process=PROCESS,
        step=MARK_INVOICED,
        record=milestone,
        version=1,
        context={**context, "what": "milestone", "queue": Queue.PMO},
        required=("status",),
    )


# --- Sending and waiting ------------------------------------------------------------------------


def _await(
    run: WorkflowRun, messages: Sequence[OutboxMessage], *, what: str, new: bool = False
) -> tuple[StepResult, list[OutboxMessage]]:
    """Queue the rows not queued yet and say where they stand: all delivered (DONE, with the
    delivered rows), one parked (BLOCKED by its case), else WAITING for the dispatcher.
    ``new``: the rows are about a record made in this transaction, so none is queued yet."""
    # A row's key names its record's id (outbox.idempotency_key): none can name an invoice
    # made just now. Not asking saves a query in every run's first bill.
    existing = (
        {}
        if new
        else {
            m.idempotency_key: m
            for m in OutboxMessage.objects.filter(
                idempotency_key__in=[m.idempotency_key for m in messages]
            )
        }
    )
    outbox_enqueue(messages=[m for m in messages if m.idempotency_key not in existing])
    states = [
        _latest(existing[m.idempotency_key]) if m.idempotency_key in existing else None
        for m in messages
    ]
    delivered = [s for s in states if s is not None and s.state == OutboxMessage.State.DONE]
    if messages and len(delivered) == len(messages):
        return StepResult.done(f"Delivered: {what}."), delivered
    parked = next((s for s in states if s is not None and s.state == "parked"), None)
    if parked is not None and parked.exception_case_id is not None:
        case = ExceptionCase.objects.get(pk=parked.exception_case_id)
        if case.status == OPEN:
            refused = f"Refused by {_system(parked.connection)}: {parked.last_error[:300]}"
            return StepResult.blocked(case, refused), []
    return StepResult.waiting(f"Sent through the outbox: {what}."), []


def _latest(message: OutboxMessage) -> OutboxMessage:
    """The row as it stands now: a parked row's newest replay, when it has one."""
    replay = OutboxMessage.objects.filter(replay_of=message).order_by("-pk").first()
    return _latest(replay) if replay is not None else message


def _open_render_case(record: models.Model, *, step: str) -> ExceptionCase | None:
    """The integration admins' case the sync layer put an unrenderable record on."""
    return (
        ExceptionCase.objects.filter(
            status=OPEN,
            case_type=RENDER_CASE,
            process=PROCESS,
            step=step,
            blocked_records__record_type=record._meta.model_name,
            blocked_records__record_id=record.pk,
        )
        .order_by("-pk")
        .first()
    )


# --- After delivery -----------------------------------------------------------------------------


def milestone_delivered(messages: Sequence[OutboxMessage]) -> None:
    """Rows of a milestone step were delivered (in the outbox's transaction): the runs that
    sent them move on."""
    run_ids = {int(m.context["run_id"]) for m in messages if m.context.get("run_id")}
    for run_id in sorted(run_ids):
        try:
            # A savepoint: a run that cannot move on must not undo the outbox's record of the
            # delivery; it stays at its step for a retry.
            with transaction.atomic():
                run = run_lock(run_id=run_id)
                if run is not None and run.state != RunState.DONE:
                    _advance(run)
        except Exception:
            logger.exception("milestone run %s could not move on after a delivery", run_id)


# --- Cases --------------------------------------------------------------------------------------


def milestone_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a milestone case (exceptions/retry.py): the runs it holds (or that it blocks) go
    on from the step where they stopped."""
    ids = set(runs_held_by(case=case)) | set(
        WorkflowRun.objects.filter(process=PROCESS, exception_case=case).values_list(
            "pk", flat=True
        )
    )
    before = dict(WorkflowRun.objects.filter(pk__in=ids).values_list("pk", "current_step"))
    moved = milestones_resume(run_ids=list(ids))
    after = WorkflowRun.objects.filter(pk__in=ids)
    went_on = sum(1 for r in after if r.current_step != before.get(r.pk) or r.state == "done")
    return RetryResult(
        count=moved,
        summary=f"resumed {moved} milestone billing run(s); {went_on} got past the step that "
        "stopped them",
    )


# --- Helpers ------------------------------------------------------------------------------------


def _milestones() -> models.QuerySet[Milestone]:
    return Milestone.objects.select_related(
        "project__contract__tax_rate", "project__legal_entity", "project__customer"
    )


def _milestone(run: WorkflowRun) -> Milestone:
    """The run's milestone, read once per advance (``_memo``)."""
    memo = _memo.get()
    wanted = int(run.input["milestone_id"])
    known = memo.get("milestone") if memo is not None else None
    if known is not None and known.pk == wanted:
        return known
    milestone = _milestones().get(pk=wanted)
    if memo is not None:
        memo["milestone"] = milestone
    return milestone


def _quoted(milestone: Milestone) -> str:
    return f"\u201c{milestone.name}\u201d"


def _run_blocked(run: WorkflowRun, milestone: Milestone) -> Blocked:
    return Blocked(
        record_type=RUN_RECORD,
        record_id=run.pk,
        label=f"Milestone {milestone.name} ({milestone.project.code})",
        amount=milestone.amount,
        currency=milestone.currency if milestone.amount else "",
    )


def _context(
    run: WorkflowRun, milestone: Milestone, invoice: Invoice, *, label: str
) -> dict[str, Any]:
    """What the outbox row (and a case about it) says, and which run it moves on."""
    return {
        "what": "invoice",
        "subject": f"milestone {_quoted(milestone)} of project {milestone.project.code}",
        "label": label,
        "amount": str(invoice.total),
        "currency": invoice.currency,
        "hours": "0",
        "queue": Queue.FINANCE,
        "run_id": run.pk,
    }


def _system(connection: Connection) -> str:
    return f"{connection.get_vendor_display()} ({connection.name})"


MILESTONE_BILLING = Process(
    PROCESS,
    ((VALIDATE, _validate), (BILL, _bill), (MARK_INVOICED, _mark_invoiced)),
)

for _model in ("milestone", "project", "contract", "customer"):
    arrival_register(canonical_model=_model, handler=milestone_arrival, batch=milestone_arrivals)
after_poll_register(milestone_after_poll)
for _step in (BILL, MARK_INVOICED):
    delivered_step_register(process=PROCESS, step=_step, handler=milestone_delivered)
retry_handler_register(
    case_types=(*VALIDATION_CASE_TYPES, RENDER_CASE),
    handler=milestone_case_retry,
    process=PROCESS,
)
