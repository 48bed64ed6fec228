"""Workflow 1: project provisioning, from a closed-won opportunity to a project in every system.

An opportunity the CRM sends (a signed webhook, or a poll: inbound processing, or the poll of
a model without a table, maps it and hands it here, integrations/sync/steps.py) that is won
opens one run per opportunity (integrations/workflows/runs.py), keyed by the opportunity, so a
webhook and a poll of the same closed-won opportunity find the same run. Its steps, each
idempotent and visible to PMO as a stage:

1. ``validate``: the account is a customer Concord holds, it has one live contract in the
   opportunity's currency with billing terms (activated, a billing model, a budget, payment
   terms), the tax profile can be invoiced (an active tax rate; the customer's tax number where
   it requires one), the opportunity (or contract, or account) names a legal entity, and an ERP
   and a PSA serve it. Each missing item is a business-readable case for the queue that owns
   the data (sales ops the commercial data, finance the tax profile, integration admins the
   routes) holding the run; the run stops here until it is fixed.
2. ``erp_customer``: the customer in the ERP, unless the ERP has it already.
3. ``psa_client``: the customer in the PSA, unless the PSA has it already.
4. ``psa_project``: the project in Concord (linked to its contract and legal entity from the
   start, so sync/project_links.py never has to guess) and in the PSA, under the client, with
   the contract's budget and billing model.
5. ``psa_tasks``: the firm's standard tasks assigned to the PSA project: those the PSA marks
   as added to every new project (Harvest's default tasks), billable as the PSA says; one
   outbox row per project, which the PSA's connector carries out task by task, skipping the
   tasks assigned already.
6. ``psa_milestones``: a fixed-fee contract's milestones, made in Concord from the contract
   (its value split by the shares of value map ``provisioning_milestone_plan``, due across its
   term) and created in the PSA under the project (one row per milestone); a contract billed
   by the hour skips it. The milestone workflow (workflows/milestones.py) invoices them once
   the PSA marks them complete.
7. ``psa_team``: the opportunity's delivery lead and team (their emails, custom fields of the
   CRM's opportunity) staffed on the project: an Assignment in Concord each, and a user
   assignment in the PSA (the lead as project manager); someone the PSA's users do not
   include is named in the step's detail for PMO, and does not hold the project up.
8. ``erp_dimension``: the project's dimension in the ERP (an option of its project tracking
   category), which invoice lines name.
9. ``write_back``: the PSA project's and the ERP dimension's ids written to the CRM opportunity
   and contract, and the ERP's ids to the PSA project.

Every write goes through the outbox (idempotency keys from process, step, record and version)
and is rendered by the target connection's published mapping: nothing here names a vendor
field. A step that wrote waits for its delivery; the delivered handler moves the run on in the
same transaction. A step that fails leaves the run there: a case's retry (or the CRM sending
the fixed account or contract, or the opportunity again) runs that step again, never the ones
before it. A second delivery of the same closed-won event finds the same run and sends nothing
twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import Q

from exceptions.models import BlockedRecord, ExceptionCase, Queue
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.mapping.selectors import value_map_tables
from integrations.models import (
    Assignment,
    Connection,
    Contract,
    CrossReference,
    Customer,
    LegalEntity,
    Milestone,
    OutboxMessage,
    Project,
    Resource,
    RunState,
    SystemRole,
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
from integrations.sync.outbox import idempotency_key, outbox_enqueue, outbox_enqueue_together
from integrations.sync.records import record_create
from integrations.sync.steps import Arrival, arrival_register, delivered_step_register
from integrations.workflows.runs import (
    RUN_RECORD,
    LookedUpTogether,
    Opening,
    Process,
    StepFn,
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

logger = logging.getLogger(__name__)

PROCESS = "provisioning"
VALIDATE = "validate"
ERP_CUSTOMER = "erp_customer"
PSA_CLIENT = "psa_client"
PSA_PROJECT = "psa_project"
PSA_TASKS = "psa_tasks"
PSA_MILESTONES = "psa_milestones"
PSA_TEAM = "psa_team"
ERP_DIMENSION = "erp_dimension"
WRITE_BACK = "write_back"

# The case types validation raises (exceptions/catalogue.py); each holds the run.
VALIDATION_CASE_TYPES = (
    "provisioning_account_unknown",
    "provisioning_legal_entity_missing",
    "provisioning_contract_missing",
    "provisioning_billing_terms_missing",
    "provisioning_tax_number_missing",
    "provisioning_tax_profile_inactive",
    "provisioning_no_route",
)
OPEN = ExceptionCase.Status.OPEN
DONE_STATES = (OutboxMessage.State.DONE,)
# The firm's milestone plan (a value map: integration admins edit it; the PSA's defaults
# install it, integrations/vendors/harvest/mappings.py).
MILESTONE_PLAN = "provisioning_milestone_plan"
# A contract with no end date spreads its milestones over this many days from its start.
DEFAULT_TERM_DAYS = 90
CENT = Decimal("0.01")


# --- The trigger ----------------------------------------------------------------------------------


def provisioning_start(
    *, connection: Connection, external_id: str, fields: Mapping[str, Any]
) -> WorkflowRun | None:
    """An opportunity as the CRM sent it (mapped), by webhook or by poll (the same run, keyed
    by the opportunity): won, its run is opened (or found) and moved on from where it stands;
    not won, only a run it already has is resumed (it was won before: a blocked run checks
    again). A won opportunity that names its PSA project already and has no run opens none.
    Returns the run, or None when there is none."""
    with transaction.atomic():
        key = subject_key(connection=connection, external_id=external_id)
        if fields.get("is_won") is not True:
            run = run_lock_by_subject(process=PROCESS, subject_key=key)
            if run is not None and run.state == RunState.BLOCKED:
                _advance(run)
            return run
        found: WorkflowRun | None = None
        if fields.get("psa_project_id"):
            # Won and naming its PSA project: usually the echo of this run's own write-back
            # (found here, locked once), else provisioned before Concord watched (or by hand),
            # with no run of Concord's: opening one would make a second project.
            found = run_lock_by_subject(process=PROCESS, subject_key=key)
            if found is None:
                return None
        opportunity = _opportunity(connection, external_id, fields)
        run, created = (
            (found, False)
            if found is not None
            else run_open(
                process=PROVISIONING,
                subject_key=key,
                label=str(fields.get("name") or f"Opportunity {external_id}"),
                input=opportunity,
                region=str(fields.get("region") or ""),
            )
        )
        if run.state == RunState.DONE:
            return run
        if created or run.current_step == VALIDATE:
            # The commercial data as it is now, until validation has accepted it.
            run.input = opportunity
            run.context["account"] = str(fields.get("customer__external_id") or "")
        return _advance(run)


def _opportunity(
    connection: Connection, external_id: str, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """A run's input: the opportunity's mapped fields, and where it came from."""
    return {
        **{name: _plain(value) for name, value in fields.items()},
        "connection_id": connection.pk,
        "external_id": external_id,
    }


def _advance(run: WorkflowRun, steps: dict[str, WorkflowStep] | None = None) -> WorkflowRun:
    """`run_advance` with this process's steps (a run opened before a step was added to the
    process, the PSA's tasks and milestones, is given the steps it lacks there). The steps of
    one advance share what they look up (``_memo``)."""
    token = _memo.set({})
    try:
        return run_advance(run=run, process=PROVISIONING, steps=steps)
    finally:
        _memo.reset(token)


# What the steps of one advance look up again and again, looked up once: the run's pinned
# connections, its project and the cross-references found (one that exists stays, within the
# run's locked transaction). A run advances once per delivery, and the steps that run then each
# asked for these again. With the waiting check and the replay look-up below: 148 -> 114
# queries on the workflow's tables for one run, delivery to done (measured by
# tests/workflows/test_provisioning_cost.py).
_memo: ContextVar[dict[tuple[Any, ...], Any] | None] = ContextVar("provisioning_memo", default=None)
_T = TypeVar("_T")


def _memoized(key: tuple[Any, ...], load: Callable[[], _T]) -> _T:
    memo = _memo.get()
    if memo is None:
        return load()
    if key not in memo:
        memo[key] = load()
    value: _T = memo[key]
    return value


def subject_key(*, connection: Connection, external_id: str) -> str:
    return f"opportunity:{connection.pk}:{external_id}"


def provisioning_arrival(arrival: Arrival) -> None:
    """After inbound processing (integrations/sync/steps.py): an opportunity starts or resumes
    its run; a CRM account or contract applied resumes the runs of its customer that wait at
    validation (one indexed query when none does, the usual state)."""
    if arrival.canonical_model == "opportunity":
        provisioning_start(
            connection=arrival.connection, external_id=arrival.external_id, fields=arrival.fields
        )
        return
    if arrival.record_id is None or arrival.connection.role != SystemRole.CRM:
        return
    waiting = _at_validation()
    if not waiting.exists():
        return
    if arrival.canonical_model == "contract":
        customer_id = Contract.objects.filter(pk=arrival.record_id).values("customer_id")
        customer = Customer.objects.filter(pk__in=customer_id).first()
    else:
        customer = Customer.objects.filter(pk=arrival.record_id).first()
    if customer is None:
        return
    accounts = _crm_ids(customer)
    ids = list(
        waiting.filter(Q(context__customer_id=customer.pk) | Q(context__account__in=accounts))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    provisioning_resume(run_ids=ids)


def provisioning_arrivals(arrivals: Sequence[Arrival]) -> None:
    """`provisioning_arrival` for a batch of webhooks (integrations/sync/steps.py
    `on_arrivals`). Opportunities won that have no run yet (the usual delivery) are opened
    together and moved on with what their steps look up read once for all of them, in one
    transaction (`_start_together`); every other one, and every account or contract, goes one
    by one, as before. An opportunity delivered twice in the batch opens one run, from its
    newest state."""
    if all(a.canonical_model != "opportunity" for a in arrivals) and not _at_validation().exists():
        return  # accounts or contracts, and no run waits for one: one query for the batch
    by_key: dict[str, list[Arrival]] = {}
    for arrival in arrivals:
        key = (
            subject_key(connection=arrival.connection, external_id=arrival.external_id)
            if arrival.canonical_model == "opportunity"
            else f"{arrival.canonical_model}:{arrival.external_id}"
        )
        by_key.setdefault(key, []).append(arrival)
    together = {key: group[-1] for key, group in by_key.items() if all(_opens(a) for a in group)}
    if len(together) > 1:
        left = _start_together(together)
    else:
        left, together = set(), {}
    for key, group in by_key.items():
        if key in together and key not in left:
            continue
        for arrival in group:
            provisioning_arrival(arrival)


def _at_validation() -> models.QuerySet[WorkflowRun]:
    """The runs that wait at validation (for an account or contract to arrive)."""
    return WorkflowRun.objects.filter(
        process=PROCESS, state=RunState.BLOCKED, current_step=VALIDATE
    )


def _opens(arrival: Arrival) -> bool:
    """A won opportunity that names no PSA project: a run is opened for it, or moved on."""
    return (
        arrival.canonical_model == "opportunity"
        and arrival.fields.get("is_won") is True
        and not arrival.fields.get("psa_project_id")
    )


def _start_together(arrivals: Mapping[str, Arrival]) -> set[str]:
    """Open the runs of these won opportunities (subject key -> arrival) that have none, and
    move them on, in one transaction: their steps' look-ups (accounts, contracts, legal
    entities, cross-references, cases holding them) read once for all (``_shared``), their
    outbox rows stored together. Returns the keys that have a run already (left to
    `provisioning_start`, one by one)."""
    with transaction.atomic():
        have = set(
            WorkflowRun.objects.filter(process=PROCESS, subject_key__in=list(arrivals)).values_list(
                "subject_key", flat=True
            )
        )
        openings = []
        for key, arrival in arrivals.items():
            if key in have:
                continue
            opportunity = _opportunity(arrival.connection, arrival.external_id, arrival.fields)
            openings.append(
                Opening(
                    subject_key=key,
                    label=str(arrival.fields.get("name") or f"Opportunity {arrival.external_id}"),
                    input=opportunity,
                    region=str(arrival.fields.get("region") or ""),
                )
            )
        opened = runs_open(process=PROVISIONING, openings=openings)
        for run, _ in opened:
            run.context["account"] = str(run.input.get("customer__external_id") or "")
        with (
            _shared.sharing(_look_up_together([run for run, _ in opened])),
            outbox_enqueue_together(),
            runs_saved_together(),
        ):
            for run, steps in opened:
                _advance(run, steps)
    return have


def _look_up_together(runs: Sequence[WorkflowRun]) -> dict[tuple[Any, ...], Any]:
    """What validation and the ERP customer step look up for these new runs, read at once:
    each account's customer by its CRM id, the customers' live contracts, the legal entities
    named by code, the customers' cross-references (ERP and PSA), and whether a render case of
    the step is open. New runs: no case holds any of them yet."""
    shared: dict[tuple[Any, ...], Any] = {}
    customer_type = ContentType.objects.get_for_model(Customer)
    wanted = {
        (int(run.input["connection_id"]), str(run.input.get("customer__external_id") or ""))
        for run in runs
    }
    accounts: dict[tuple[int, str], int] = {}
    for connection_id in {c for c, _ in wanted}:
        for external_id, object_id in CrossReference.objects.filter(
            connection_id=connection_id,
            content_type=customer_type,
            external_id__in=[a for c, a in wanted if c == connection_id and a],
        ).values_list("external_id", "object_id"):
            accounts[(connection_id, external_id)] = object_id
    customers = Customer.objects.in_bulk(set(accounts.values()))
    for connection_id, account in wanted:
        customer_id = accounts.get((connection_id, account))
        shared[("account", connection_id, account)] = (
            customers.get(customer_id) if customer_id is not None else None
        )
    for customer in customers.values():
        shared[("customer", customer.pk)] = customer
        shared[("contracts", customer.pk)] = []
        shared[("xrefs", customer._meta.label_lower, customer.pk)] = True
    for contract in _live_contracts().filter(customer_id__in=list(customers)):
        shared[("contracts", contract.customer_id)].append(contract)
    codes = {str(run.input.get("legal_entity__code") or "") for run in runs} - {""}
    for code in codes:
        shared[("entity", code)] = None
    for entity in LegalEntity.objects.filter(code__in=codes):
        shared[("entity", entity.code)] = entity
    for customer_id, connection_id, external_id in CrossReference.objects.filter(
        content_type=customer_type, object_id__in=list(customers)
    ).values_list("object_id", "connection_id", "external_id"):
        shared[("xref", "integrations.customer", customer_id, connection_id)] = external_id
    for run in runs:
        shared[("held", run.pk)] = False
    shared[("render_case", ERP_CUSTOMER)] = _render_case_open(ERP_CUSTOMER)
    # The ERP customer rows sent for these customers before (another opportunity's run).
    sent: dict[str, OutboxMessage | None] = {
        idempotency_key(process=PROCESS, step=ERP_CUSTOMER, record=customer, version=1): None
        for customer in customers.values()
    }
    for row in OutboxMessage.objects.filter(idempotency_key__in=list(sent)):
        sent[row.idempotency_key] = row
    for idempotency, found in sent.items():
        shared[("outbox", idempotency)] = found
    return shared


# What a batch of new runs looked up for all of them at once (`_look_up_together`), in its
# transaction; outside a batch each step looks up for itself.
_shared = LookedUpTogether("provisioning_shared")


def provisioning_resume(*, run_ids: Sequence[int]) -> int:
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


# --- Step 1: validation -------------------------------------------------------------------------


@dataclass
class _Problem:
    case_type: str
    subject: dict[str, Any]
    why: str  # the step's detail


def _validate(run: WorkflowRun) -> StepResult:
    opportunity = run.input
    crm_id = int(opportunity["connection_id"])
    label = _opportunity_label(run)
    problems: list[_Problem] = []
    customer = _customer_by_crm_id(crm_id, str(opportunity.get("customer__external_id") or ""))
    contract: Contract | None = None
    entity: LegalEntity | None = None
    if customer is None:
        account = str(opportunity.get("customer__external_id") or "(none)")
        problems.append(
            _Problem(
                "provisioning_account_unknown",
                {"account": account, "opportunity": label},
                f"account {account} is not known to Concord",
            )
        )
    else:
        currency = str(opportunity.get("currency") or "")
        contract, why = _contract_of(customer, currency)
        if contract is None:
            problems.append(
                _Problem(
                    "provisioning_contract_missing",
                    {
                        "customer_id": customer.pk,
                        "currency": currency,
                        "why": why,
                        "opportunity": label,
                    },
                    why,
                )
            )
        entity, why = _entity_of(opportunity, customer, contract)
        if entity is None:
            problems.append(
                _Problem(
                    "provisioning_legal_entity_missing",
                    {"customer_id": customer.pk, "why": why, "opportunity": label},
                    why,
                )
            )
        if contract is not None:
            problems += _terms_problems(contract, customer, label)
        if entity is not None:
            for role in (SystemRole.ERP, SystemRole.PSA):
                if routing_connection(role=role, legal_entity_id=entity.pk) is None:
                    problems.append(
                        _Problem(
                            "provisioning_no_route",
                            {
                                "legal_entity_id": entity.pk,
                                "legal_entity": entity.code,
                                "system": role.label,
                                "opportunity": label,
                            },
                            f"no {role.label} connection serves legal entity {entity.code}",
                        )
                    )
    held = _run_blocked(run)
    cases = [
        case_open_or_join(
            case_type=p.case_type,
            subject=p.subject,
            records=[held],
            process=PROCESS,
            step=VALIDATE,
            legal_entity_id=entity.pk if entity is not None else None,
            region=run.region,
        )
        for p in problems
    ]
    # The run leaves the cases whose cause is fixed; a case holding nothing more closes. (A run
    # no case holds, the usual one, costs one indexed look-up.)
    fixed = [t for t in VALIDATION_CASE_TYPES if t not in {p.case_type for p in problems}]
    if _shared.get(
        ("held", run.pk),
        BlockedRecord.objects.filter(record_type=RUN_RECORD, record_id=run.pk).exists,
    ):
        case_records_clear(
            records=[(RUN_RECORD, run.pk)],
            process=PROCESS,
            case_types=fixed,
            note="Closed automatically: the opportunities it held passed this check.",
        )
    if problems:
        return StepResult.blocked(cases[0], "; ".join(p.why for p in problems))
    assert customer is not None  # noqa: S101 - no problem means each was found
    assert contract is not None  # noqa: S101
    assert entity is not None  # noqa: S101
    run.context.update(customer_id=customer.pk, contract_id=contract.pk, legal_entity_id=entity.pk)
    run.legal_entity = entity
    return StepResult.done(
        f"Account {customer.name}, contract {contract.number} "
        f"({contract.get_billing_model_display()}), legal entity {entity.code}."
    )


def _terms_problems(contract: Contract, customer: Customer, label: str) -> list[_Problem]:
    problems: list[_Problem] = []
    missing = []
    if contract.status != Contract.Status.ACTIVE:
        missing.append(f"it is not activated (status {contract.get_status_display().lower()})")
    if not contract.billing_model:
        missing.append("no billing model")
    if not contract.total_value or contract.total_value <= 0:
        missing.append("no budget")
    if not contract.payment_terms_days:
        missing.append("no payment terms")
    if contract.start_date is None:
        missing.append("no start date")
    if missing:
        text = ", ".join(missing)
        problems.append(
            _Problem(
                "provisioning_billing_terms_missing",
                {
                    "contract_id": contract.pk,
                    "contract": contract.number,
                    "missing": text,
                    "opportunity": label,
                },
                f"contract {contract.number}: {text}",
            )
        )
    tax = contract.tax_rate
    if tax is not None and not tax.active:
        problems.append(
            _Problem(
                "provisioning_tax_profile_inactive",
                {
                    "contract_id": contract.pk,
                    "contract": contract.number,
                    "tax_rate": tax.code,
                    "opportunity": label,
                },
                f"tax profile {tax.code} is not active",
            )
        )
    elif tax is not None and tax.requires_customer_tax_number and not customer.tax_number:
        problems.append(
            _Problem(
                "provisioning_tax_number_missing",
                {
                    "customer_id": customer.pk,
                    "customer": customer.name,
                    # The contract names the case's customer and legal entity (its scope).
                    "contract_id": contract.pk,
                    "contract": contract.number,
                    "tax_rate": tax.code,
                    "opportunity": label,
                },
                f"customer {customer.name} has no tax number for tax profile {tax.code}",
            )
        )
    return problems


def _customer_by_crm_id(connection_id: int, account: str) -> Customer | None:
    if not account:
        return None

    def load() -> Customer | None:
        xref = CrossReference.objects.filter(
            connection_id=connection_id,
            content_type=ContentType.objects.get_for_model(Customer),
            external_id=account,
        ).first()
        return Customer.objects.filter(pk=xref.object_id).first() if xref is not None else None

    return _shared.get(("account", connection_id, account), load)


def _crm_ids(customer: Customer) -> list[str]:
    return list(
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(Customer),
            object_id=customer.pk,
            connection__role=SystemRole.CRM,
        ).values_list("external_id", flat=True)
    )


def _contract_of(customer: Customer, currency: str) -> tuple[Contract | None, str]:
    """The customer's one live contract in the opportunity's currency (an activated one before
    drafts), or None and why, in words."""
    live: list[Contract] = _shared.get(
        ("contracts", customer.pk), lambda: list(_live_contracts().filter(customer=customer))
    )
    same = [c for c in live if not currency or c.currency == currency]
    if not same:
        if live:
            numbers = ", ".join(c.number for c in live)
            return None, f"customer {customer.name} has no contract in {currency} (only {numbers})"
        return None, f"customer {customer.name} has no contract in Concord"
    active = [c for c in same if c.status == Contract.Status.ACTIVE]
    candidates = active or same
    if len(candidates) == 1:
        return candidates[0], ""
    numbers = ", ".join(c.number for c in candidates)
    return None, (
        f"customer {customer.name} has {len(candidates)} live contracts in {currency} "
        f"({numbers}) and the opportunity names none of them"
    )


def _live_contracts() -> models.QuerySet[Contract]:
    return (
        Contract.objects.exclude(status=Contract.Status.ENDED)
        .select_related("tax_rate")
        .order_by("number")
    )


def _entity_of(
    opportunity: Mapping[str, Any], customer: Customer, contract: Contract | None
) -> tuple[LegalEntity | None, str]:
    code = str(opportunity.get("legal_entity__code") or "")
    if code:
        entity = _shared.get(("entity", code), LegalEntity.objects.filter(code=code).first)
        if entity is None:
            return None, f"the opportunity names legal entity {code}, which Concord does not know"
        return entity, ""
    entity_id = (contract.legal_entity_id if contract is not None else None) or (
        customer.legal_entity_id
    )
    if entity_id is None:
        return None, f"neither the opportunity nor its account {customer.name} names a legal entity"
    return LegalEntity.objects.get(pk=entity_id), ""


# --- Steps 2 and 3: the customer in the ERP and in the PSA --------------------------------------


def _erp_customer(run: WorkflowRun) -> StepResult:
    return _customer_in(run, SystemRole.ERP, ERP_CUSTOMER, Queue.FINANCE)


def _psa_client(run: WorkflowRun) -> StepResult:
    return _customer_in(run, SystemRole.PSA, PSA_CLIENT, Queue.PMO)


def _customer_in(run: WorkflowRun, role: SystemRole, step: str, queue: str) -> StepResult:
    customer_id = run.context["customer_id"]
    customer = _shared.get(("customer", customer_id), lambda: Customer.objects.get(pk=customer_id))
    connection = _route(run, role)
    found = _xref(customer, connection)
    if found is not None:
        sent = _sent(connection, step, customer, 1)
        words = f"{customer.name} is in {_system(connection)} ({found})"
        if sent is not None and sent.state in DONE_STATES:
            return StepResult.done(f"Created {words}.", **{role: {"customer": found}})
        return StepResult.skipped(f"Already there: {words}.", **{role: {"customer": found}})
    canonical: dict[str, Any] = {
        "name": customer.name,
        "currency": customer.currency,
        "active": True,
    }
    if role == SystemRole.ERP:
        canonical.update(tax_number=customer.tax_number, billing_email=customer.billing_email)
    item = OutboundItem(
        connection=connection,
        record=customer,
        canonical=canonical,
        context=_context(run, what="customer", label=f"Customer {customer.name}", queue=queue),
    )
    return _send(run, step, [item], canonical_model="customer", action="create")


# --- Step 4: the project, in Concord and in the PSA ---------------------------------------------


def _psa_project(run: WorkflowRun) -> StepResult:
    psa = _route(run, SystemRole.PSA)
    project = _project(run)
    found = _xref(project, psa)
    if found is not None:
        return StepResult.done(
            f"Project {project.code} is in {_system(psa)} ({found}).", psa={"project": found}
        )
    customer = project.customer
    client = _xref(customer, psa)
    if client is None:  # the client step saw it there; only a deleted cross-reference gets here
        raise LookupError(f"{customer} has no client in {psa}")
    contract = project.contract
    canonical: dict[str, Any] = {
        "code": project.code,
        "name": project.name,
        "status": project.status,
        "budget": project.budget,
        "start_date": project.start_date,
        "end_date": project.end_date,
        "customer__external_id": client,
        "billing_model": contract.billing_model if contract is not None else "",
        "notes": _notes(run, project),
    }
    item = OutboundItem(
        connection=psa,
        record=project,
        canonical=canonical,
        context=_context(run, what="project", label=f"Project {project.code}", queue=Queue.PMO),
    )
    return _send(run, PSA_PROJECT, [item], canonical_model="project", action="create")


def _project(run: WorkflowRun) -> Project:
    """The run's project in Concord, made the first time: linked to its contract and legal
    entity from the start (the project link of sync/project_links.py, made by provisioning),
    through the one write path, audited as Concord's."""
    project_id = run.context.get("project_id")
    if project_id is not None:
        return _memoized(
            ("project", project_id),
            lambda: Project.objects.select_related("customer", "contract", "legal_entity").get(
                pk=project_id
            ),
        )
    contract = Contract.objects.get(pk=run.context["contract_id"])
    entity = LegalEntity.objects.get(pk=run.context["legal_entity_id"])
    opportunity = run.input
    region = run.region if run.region in Project.Region.values else ""
    project = record_create(
        model=Project,
        data={
            "code": project_code(run, entity),
            "name": str(opportunity.get("name") or contract.number)[:200],
            "customer": contract.customer_id,
            "contract": contract.pk,
            "legal_entity": entity.pk,
            "region": region,
            "currency": contract.currency,
            "budget": contract.total_value,
            "status": Project.Status.ACTIVE,
            "start_date": contract.start_date,
            "end_date": contract.end_date,
        },
        actor=None,
    )
    run.context["project_id"] = project.pk
    run_subject_set(run=run, record=project)
    return Project.objects.select_related("customer", "contract", "legal_entity").get(pk=project.pk)


def project_code(run: WorkflowRun, entity: LegalEntity) -> str:
    """``PUK-00042``: the entity's country and the run's number (unique in Concord; the PSA
    keeps codes unique within a client)."""
    return f"P{entity.code[:2].upper()}-{run.pk:05d}"


# --- Steps 5 and 6: the project's tasks and milestones in the PSA -------------------------------


def _psa_tasks(run: WorkflowRun) -> StepResult:
    """The firm's standard tasks assigned to the project in the PSA: the tasks the PSA itself
    marks as added to every new project (Harvest's default tasks, kept where the PSA owns
    them), billable as the PSA says. One row for the project, which the PSA's connector carries
    out task by task, posting only the assignments the project does not have yet."""
    psa = _route(run, SystemRole.PSA)
    project = _project(run)
    item = OutboundItem(
        connection=psa,
        record=project,
        canonical={"project__external_id": _psa_id(project, psa), "active": True},
        context=_context(
            run,
            what="project's tasks",
            label=f"Standard tasks of project {project.code}",
            queue=Queue.PMO,
        ),
    )
    return _send(run, PSA_TASKS, [item], canonical_model="project_tasks", action="create")


def _psa_milestones(run: WorkflowRun) -> StepResult:
    """A fixed-fee contract's milestones: made in Concord once (planned, in the contract's
    currency, their amounts adding up to its value), then created in the PSA under the project;
    a contract billed by the hour has none."""
    project = _project(run)
    contract = project.contract
    if contract is None or contract.billing_model != Contract.BillingModel.FIXED_FEE:
        return StepResult.skipped("Billed by the hour: the contract has no milestones.")
    milestones = _milestones(run, project, contract)
    if not milestones:
        return StepResult.skipped(f"No milestone plan is configured ({MILESTONE_PLAN}).")
    psa = _route(run, SystemRole.PSA)
    psa_id = _psa_id(project, psa)
    items = []
    for milestone in milestones:
        context = _context(
            run,
            what="milestone",
            label=f"Milestone {milestone.name} of project {project.code}",
            queue=Queue.PMO,
        )
        context["amount"] = str(milestone.amount)
        items.append(
            OutboundItem(
                connection=psa,
                record=milestone,
                canonical={
                    "name": milestone.name,
                    "amount": milestone.amount,
                    "currency": milestone.currency,
                    "due_date": milestone.due_date,
                    "status": milestone.status,
                    "project__external_id": psa_id,
                },
                context=context,
            )
        )
    return _send(run, PSA_MILESTONES, items, canonical_model="milestone", action="create")


def _milestones(run: WorkflowRun, project: Project, contract: Contract) -> list[Milestone]:
    """The project's milestones from its contract, made the first time (their ids kept on the
    run, so a retry never makes them twice), through the one write path."""
    made = run.context.get("milestone_ids")
    if made is not None:
        return list(Milestone.objects.filter(pk__in=made).order_by("due_date", "pk"))
    milestones = [
        record_create(
            model=Milestone,
            data={
                "project": project.pk,
                "name": name,
                "amount": amount,
                "currency": contract.currency,
                "due_date": due,
                "status": Milestone.Status.PLANNED,
            },
            actor=None,
        )
        for name, amount, due in milestone_plan(contract)
    ]
    run.context["milestone_ids"] = [m.pk for m in milestones]
    return milestones


def milestone_plan(contract: Contract) -> list[tuple[str, Decimal, date | None]]:
    """(name, amount, due date) per milestone of the plan (value map ``provisioning_milestone
    _plan``: name -> "<share %>/<due at % of the term>"), in due order: the contract's value
    split by the shares (scaled to add up to 100; the last takes the cents' remainder), due
    across the contract's term (start to end; no end: DEFAULT_TERM_DAYS). Entries that are not
    two numbers are left out."""
    table = value_map_tables([MILESTONE_PLAN]).get(MILESTONE_PLAN)
    rows: list[tuple[Decimal, str, Decimal]] = []
    for name, value in (table.entries if table is not None else {}).items():
        share, _, at = str(value).partition("/")
        try:
            rows.append((Decimal(at.strip() or "100"), name, Decimal(share.strip())))
        except InvalidOperation:
            logger.warning(
                "milestone plan entry %s = %r is not <share>/<at>: left out", name, value
            )
    rows = [r for r in rows if r[2] > 0]
    total = sum((r[2] for r in rows), Decimal("0"))
    if not rows or total <= 0:
        return []
    rows.sort()
    start = contract.start_date
    end = contract.end_date or (start + timedelta(days=DEFAULT_TERM_DAYS) if start else None)
    days = (end - start).days if start and end else 0
    plan: list[tuple[str, Decimal, date | None]] = []
    budget = left = Decimal(contract.total_value)
    for n, (due_at, title, part) in enumerate(rows):
        last = n == len(rows) - 1
        amount = left if last else (budget * part / total).quantize(CENT)
        left -= amount
        term = due_at if due_at < 100 else Decimal(100)
        due = start + timedelta(days=round(days * term / 100)) if start else None
        plan.append((title[:200], amount, due))
    return plan


# --- Step 7: the delivery lead and team on the project in the PSA ------------------------------


def _psa_team(run: WorkflowRun) -> StepResult:
    """The people the opportunity names as its delivery lead and team (their emails), staffed
    on the project: an Assignment in Concord each (made once), and a user assignment in the
    PSA (the lead as its project manager). A person Concord does not hold as a PSA user (the
    PSA's users are polled) is named in the step's detail and left to PMO to staff by hand: it
    does not hold the project up."""
    lead, team = _people(run)
    if not lead and not team:
        return StepResult.skipped("The opportunity names no delivery lead or team.")
    psa = _route(run, SystemRole.PSA)
    project = _project(run)
    psa_id = _psa_id(project, psa)
    resource_type = ContentType.objects.get_for_model(Resource)
    users = dict(
        CrossReference.objects.filter(
            connection=psa, content_type=resource_type, object_id__in=_resources(lead, team)
        ).values_list("object_id", "external_id")
    )
    known = {r.email.casefold(): r for r in Resource.objects.filter(pk__in=users).order_by("pk")}
    items: list[OutboundItem] = []
    unknown: list[str] = []
    for email in [*([lead] if lead else []), *team]:
        resource = known.get(email)
        if resource is None:
            unknown.append(email)
            continue
        is_lead = email == lead
        assignment = _assignment(project, resource, is_lead=is_lead)
        context = _context(
            run,
            what="assignment",
            label=f"{resource.name} on project {project.code}",
            queue=Queue.PMO,
        )
        items.append(
            OutboundItem(
                connection=psa,
                record=assignment,
                canonical={
                    "project__external_id": psa_id,
                    "resource__external_id": users[resource.pk],
                    "project_manager": is_lead,
                    "active": True,
                },
                context=context,
            )
        )
    missing = (
        f" Not PSA users Concord knows, for PMO to staff: {', '.join(unknown)}." if unknown else ""
    )
    if not items:
        return StepResult.skipped(f"No one to staff.{missing}")
    result = _send(run, PSA_TEAM, items, canonical_model="psa_user_assignment", action="create")
    result.detail = f"{result.detail}{missing}"
    return result


def _people(run: WorkflowRun) -> tuple[str, list[str]]:
    """The delivery lead's email and the team's (without the lead), as the opportunity names
    them, folded to lower case."""
    lead = str(run.input.get("delivery_lead") or "").strip().casefold()
    raw = str(run.input.get("delivery_team") or "").replace(",", ";")
    team = [e.strip().casefold() for e in raw.split(";") if e.strip()]
    return lead, [e for e in dict.fromkeys(team) if e != lead]


def _resources(lead: str, team: list[str]) -> list[int]:
    """The Resources with these emails (as people type them: any case)."""
    query = Q(pk__in=[])
    for email in (lead, *team):
        if email:
            query |= Q(email__iexact=email)
    return list(Resource.objects.filter(query).values_list("pk", flat=True))


def _assignment(project: Project, resource: Resource, *, is_lead: bool) -> Assignment:
    """The person's Assignment on the project, made the first time through the one write
    path; its role is theirs in the PSA, else what the opportunity made them."""
    found = Assignment.objects.filter(project=project, resource=resource).first()
    if found is not None:
        return found
    return record_create(
        model=Assignment,
        data={
            "project": project.pk,
            "resource": resource.pk,
            "role": (resource.role or ("Delivery lead" if is_lead else "Delivery team"))[:64],
            "active": True,
        },
        actor=None,
    )


def _psa_id(project: Project, psa: Connection) -> str:
    psa_id = _xref(project, psa)
    if psa_id is None:  # the project step saw it there; only a deleted cross-reference gets here
        raise LookupError(f"project {project} has no cross-reference in {psa}")
    return psa_id


# --- Step 8: the project's dimension in the ERP -------------------------------------------------


def _erp_dimension(run: WorkflowRun) -> StepResult:
    erp = _route(run, SystemRole.ERP)
    project = _project(run)
    found = _xref(project, erp)
    if found is not None:
        return StepResult.done(
            f"Project {project.code} is a dimension in {_system(erp)} ({found}).",
            erp={"project": found},
        )
    item = OutboundItem(
        connection=erp,
        record=project,
        canonical={"name": project.code},
        context=_context(
            run, what="project", label=f"Project {project.code}", queue=Queue.INTEGRATION_ADMIN
        ),
    )
    return _send(run, ERP_DIMENSION, [item], canonical_model="project_dimension", action="create")


# --- Step 9: the ids written back ---------------------------------------------------------------


def _write_back(run: WorkflowRun) -> StepResult:
    project = _project(run)
    psa, erp = _route(run, SystemRole.PSA), _route(run, SystemRole.ERP)
    psa_id, erp_id = _xref(project, psa), _xref(project, erp)
    customer_erp_id = _xref(project.customer, erp)
    if psa_id is None or erp_id is None:
        raise LookupError(f"project {project} lost its PSA or ERP cross-reference")
    crm = Connection.objects.get(pk=run.input["connection_id"])
    ids = {"psa_project_id": psa_id, "erp_project_id": erp_id}
    writes: list[tuple[models.Model, Connection, str, str, dict[str, Any]]] = [
        (run, crm, "opportunity", str(run.input["external_id"]), ids)
    ]
    contract = project.contract
    contract_id = _xref(contract, crm) if contract is not None else None
    if contract is not None and contract_id is not None:
        writes.append((contract, crm, "contract", contract_id, ids))
    notes = _notes(run, project, erp_project=erp_id, erp_customer=customer_erp_id)
    writes.append((project, psa, "project", psa_id, {"notes": notes}))

    messages: list[OutboxMessage] = []
    refused: list[tuple[Connection, str]] = []
    for record, connection, model_name, external_id, values in writes:
        update = _update_message(run, connection, record, model_name, external_id, values)
        if update.message is None:
            refused.append((connection, update.reason))
        else:
            messages.append(update.message)
    if refused:
        # Nothing is sent until every write renders: the step's rows go together.
        reason = "; ".join(words for _, words in refused)
        return StepResult.blocked(_render_case(run, refused[0][0], reason), reason)
    return _await(run, WRITE_BACK, messages, what="the ids written back")


def _update_message(
    run: WorkflowRun,
    connection: Connection,
    record: models.Model,
    model_name: str,
    external_id: str,
    values: dict[str, Any],
) -> PartialUpdate:
    """The outbox row updating `values` on the connection's copy of a record, rendered by its
    published mapping (only the fields sent: an update of two ids), with the record's id where
    the mapping reads it; or why it cannot be rendered."""
    return partial_update_message(
        connection=connection,
        canonical_model=model_name,
        external_id=external_id,
        values=values,
        process=PROCESS,
        step=WRITE_BACK,
        record=record,
        version=1,
        context=_context(
            run,
            what=model_name,
            label=f"Project ids on {model_name} {external_id}",
            queue=Queue.INTEGRATION_ADMIN,
        ),
    )


def _render_case(run: WorkflowRun, connection: Connection, reason: str) -> ExceptionCase:
    return case_open_or_join(
        case_type=RENDER_CASE,
        subject={
            "connection_id": connection.pk,
            "connection": connection.name,
            "object_type": "write-back",
            "reason": reason,
            "noun": "closed-won opportunity",
        },
        records=[_run_blocked(run)],
        process=PROCESS,
        step=WRITE_BACK,
        connection_id=connection.pk,
    )


# --- Sending and waiting ------------------------------------------------------------------------


def _send(
    run: WorkflowRun,
    step: str,
    items: Sequence[OutboundItem],
    *,
    canonical_model: str,
    action: str,
) -> StepResult:
    """Render the items by their connection's published mapping (sync/outbound.py) and wait
    for their delivery; an item its mapping cannot render holds the run on the integration
    admins' case it went on."""
    messages = outbound_messages(
        items=items,
        canonical_model=canonical_model,
        action=action,
        process=PROCESS,
        step=step,
        version=1,
        # Rendered now after an earlier refusal: it takes itself off the mapping's case (looked
        # for only while such a case is open: one indexed look-up in the usual state).
        retried=_shared.get(("render_case", step), lambda: _render_case_open(step)),
    )
    if len(messages) < len(items):
        rendered = {m.object_id for m in messages}
        missed = next(i for i in items if i.record.pk not in rendered)
        case = (
            ExceptionCase.objects.filter(
                status=OPEN,
                case_type=RENDER_CASE,
                process=PROCESS,
                step=step,
                blocked_records__record_type=missed.record._meta.model_name,
                blocked_records__record_id=missed.record.pk,
            )
            .order_by("-pk")
            .first()
        )
        if case is not None:
            reason = str(case.subject.get("reason", ""))
            return StepResult.blocked(
                case,
                f"{missed.context['label']} cannot be rendered for "
                f"{_system(missed.connection)}: {reason}",
            )
    return _await(run, step, messages, what=", ".join(i.context["label"] for i in items))


def _render_case_open(step: str) -> bool:
    return ExceptionCase.objects.filter(
        status=OPEN, case_type=RENDER_CASE, process=PROCESS, step=step
    ).exists()


def _await(
    run: WorkflowRun, step: str, messages: Sequence[OutboxMessage], *, what: str
) -> StepResult:
    """Queue the rows not queued yet and say where they stand: all delivered (DONE), one
    parked (BLOCKED by its case), else WAITING for the dispatcher."""
    keys = [m.idempotency_key for m in messages]
    shared = _shared.current
    if shared is not None and all(("outbox", key) in shared for key in keys):
        # The batch read these rows (those that were there: None for the others).
        existing = {key: shared[("outbox", key)] for key in keys if shared[("outbox", key)]}
    else:
        existing = {
            m.idempotency_key: m for m in OutboxMessage.objects.filter(idempotency_key__in=keys)
        }
    outbox_enqueue(messages=[m for m in messages if m.idempotency_key not in existing])
    states = [
        _latest(existing[m.idempotency_key]) if m.idempotency_key in existing else None
        for m in messages
    ]
    if messages and all(s is not None and s.state in DONE_STATES for s in states):
        return StepResult.done(f"Delivered: {what}.")
    parked = next((s for s in states if s is not None and s.state == "parked"), None)
    if parked is not None and parked.exception_case_id is not None:
        case = ExceptionCase.objects.get(pk=parked.exception_case_id)
        if case.status == OPEN:
            return StepResult.blocked(
                case, f"Refused by {_system(parked.connection)}: {parked.last_error[:300]}"
            )
    detail = f"Sent through the outbox: {what}."
    run.context[AWAITING] = {
        "step": step,
        "keys": [m.idempotency_key for m in messages],
        "detail": detail,
    }
    return StepResult.waiting(detail)


# The rows the waiting step sent, kept on the run: each of them delivered advances the run
# (a write-back's three rows, a fixed fee's four milestones: one advance each), and while some
# are still on their way the step need not be worked out again (its look-ups and rendering, 20
# or so queries) to learn that it still waits: one query on the rows' keys says so.
AWAITING = "awaiting"
_ON_THE_WAY = (OutboxMessage.State.PENDING, OutboxMessage.State.IN_FLIGHT)


def _still_waiting(run: WorkflowRun, step: str) -> StepResult | None:
    """WAITING when the rows this step sent are all there, none parked or replayed, and some
    still on their way; None when the step must be worked out (its first time, all delivered,
    one refused)."""
    awaiting = run.context.get(AWAITING)
    if not isinstance(awaiting, dict) or awaiting.get("step") != step:
        return None
    keys = list(awaiting.get("keys") or [])
    states = list(
        OutboxMessage.objects.filter(idempotency_key__in=keys).values_list("state", flat=True)
    )
    if (
        len(states) == len(keys)
        and any(state in _ON_THE_WAY for state in states)
        and all(state in (*_ON_THE_WAY, *DONE_STATES) for state in states)
    ):
        return StepResult.waiting(str(awaiting.get("detail") or ""))
    return None


def _unless_waiting(step: str, fn: StepFn) -> StepFn:
    """The step, unless it still waits for the rows it sent (``_still_waiting``)."""

    def run_step(run: WorkflowRun) -> StepResult:
        return _still_waiting(run, step) or fn(run)

    return run_step


# Only a parked row is replayed, and replaying it marks it skipped (sync/outbox.py
# outbox_replay): a row in any other state has no replay to look for.
_REPLAYED_STATES = (OutboxMessage.State.PARKED, OutboxMessage.State.SKIPPED)


def _latest(message: OutboxMessage) -> OutboxMessage:
    """The row as it stands now: a parked row's newest replay, when it has one."""
    if message.state not in _REPLAYED_STATES:
        return message
    replay = OutboxMessage.objects.filter(replay_of=message).order_by("-pk").first()
    return _latest(replay) if replay is not None else message


def _sent(
    connection: Connection, step: str, record: models.Model, version: int
) -> OutboxMessage | None:
    key = idempotency_key(process=PROCESS, step=step, record=record, version=version)
    row = OutboxMessage.objects.filter(idempotency_key=key, connection=connection).first()
    return _latest(row) if row is not None else None


# --- After delivery -----------------------------------------------------------------------------


def provisioning_delivered(messages: Sequence[OutboxMessage]) -> None:
    """Rows of a provisioning step were delivered (in the outbox's transaction): the runs that
    sent them, and those waiting at the same step for the same record (two opportunities of one
    customer share its ERP customer), move on."""
    run_ids = {int(m.context["run_id"]) for m in messages if m.context.get("run_id")}
    customers = [
        m.object_id
        for m in messages
        if m.step in (ERP_CUSTOMER, PSA_CLIENT) and m.content_type.model == "customer"
    ]
    if customers:
        run_ids |= set(
            WorkflowRun.objects.filter(
                process=PROCESS,
                state=RunState.RUNNING,
                current_step__in=[ERP_CUSTOMER, PSA_CLIENT],
                context__customer_id__in=customers,
            ).values_list("pk", flat=True)
        )
    for run_id in sorted(run_ids):
        try:
            # A savepoint: a run that cannot move on (a route removed since) must not undo
            # the outbox's record of the delivery; it stays at its step for a retry.
            with transaction.atomic():
                run = run_lock(run_id=run_id)
                if run is not None and run.state != RunState.DONE:
                    _advance(run)
        except Exception:
            logger.exception("provisioning run %s could not move on after a delivery", run_id)


# --- Cases --------------------------------------------------------------------------------------


def provisioning_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a provisioning case (exceptions/retry.py): the runs it holds (or that it blocks)
    go on from the step where they stopped."""
    ids = set(runs_held_by(case=case)) | set(
        WorkflowRun.objects.filter(exception_case=case).values_list("pk", flat=True)
    )
    before = dict(WorkflowRun.objects.filter(pk__in=ids).values_list("pk", "current_step"))
    moved = provisioning_resume(run_ids=list(ids))
    after = WorkflowRun.objects.filter(pk__in=ids)
    went_on = sum(1 for r in after if r.current_step != before.get(r.pk) or r.state == "done")
    return RetryResult(
        count=moved,
        summary=f"resumed {moved} provisioning run(s); {went_on} got past the step that "
        "stopped them",
    )


# --- Helpers ------------------------------------------------------------------------------------


class NoRoute(LookupError):
    """A step after validation found no connection for its system (a route removed since)."""


def _route(run: WorkflowRun, role: SystemRole) -> Connection:
    entity_id = int(run.context["legal_entity_id"])
    # Decided once per run and kept on it (integrations/services/route_switches.py): a switch
    # of the entity to another ERP since leaves what this run made where it started.
    pinned = run.context.get(f"{role}_connection_id")
    found = (
        _memoized(("connection", pinned), Connection.objects.filter(pk=pinned).first)
        if pinned
        else None
    )
    connection = found or routing_connection(role=role, legal_entity_id=entity_id)
    if connection is None:
        entity = LegalEntity.objects.get(pk=entity_id)
        raise NoRoute(f"no {role.label} connection serves legal entity {entity.code}")
    run.context[f"{role}_connection_id"] = connection.pk
    return connection


def _xref(record: models.Model, connection: Connection) -> str | None:
    def load() -> str | None:
        return (
            CrossReference.objects.filter(
                content_type=ContentType.objects.get_for_model(record),
                object_id=record.pk,
                connection=connection,
            )
            .values_list("external_id", flat=True)
            .first()
        )

    key = ("xref", record._meta.label_lower, record.pk, connection.pk)
    shared = _shared.current
    if shared is not None and ("xrefs", record._meta.label_lower, record.pk) in shared:
        # The batch read this record's references, and none is written in its transaction.
        found_before: str | None = shared.get(key)
        return found_before
    memo = _memo.get()
    if memo is None or key not in memo:
        found = load()
        # Only a reference found is kept: one missing now may be written by this advance.
        if memo is not None and found is not None:
            memo[key] = found
        return found
    value: str | None = memo[key]
    return value


def _run_blocked(run: WorkflowRun) -> Blocked:
    amount = _decimal(run.input.get("amount"))
    return Blocked(
        record_type=RUN_RECORD,
        record_id=run.pk,
        label=_opportunity_label(run),
        amount=amount,
        currency=str(run.input.get("currency") or "") if amount else "",
    )


def _opportunity_label(run: WorkflowRun) -> str:
    return f"opportunity {run.label} ({run.input.get('external_id', '')})"


def _context(run: WorkflowRun, *, what: str, label: str, queue: str) -> dict[str, Any]:
    """What the outbox row (and a case about it) says, and which run it moves on."""
    amount = _decimal(run.input.get("amount"))
    return {
        "what": what,
        "subject": _opportunity_label(run),
        "label": label,
        "amount": str(amount),
        "currency": str(run.input.get("currency") or ""),
        "hours": "0",
        "queue": queue,
        "run_id": run.pk,
    }


def _notes(
    run: WorkflowRun,
    project: Project,
    *,
    erp_project: str | None = None,
    erp_customer: str | None = None,
) -> str:
    """Where the PSA project came from, in words: the opportunity and the legal entity (which
    sync/project_links.py reads back), then the ERP's ids once they exist."""
    parts = [f"Opportunity {run.input.get('external_id', '')}"]
    if project.legal_entity is not None:
        parts.append(f"legal entity {project.legal_entity.code}")
    if erp_customer:
        parts.append(f"ERP customer {erp_customer}")
    if erp_project:
        parts.append(f"ERP project {erp_project}")
    return "; ".join(parts)


def _system(connection: Connection) -> str:
    return f"{connection.get_vendor_display()} ({connection.name})"


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal("0")
    except InvalidOperation:
        return Decimal("0")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


PROVISIONING = Process(
    PROCESS,
    tuple(
        (name, _unless_waiting(name, fn))
        for name, fn in (
            (VALIDATE, _validate),
            (ERP_CUSTOMER, _erp_customer),
            (PSA_CLIENT, _psa_client),
            (PSA_PROJECT, _psa_project),
            (PSA_TASKS, _psa_tasks),
            (PSA_MILESTONES, _psa_milestones),
            (PSA_TEAM, _psa_team),
            (ERP_DIMENSION, _erp_dimension),
            (WRITE_BACK, _write_back),
        )
    ),
)

arrival_register(
    canonical_model="opportunity", handler=provisioning_arrival, batch=provisioning_arrivals
)
arrival_register(
    canonical_model="customer", handler=provisioning_arrival, batch=provisioning_arrivals
)
arrival_register(
    canonical_model="contract", handler=provisioning_arrival, batch=provisioning_arrivals
)
for _step in (
    ERP_CUSTOMER,
    PSA_CLIENT,
    PSA_PROJECT,
    PSA_TASKS,
    PSA_MILESTONES,
    PSA_TEAM,
    ERP_DIMENSION,
    WRITE_BACK,
):
    delivered_step_register(process=PROCESS, step=_step, handler=provisioning_delivered)
retry_handler_register(
    case_types=(*VALIDATION_CASE_TYPES, RENDER_CASE),
    handler=provisioning_case_retry,
    process=PROCESS,
)
