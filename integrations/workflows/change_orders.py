"""Workflow 5: change orders, a contract amendment in the CRM propagated to the PSA and the ERP.

The CRM owns a contract's commercial terms. Once project provisioning (workflows/provisioning.py)
has put the contract's project in the PSA with the budget and dates of the day, a later change of
those terms in the CRM is an amendment that must reach the systems that were given them.

How an amendment is recognised: the CRM sends the contract (its signed webhook; inbound
processing maps and applies it and hands it here, integrations/sync/steps.py). When the
contract has provisioned projects (the subject of a provisioning run, in the PSA) and its terms
now differ from the terms each project was last given, the difference is a change order. The
terms a project was last given are those of the last change order done for it, else what the
PSA answered when provisioning created the project (its delivered outbox row, read through the
published mapping), else the project's own fields. The PSA's drift (PMO editing a budget in
Harvest) is therefore not mistaken for an amendment; only a change on the CRM's side is. A CRM
update that changes no term (the ids provisioning writes back, the billing status back-sync
writes) opens nothing.

A contract's negotiated rate per role is a record of its own in the CRM (custom object
``Contract_Rate__c``, mapped to the table-less ``contract_rate``): when one arrives (webhook or
poll) with a rate other than the contract's rate card in Concord, and the contract has
provisioned projects, that is a rate amendment. A contract not provisioned yet has nothing to
propagate: its rate card is simply kept in Concord.

One run per amendment (integrations/workflows/runs.py): its subject is the CRM's record (the
contract, or the contract's rate) and the version the amendment arrived with (the CRM's
modification stamp), so a redelivered webhook finds the same run and sends nothing twice. A
newer amendment of the same record supersedes an older run of it that has not finished (the
newer one carries its changes too, as terms are compared with what was last given, not with
the previous version), and an older update still on its way to the PSA is let through first,
so the newest lands last. An amendment withdrawn in the CRM (the contract back to the terms
given) ends the run still held at its check, and the case with it. Steps, each idempotent and
visible on the run:

1. ``assess``: the changes (system, record, field, before, after), and what is already invoiced
   on each project (the billing events on ERP invoices; of the role, for a rate). An amended
   budget below what is already invoiced is refused: a sales ops case naming the contract, the
   project, the budget and the invoiced amount holds the run until the CRM sends a corrected
   amendment (which supersedes this run) or finance credits the invoices and retries. For a
   rate: the approved time of the role not billed yet, which the next billing run prices at
   the new rate.
2. ``psa_project``: each project's budget and dates in the PSA, updated through the outbox,
   rendered by the PSA connection's published project mapping (only the changed fields and the
   project's id are sent); the step waits for the delivery. A rate is not sent: the PSA keeps
   no contract rates (Harvest bills by its people's rates; its rate cards are the firm's
   defaults), so the step says so and is not needed.
3. ``concord``: the canonical project given the same terms, or the contract's rate card given
   the amended rate (the one write path, audited as Concord's), so Concord's figures and its
   next billing run follow the amendment.
4. ``erp``: what the amendment means for the ERP. The ERP keeps no budget, project dates or
   contract rates (a project is a dimension there), and time already invoiced stays exactly as
   it was invoiced: draft and issued invoices are not repriced or reissued. Approved time not
   yet billed is billed by the next billing run under the contract as amended. The step sends
   nothing and says so on the run, listing the invoiced items kept (count, hours, amount,
   invoices).

Every change is listed on the run (``context["changes"]``) and in each step's detail, in words.

What holds a run is a case in the queue that can fix it, and fixing it resumes the run at its
step: the budget case above (sales ops); the PSA refusing the update (the outbox parks it on
its case; the replay's delivery moves the run on); the PSA's published mapping unable to render
it (integration admins; the case's retry renders it again); a run at one step too long (the
expected-work check's case, integrations/workflows/checks.py; its retry moves it on).

Not covered: milestones (the PSA owns them; the CRM's contract carries none), the billing
model and payment terms (the first amendment has no recorded "before" for them: provisioning
keeps none), and contracts amended only through a poll (polls apply contracts without handing
them to workflows; the contract's webhook does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from exceptions.models import ExceptionCase, Queue
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.models import (
    ApprovalState,
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Invoice,
    OutboxMessage,
    Project,
    RateCard,
    RunState,
    StepState,
    SystemRole,
    TimeEntry,
    WorkflowRun,
    WorkflowStep,
)
from integrations.sync.outbound import (
    RENDER_CASE,
    PartialUpdate,
    outbound_answer,
    partial_update_message,
)
from integrations.sync.outbox import outbox_enqueue
from integrations.sync.records import record_create, record_update
from integrations.sync.steps import Arrival, arrival_register, delivered_step_register
from integrations.timestamps import to_micros
from integrations.workflows import checks, provisioning
from integrations.workflows.runs import (
    RUN_RECORD,
    Process,
    Progress,
    StepResult,
    run_advance,
    run_lock,
    run_lock_by_subject,
    run_open,
    run_subject_set,
    runs_held_by,
)

logger = logging.getLogger(__name__)

PROCESS = "change_order"
ASSESS = "assess"
PSA_PROJECT = "psa_project"
CONCORD = "concord"
RATE = "rate"
TERMS_KIND = "terms"
ERP = "erp"

BUDGET_CASE = "change_order_budget_below_invoiced"
# The contract terms a project is given, in the order they are listed on a run.
TERMS = ("budget", "start_date", "end_date")
TERM_WORDS = {"budget": "budget", "start_date": "start date", "end_date": "end date"}
CENT = Decimal("0.01")
DONE_STATES = (OutboxMessage.State.DONE,)
OPEN = ExceptionCase.Status.OPEN


# --- The trigger ----------------------------------------------------------------------------------


def change_order_arrival(arrival: Arrival) -> None:
    """After inbound processing (integrations/sync/steps.py): a contract the CRM sent, applied
    (or skipped as a version already applied: a redelivery), starts or resumes its amendment's
    run when its terms differ from what its provisioned projects were given."""
    if arrival.record_id is None or arrival.connection.role != SystemRole.CRM:
        return
    change_order_start(
        connection=arrival.connection,
        external_id=arrival.external_id,
        contract_id=arrival.record_id,
    )


def change_order_start(
    *, connection: Connection, external_id: str, contract_id: int
) -> WorkflowRun | None:
    """The amendment's run, opened (or found) and moved on; None when the contract has no
    provisioned project or changes no term one was given."""
    with transaction.atomic():
        # Locked: two deliveries of the same contract decide one after the other.
        contract = Contract.objects.select_for_update().filter(pk=contract_id).first()
        if contract is None:
            return None
        key = subject_key(
            connection=connection, external_id=external_id, version=contract.source_version
        )
        run = run_lock_by_subject(process=PROCESS, subject_key=key)
        if run is not None:
            if run.state != RunState.DONE:
                run_advance(run=run, process=CHANGE_ORDER)
            return run
        projects = provisioned_projects(contract)
        terms = contract_terms(contract)
        if not any(project_changes(project, terms) for project in projects):
            # Back to what the projects were given (an amendment withdrawn in the CRM): a run of
            # the earlier amendment still held at its check, before it sent anything, has
            # nothing left to propagate.
            _end_unfinished(
                f"terms:{contract.pk}",
                keep=None,
                at_step=ASSESS,
                words=f"Withdrawn: contract {contract.number} is back to the terms its projects "
                "were given, so there is nothing left to propagate.",
                superseded_by=None,
            )
            return None
        first = projects[0]
        run, _ = run_open(
            process=CHANGE_ORDER,
            subject_key=key,
            label=f"Contract {contract.number} amendment",
            input={
                "contract_id": contract.pk,
                "contract": contract.number,
                "customer": contract.customer.name,
                "currency": contract.currency,
                "connection_id": connection.pk,
                "external_id": external_id,
                "version": contract.source_version,
                "kind": TERMS_KIND,
                # Amendments of the same thing: a newer one supersedes an unfinished older one.
                "thread": f"terms:{contract.pk}",
                "terms": terms,
            },
            legal_entity=first.legal_entity,
            region=first.region,
        )
        run.context["project_ids"] = [p.pk for p in projects]
        run_subject_set(run=run, record=contract)
        _supersede(run)
        return run_advance(run=run, process=CHANGE_ORDER)


def subject_key(*, connection: Connection, external_id: str, version: int) -> str:
    return f"contract:{connection.pk}:{external_id}:v{version}"


def provisioned_projects(contract: Contract) -> list[Project]:
    """The contract's projects that provisioning made and the PSA has (oldest first)."""
    made = WorkflowRun.objects.filter(
        process=provisioning.PROCESS,
        subject_type=ContentType.objects.get_for_model(Project),
    ).values("subject_id")
    in_psa = CrossReference.objects.filter(
        content_type=ContentType.objects.get_for_model(Project),
        connection__role=SystemRole.PSA,
    ).values("object_id")
    return list(
        Project.objects.filter(contract=contract, pk__in=made)
        .filter(pk__in=in_psa)
        .select_related("customer", "legal_entity")
        .order_by("pk")
    )


def contract_terms(contract: Contract) -> dict[str, str | None]:
    """The terms a contract gives its projects, as plain values (a run keeps them)."""
    budget = contract.total_value
    return {
        # No budget (a CRM record without one) states none: it does not zero the project's.
        "budget": _money(budget) if budget and budget > 0 else None,
        "start_date": _day(contract.start_date),
        "end_date": _day(contract.end_date),
    }


def _supersede(run: WorkflowRun) -> None:
    """Older runs of the same record that have not finished: the new amendment carries their
    changes too (terms are compared with what was last given), so they stop here."""
    _end_unfinished(
        thread=str(run.input["thread"]),
        keep=run.pk,
        words=f"Superseded by a later amendment of contract {run.input['contract']} "
        f"(run {run.pk}), which carries these changes too.",
        superseded_by=run.pk,
    )


def _end_unfinished(
    thread: str,
    *,
    keep: int | None,
    words: str,
    superseded_by: int | None,
    at_step: str | None = None,
) -> int:
    """End the unfinished runs of `thread` (but `keep`; only those at `at_step`, when given):
    their open steps marked not needed with `words`, the runs done, off the cases that held
    them. Returns how many."""
    older = WorkflowRun.objects.select_for_update().filter(process=PROCESS, input__thread=thread)
    if keep is not None:
        older = older.exclude(pk=keep)
    if at_step is not None:
        older = older.filter(current_step=at_step)
    now = timezone.now()
    ended = 0
    for old in older.exclude(state=RunState.DONE).order_by("pk"):
        for step in WorkflowStep.objects.filter(run=old).exclude(
            state__in=(StepState.DONE, StepState.SKIPPED)
        ):
            # What it was doing (or why it was held) stays readable before the reason it ends.
            step.detail = f"{step.detail} {words}".strip()[:2000]
            step.state, step.finished_at, step.exception_case = StepState.SKIPPED, now, None
            step.save(update_fields=["detail", "state", "finished_at", "exception_case"])
        old.state = RunState.DONE
        old.current_step = ""
        old.exception_case = None
        old.finished_at = now
        old.context["superseded_by"] = superseded_by
        old.save()
        case_records_clear(
            records=[(RUN_RECORD, old.pk)],
            process=PROCESS,
            note="Closed automatically: the contract's later version replaced the amendment "
            "it held.",
        )
        ended += 1
    return ended


# --- What each project was given, and what changes -----------------------------------------------


@dataclass(frozen=True)
class Change:
    """One field of one record changing in one system."""

    system: str  # "PSA", "Concord", "ERP"
    record: str
    field: str
    before: str | None
    after: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "record": self.record,
            "field": self.field,
            "before": self.before,
            "after": self.after,
        }


def project_changes(project: Project, terms: dict[str, str | None]) -> dict[str, tuple[Any, Any]]:
    """{term: (before, after)} for the terms the amendment changes on this project. A term the
    amendment leaves blank is not a change (the CRM not stating an end date does not remove
    the project's)."""
    given = terms_given(project)
    changes: dict[str, tuple[Any, Any]] = {}
    for name in TERMS:
        after = terms.get(name)
        if after is None:
            continue
        if given.get(name) != after:
            changes[name] = (given.get(name), after)
    return changes


def terms_given(project: Project) -> dict[str, str | None]:
    """The terms the project was last given: by the last change order done for it, else what
    the PSA answered when provisioning created it, else the project's own fields."""
    last = (
        WorkflowRun.objects.filter(
            process=PROCESS, state=RunState.DONE, context__given__has_key=str(project.pk)
        )
        .order_by("-finished_at", "-pk")
        .values_list("context", flat=True)
        .first()
    )
    if last is not None:
        return dict(last["given"][str(project.pk)])
    own = {
        "budget": _money(project.budget),
        "start_date": _day(project.start_date),
        "end_date": _day(project.end_date),
    }
    created = (
        OutboxMessage.objects.filter(
            process=provisioning.PROCESS,
            step=provisioning.PSA_PROJECT,
            content_type=ContentType.objects.get_for_model(Project),
            object_id=project.pk,
            state=OutboxMessage.State.DONE,
        )
        .select_related("connection")
        .order_by("-pk")
        .first()
    )
    if created is None:
        return own
    answer = outbound_answer(created)
    return {
        "budget": _money(answer["budget"]) if answer.get("budget") is not None else own["budget"],
        "start_date": _day(answer.get("start_date")) or own["start_date"],
        "end_date": _day(answer.get("end_date")) or own["end_date"],
    }


@dataclass(frozen=True)
class Invoiced:
    """What is invoiced on a project already: kept exactly as it was invoiced."""

    entries: int
    hours: Decimal
    amount: Decimal
    currency: str
    invoices: tuple[str, ...]

    def words(self) -> str:
        if not self.entries:
            return "nothing invoiced yet"
        listed = ", ".join(self.invoices)
        return (
            f"{self.entries} invoiced item(s) ({self.hours:,.2f} hours, {self.currency} "
            f"{self.amount:,.2f}) on {listed}"
        )


def invoiced_on(project: Project, *, role: str | None = None) -> Invoiced:
    """What is invoiced on the project (of one role's time, when given), voided invoices
    aside."""
    events = BillingEvent.objects.filter(project=project, invoice__isnull=False).exclude(
        invoice__status=Invoice.Status.VOIDED
    )
    if role is not None:
        events = events.filter(time_entry__resource__role=role)
    totals = events.aggregate(
        entries=Count("pk"),
        hours=Sum("quantity", filter=Q(source=BillingEvent.Source.TIME)),
        amount=Sum("amount"),
    )
    invoices = Invoice.objects.filter(pk__in=events.values("invoice_id")).order_by("pk")
    return Invoiced(
        entries=int(totals["entries"] or 0),
        hours=Decimal(totals["hours"] or 0),
        amount=Decimal(totals["amount"] or 0),
        currency=project.currency,
        invoices=tuple(
            f"invoice {i.number} ({i.get_status_display().lower()})"
            if i.number
            else f"draft invoice #{i.pk}"
            for i in invoices
        ),
    )


# --- Step 1: assess -----------------------------------------------------------------------------


def _assess(run: WorkflowRun) -> StepResult:
    if run.input.get("kind") == RATE:
        return _assess_rate(run)
    terms = run.input["terms"]
    projects = _projects(run)
    changes: list[Change] = []
    plan: dict[str, dict[str, list[Any]]] = {}
    kept: dict[str, dict[str, Any]] = {}
    refused: list[tuple[Project, Invoiced]] = []
    for project in projects:
        changed = project_changes(project, terms)
        invoiced = invoiced_on(project)
        kept[str(project.pk)] = {
            "entries": invoiced.entries,
            "hours": str(invoiced.hours),
            "amount": str(invoiced.amount),
            "currency": invoiced.currency,
            "invoices": list(invoiced.invoices),
        }
        budget = changed.get("budget")
        if budget is not None and invoiced.entries and Decimal(budget[1]) < invoiced.amount:
            refused.append((project, invoiced))
        if not changed:
            continue
        plan[str(project.pk)] = {name: [b, a] for name, (b, a) in changed.items()}
        for name, (before, after) in changed.items():
            for system in ("PSA", "Concord"):
                changes.append(
                    Change(system, f"project {project.code}", TERM_WORDS[name], before, after)
                )
    run.context.update(plan=plan, kept=kept, changes=[c.as_dict() for c in changes])
    if refused:
        project, invoiced = refused[0]
        case = case_open_or_join(
            case_type=BUDGET_CASE,
            subject={
                "contract_id": run.input["contract_id"],
                "contract": run.input["contract"],
                "customer": run.input["customer"],
                "project_id": project.pk,
                "project": project.code,
                "budget": f"{project.currency} {Decimal(terms['budget']):,.2f}",
                "invoiced": f"{invoiced.currency} {invoiced.amount:,.2f}",
            },
            records=[_run_blocked(run)],
            process=PROCESS,
            step=ASSESS,
            legal_entity_id=run.legal_entity_id,
            region=run.region,
        )
        return StepResult.blocked(
            case,
            f"The amended budget ({project.currency} {Decimal(terms['budget']):,.2f}) is below "
            f"what is already invoiced on project {project.code} ({invoiced.words()}).",
        )
    case_records_clear(
        records=[(RUN_RECORD, run.pk)],
        process=PROCESS,
        case_types=(BUDGET_CASE,),
        note="Closed automatically: the amendment it held is within what is invoiced.",
    )
    listed = "; ".join(
        f"project {p.code}: "
        + ", ".join(
            f"{TERM_WORDS[name]} {_show(before)} -> {_show(after)}"
            for name, (before, after) in plan[str(p.pk)].items()
        )
        for p in projects
        if str(p.pk) in plan
    )
    return StepResult.done(f"Contract {run.input['contract']} amended: {listed}.")


# --- Step 2: the project in the PSA -------------------------------------------------------------


def _psa_project(run: WorkflowRun) -> StepResult:
    if run.input.get("kind") == RATE:
        return StepResult.skipped(
            "Nothing to send to the PSA: it keeps no contract rates (Harvest bills by its "
            "people's rates, and its rate cards are the firm's defaults); Concord prices the "
            "contract's time with the contract's rate card when it bills it."
        )
    plan = run.context.get("plan", {})
    messages: list[OutboxMessage] = []
    ids: dict[str, str] = {}
    words: list[str] = []
    for project in _projects(run):
        changed = plan.get(str(project.pk))
        if not changed:
            continue
        if _earlier_in_flight(run, project):
            # An older amendment's update of this project (superseded) is still on its way:
            # this one goes after it, so the PSA ends with the newest terms. Its delivery
            # moves this run on (change_order_delivered).
            return StepResult.waiting(
                f"Waiting for an earlier amendment's update of project {project.code} to "
                "reach the PSA, so that this one lands last."
            )
        psa, psa_id = _psa_of(project)
        ids[project.code] = psa_id
        values = {name: _canonical(name, after) for name, (_, after) in changed.items()}
        update = _update_message(run, psa, project, psa_id, values)
        if update.message is None:
            case = case_open_or_join(
                case_type=RENDER_CASE,
                subject={
                    "connection_id": psa.pk,
                    "connection": psa.name,
                    "object_type": "projects",
                    "reason": update.reason,
                    "noun": "contract amendment",
                },
                records=[_run_blocked(run)],
                process=PROCESS,
                step=PSA_PROJECT,
                connection_id=psa.pk,
            )
            reason = update.reason
            return StepResult.blocked(case, f"Project {project.code} cannot be sent: {reason}")
        messages.append(update.message)
        words.append(
            f"{_system(psa)} project {psa_id} ({project.code}): "
            + ", ".join(
                f"{TERM_WORDS[name]} {_show(before)} -> {_show(after)}"
                for name, (before, after) in changed.items()
            )
        )
    if not messages:
        return StepResult.skipped("No project's terms in the PSA change.")
    result = _await(run, PSA_PROJECT, messages, what="; ".join(words))
    if result.progress == Progress.DONE:
        result.ids = {"psa": ids}
    return result


def _earlier_in_flight(run: WorkflowRun, project: Project) -> bool:
    return (
        OutboxMessage.objects.filter(
            process=PROCESS,
            step=PSA_PROJECT,
            content_type=ContentType.objects.get_for_model(Project),
            object_id=project.pk,
            record_version__lt=int(run.input["version"]),
            state__in=(OutboxMessage.State.PENDING, OutboxMessage.State.IN_FLIGHT),
        )
        .exclude(context__run_id=run.pk)
        .exists()
    )


def _update_message(
    run: WorkflowRun,
    connection: Connection,
    project: Project,
    external_id: str,
    values: dict[str, Any],
) -> PartialUpdate:
    """The outbox row updating `values` on the PSA's project, rendered by the connection's
    published mapping (the fields sent, every one of them, and the project's id); or why it
    cannot be."""
    return partial_update_message(
        connection=connection,
        canonical_model="project",
        external_id=external_id,
        values=values,
        process=PROCESS,
        step=PSA_PROJECT,
        record=project,
        # One effect per amendment: the contract's version the amendment arrived with.
        version=int(run.input["version"]),
        context={
            "what": "project",
            "subject": _label(run),
            "label": f"Project {project.code}",
            "amount": str(_amount(run)),
            "currency": str(run.input.get("currency") or ""),
            "hours": "0",
            "queue": Queue.PMO,
            "run_id": run.pk,
        },
        # A term the mapping does not write would leave the PSA on the old terms unnoticed.
        required=tuple(values),
        words=TERM_WORDS,
    )


def _await(
    run: WorkflowRun, step: str, messages: Sequence[OutboxMessage], *, what: str
) -> StepResult:
    """Queue the rows not queued yet and say where they stand: all delivered (DONE), one
    parked (BLOCKED by its case), else WAITING for the dispatcher."""
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
    if all(s is not None and s.state in DONE_STATES for s in states):
        return StepResult.done(f"Updated: {what}.")
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


# --- Step 3: the project in Concord -------------------------------------------------------------


def _concord(run: WorkflowRun) -> StepResult:
    if run.input.get("kind") == RATE:
        return _concord_rate(run)
    plan = run.context.get("plan", {})
    given: dict[str, dict[str, str | None]] = {}
    words: list[str] = []
    for project in _projects(run):
        changed = plan.get(str(project.pk))
        before = terms_given(project)
        if changed:
            data = {name: _canonical(name, after) for name, (_, after) in changed.items()}
            record_update(record=project, data=data, actor=None)
            words.append(
                f"project {project.code}: "
                + ", ".join(
                    f"{TERM_WORDS[name]} {_show(b)} -> {_show(a)}"
                    for name, (b, a) in changed.items()
                )
            )
        given[str(project.pk)] = {
            **before,
            **{name: after for name, (_, after) in (changed or {}).items()},
        }
    # What each project has now been given: the next amendment is compared with it.
    run.context["given"] = given
    if not words:
        return StepResult.skipped("No project's terms in Concord change.")
    return StepResult.done(f"Concord's {'; '.join(words)}.")


# --- Step 4: the ERP ----------------------------------------------------------------------------


def _erp(run: WorkflowRun) -> StepResult:
    kept = run.context.get("kept", {})
    lines: list[str] = []
    for project in _projects(run):
        facts = kept.get(str(project.pk))
        if not facts or not facts.get("entries"):
            lines.append(f"project {project.code}: nothing invoiced yet")
            continue
        invoiced = Invoiced(
            entries=int(facts["entries"]),
            hours=Decimal(facts["hours"]),
            amount=Decimal(facts["amount"]),
            currency=str(facts["currency"]),
            invoices=tuple(facts["invoices"]),
        )
        lines.append(f"project {project.code}: {invoiced.words()}, kept as invoiced")
    keeps = "contract rates" if run.input.get("kind") == RATE else "project budgets or dates"
    return StepResult.skipped(
        f"Nothing to send to the ERP: it keeps no {keeps}, and time already invoiced stays "
        "as it was invoiced (no invoice is repriced or reissued); approved time not billed yet "
        "is billed under the amended contract by the next billing run. " + "; ".join(lines) + "."
    )


# --- A rate amended ----------------------------------------------------------------------------


def change_order_rate_arrival(arrival: Arrival) -> None:
    """After inbound processing (or a poll): a contract's negotiated rate the CRM sent (a model
    without a table: its mapped fields) starts or resumes its amendment's run when it differs
    from the contract's rate card in Concord."""
    if arrival.connection.role != SystemRole.CRM:
        return
    change_order_rate_start(
        connection=arrival.connection, external_id=arrival.external_id, fields=arrival.fields
    )


def change_order_rate_start(
    *, connection: Connection, external_id: str, fields: Mapping[str, Any]
) -> WorkflowRun | None:
    """The rate amendment's run, opened (or found) and moved on. A contract not provisioned
    yet has nothing to propagate: its rate card is kept in Concord and no run is opened.
    None when there is no run."""
    contract_id = str(fields.get("contract__external_id") or "")
    role, currency = str(fields.get("role") or ""), str(fields.get("currency") or "")
    if not (contract_id and role and currency) or fields.get("bill_rate") is None:
        return None
    after = _money(fields["bill_rate"])
    with transaction.atomic():
        contract = _contract_by_crm_id(connection, contract_id)
        if contract is None:
            logger.info("rate %s names contract %s, unknown to Concord", external_id, contract_id)
            return None
        version = _version(fields.get("modified_at"))
        key = f"contract_rate:{connection.pk}:{external_id}:v{version}"
        run = run_lock_by_subject(process=PROCESS, subject_key=key)
        if run is not None:
            if run.state != RunState.DONE:
                run_advance(run=run, process=CHANGE_ORDER)
            return run
        card = RateCard.objects.filter(contract=contract, role=role, currency=currency).first()
        before = _money(card.bill_rate) if card is not None else None
        if before == after:
            return None
        projects = provisioned_projects(contract)
        if not projects:
            _rate_card_write(contract, role, currency, after)
            return None
        default = (
            RateCard.objects.filter(contract__isnull=True, role=role, currency=currency)
            .values_list("bill_rate", flat=True)
            .first()
        )
        first = projects[0]
        run, _ = run_open(
            process=CHANGE_ORDER,
            subject_key=key,
            label=f"Contract {contract.number} rate amendment ({role}, {currency})",
            input={
                "contract_id": contract.pk,
                "contract": contract.number,
                "customer": contract.customer.name,
                "currency": contract.currency,
                "connection_id": connection.pk,
                "external_id": external_id,
                "version": version,
                "kind": RATE,
                "thread": f"rate:{connection.pk}:{external_id}",
                "rate": {
                    "role": role,
                    "currency": currency,
                    "before": before,
                    # What the contract's time of this role was priced at without its own rate.
                    "default": _money(default) if default is not None else None,
                    "after": after,
                },
            },
            legal_entity=first.legal_entity,
            region=first.region,
        )
        run.context["project_ids"] = [p.pk for p in projects]
        run_subject_set(run=run, record=contract)
        _supersede(run)
        return run_advance(run=run, process=CHANGE_ORDER)


def _assess_rate(run: WorkflowRun) -> StepResult:
    rate = run.input["rate"]
    role, currency = rate["role"], rate["currency"]
    before = rate["before"] if rate["before"] is not None else rate["default"]
    record = f"rate card of contract {run.input['contract']} for {role} ({currency})"
    projects = _projects(run)
    kept: dict[str, dict[str, Any]] = {}
    for project in projects:
        invoiced = invoiced_on(project, role=role)
        kept[str(project.pk)] = {
            "entries": invoiced.entries,
            "hours": str(invoiced.hours),
            "amount": str(invoiced.amount),
            "currency": invoiced.currency,
            "invoices": list(invoiced.invoices),
        }
    unbilled = TimeEntry.objects.filter(
        project__in=projects,
        approval_state=ApprovalState.APPROVED,
        billable=True,
        resource__role=role,
        billing_event__isnull=True,
    ).aggregate(entries=Count("pk"), hours=Sum("hours"))
    hours = Decimal(unbilled["hours"] or 0)
    change = Change("Concord", record, "bill rate", before, rate["after"])
    run.context.update(
        kept=kept,
        changes=[change.as_dict()],
        unbilled={"entries": int(unbilled["entries"] or 0), "hours": str(hours)},
    )
    was = (
        f"{_show(before)}"
        + (
            " (the firm's default: the contract had no rate of its own)"
            if rate["before"] is None
            else ""
        )
        if before is not None
        else "none"
    )
    return StepResult.done(
        f"Contract {run.input['contract']} rate for {role} amended: {currency} {was} -> "
        f"{_show(rate['after'])} an hour; {int(unbilled['entries'] or 0)} approved entries "
        f"({hours:,.2f} hours) not billed yet will be billed at the new rate."
    )


def _concord_rate(run: WorkflowRun) -> StepResult:
    rate = run.input["rate"]
    contract = Contract.objects.get(pk=run.input["contract_id"])
    card = _rate_card_write(contract, rate["role"], rate["currency"], rate["after"])
    before = rate["before"] if rate["before"] is not None else rate["default"]
    return StepResult.done(
        f"Concord's rate card of contract {contract.number} for {card.role} ({card.currency}): "
        f"{_show(before)} -> {_show(rate['after'])}."
    )


def _rate_card_write(contract: Contract, role: str, currency: str, rate: str) -> RateCard:
    """The contract's rate card for the role and currency, at `rate` (the one write path,
    audited as Concord's)."""
    card = RateCard.objects.filter(contract=contract, role=role, currency=currency).first()
    if card is None:
        return record_create(
            model=RateCard,
            data={
                "contract": contract.pk,
                "role": role,
                "currency": currency,
                "bill_rate": Decimal(rate),
            },
            actor=None,
        )
    return record_update(record=card, data={"bill_rate": Decimal(rate)}, actor=None)


def _contract_by_crm_id(connection: Connection, external_id: str) -> Contract | None:
    """The contract the CRM's id names, locked (two arrivals about it decide in turn)."""
    xref = CrossReference.objects.filter(
        connection=connection,
        content_type=ContentType.objects.get_for_model(Contract),
        external_id=external_id,
    ).first()
    if xref is None:
        return None
    return (
        Contract.objects.select_for_update()
        .select_related("customer")
        .filter(pk=xref.object_id)
        .first()
    )


def _version(stamp: Any) -> int:
    if isinstance(stamp, datetime):
        return to_micros(stamp)
    return 0


# --- After delivery -----------------------------------------------------------------------------


def change_order_delivered(messages: Sequence[OutboxMessage]) -> None:
    """The PSA took a project's amendment (in the outbox's transaction): its run moves on, and
    so do later amendments of the same project that waited for it to land first."""
    run_ids = {int(m.context["run_id"]) for m in messages if m.context.get("run_id")}
    for project_id in {m.object_id for m in messages}:
        run_ids |= set(
            WorkflowRun.objects.filter(
                process=PROCESS,
                state=RunState.RUNNING,
                current_step=PSA_PROJECT,
                context__project_ids__contains=[project_id],
            ).values_list("pk", flat=True)
        )
    for run_id in sorted(run_ids):
        try:
            # A savepoint: a run that cannot move on must not undo the outbox's record of the
            # delivery; it stays at its step for a retry.
            with transaction.atomic():
                run = run_lock(run_id=run_id)
                if run is not None and run.state != RunState.DONE:
                    run_advance(run=run, process=CHANGE_ORDER)
        except Exception:
            logger.exception("change order run %s could not move on after a delivery", run_id)


def change_order_resume(*, run_ids: Sequence[int]) -> int:
    """Move these runs on from where they stand (one transaction each). Returns how many."""
    moved = 0
    for run_id in sorted(set(run_ids)):
        with transaction.atomic():
            run = run_lock(run_id=run_id)
            if run is None or run.state == RunState.DONE:
                continue
            run_advance(run=run, process=CHANGE_ORDER)
            moved += 1
    return moved


def change_order_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a change-order case (exceptions/retry.py): the runs it holds go on from the step
    where they stopped."""
    ids = set(runs_held_by(case=case)) | set(
        WorkflowRun.objects.filter(exception_case=case, process=PROCESS).values_list(
            "pk", flat=True
        )
    )
    moved = change_order_resume(run_ids=list(ids))
    done = WorkflowRun.objects.filter(pk__in=ids, state=RunState.DONE).count()
    return RetryResult(
        count=moved, summary=f"resumed {moved} change order run(s); {done} of them done"
    )


def change_order_stuck_retry(case: ExceptionCase) -> RetryResult:
    """Retry a stuck-run case of change orders (integrations/workflows/checks.py files it under
    this process): the runs it holds go on from their step, then the check runs again."""
    moved = change_order_resume(run_ids=runs_held_by(case=case))
    checked = checks.expected_work_case_retry(case)
    return RetryResult(
        count=moved + checked.count,
        summary=f"moved on {moved} change order run(s); {checked.summary}",
    )


# --- Helpers ------------------------------------------------------------------------------------


def _projects(run: WorkflowRun) -> list[Project]:
    ids = [int(i) for i in run.context.get("project_ids", [])]
    return list(Project.objects.filter(pk__in=ids).select_related("legal_entity").order_by("pk"))


def _psa_of(project: Project) -> tuple[Connection, str]:
    """The PSA connection holding the project, and its id there."""
    xref = (
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(Project),
            object_id=project.pk,
            connection__role=SystemRole.PSA,
        )
        .select_related("connection")
        .order_by("pk")
        .first()
    )
    if xref is None:
        raise LookupError(f"project {project} lost its PSA cross-reference")
    return xref.connection, xref.external_id


def _run_blocked(run: WorkflowRun) -> Blocked:
    amount = _amount(run)
    return Blocked(
        record_type=RUN_RECORD,
        record_id=run.pk,
        label=_label(run),
        amount=amount,
        currency=str(run.input.get("currency") or "") if amount else "",
    )


def _label(run: WorkflowRun) -> str:
    return (
        f"amendment of contract {run.input.get('contract', '')} ({run.input.get('customer', '')})"
    )


def _amount(run: WorkflowRun) -> Decimal:
    try:
        return Decimal(str(run.input.get("terms", {}).get("budget") or "0"))
    except InvalidOperation:
        return Decimal("0")


def _system(connection: Connection) -> str:
    return f"{connection.get_vendor_display()} ({connection.name})"


def _money(value: Any) -> str:
    return str(Decimal(str(value)).quantize(CENT, ROUND_HALF_UP))


def _day(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value.isoformat()
    return str(value)[:10]


def _canonical(name: str, value: str | None) -> Any:
    """A term as the canonical record holds it (a run keeps plain strings)."""
    if value is None:
        return None
    if name == "budget":
        return Decimal(value)
    return date.fromisoformat(value)


def _show(value: str | None) -> str:
    if value is None:
        return "(none)"
    try:
        return f"{Decimal(value):,.2f}" if "-" not in value else value
    except InvalidOperation:
        return value


CHANGE_ORDER = Process(
    PROCESS,
    (
        (ASSESS, _assess),
        (PSA_PROJECT, _psa_project),
        (CONCORD, _concord),
        (ERP, _erp),
    ),
)

arrival_register(canonical_model="contract", handler=change_order_arrival)
arrival_register(canonical_model="contract_rate", handler=change_order_rate_arrival)
delivered_step_register(process=PROCESS, step=PSA_PROJECT, handler=change_order_delivered)
retry_handler_register(
    case_types=(BUDGET_CASE, RENDER_CASE), handler=change_order_case_retry, process=PROCESS
)
retry_handler_register(
    case_types=(checks.RUN_CASE,), handler=change_order_stuck_retry, process=PROCESS
)
