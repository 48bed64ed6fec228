"""Workflow 2: approved time and expenses to the ERP, exactly once.

A billing run takes approved, billable time entries that have no billing event yet, validates
them (project active, a rate for the role, a legal entity, a billable contract, an exchange rate
when needed), turns the valid ones into billing events, groups those into draft invoices by
contract, currency and legal entity, and hands each invoice to the sync layer as a canonical
record for the ERP connection that serves the legal entity, all in one transaction. The sync
layer renders the ERP's payload with that connection's published Invoices mapping and writes the
outbox row; nothing here knows a vendor's field or operation names. Entries that fail validation
stay unbilled and raise one exception case per root cause; the next run tries them again, and a
case closes by itself once every entry it held has been billed. An invoice the mapping cannot
render waits on an integration admin's case and is rendered again by the next run.

Expenses join the time. Approved, billable expenses with no billing event yet are re-billed at
cost, one line each (``EX-<id>``), in their own currency, on the same draft invoices as the time
of their contract, legal entity and currency: each time chunk also takes (and locks) the waiting
expenses of the contracts it bills, and a last pass takes the rest. Their checks are the time
rules that apply to an expense: project active, a legal entity, a contract (whatever its billing
model: a fixed fee covers the work, not the travel; the reconciliation and the actuals count
billable expenses the same way), an exchange rate for the expense's currency, an ERP route, and
a tax treatment the legal entity can apply (the contract's tax profile active, of the entity's
country, with the customer's tax number where it needs one). A bill rate does not apply. Each
rule has its own case type (exceptions/catalogue.py, ``expense_*``). The expense work is skipped
for a whole run, at the cost of one EXISTS, when no expense waits, so the time path's per-chunk
work is what it was. An expense is on one invoice line ever: its billing event is one-to-one.

Where a contract says so (``Contract.add_to_open_draft``), a run adds its lines to the
contract's draft of the same currency and legal entity issued this month that has not been sent
to the ERP yet (no outbox row, or only one never attempted), up to the lines an invoice holds,
and renders that draft again in place of its unsent row; a draft any attempt has gone out for
is never changed, and the lines go on a new draft.

An invoice's ERP is decided when it is made (``Invoice.erp_connection``, the route of its legal
entity then) and kept. When an entity is switched to another ERP (RouteSwitch, integrations/
services/route_switches.py; a switch whose time has come is applied at the start of a run),
what was made for the old ERP finishes there: its queued or parked rows keep their connection,
a draft its mapping could not render yet is rendered for the ERP it was made for, and an unsent
open draft of the old ERP takes no new lines; time not yet on an invoice goes to the new one.

Two runs at once share the waiting entries: each chunk locks its entries (SKIP LOCKED) and then
reads which of them another run billed meanwhile (one query), so neither bills an entry twice
nor fails on the other's work.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import Any, NamedTuple, Protocol

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.db.models.expressions import RawSQL

from exceptions.catalogue import (
    EXPENSE_CASE_TYPES,
    EXPENSE_MISSING_EXCHANGE_RATE,
    EXPENSE_NO_ERP_ROUTE,
    EXPENSE_ON_INACTIVE_PROJECT,
    EXPENSE_PROJECT_WITHOUT_CONTRACT,
    EXPENSE_PROJECT_WITHOUT_LEGAL_ENTITY,
    EXPENSE_TAX_TREATMENT,
)
from exceptions.models import BlockedRecord, ExceptionCase, Queue
from exceptions.retry import RetryResult, retry_handler_register
from exceptions.services import Blocked, case_fingerprint, case_open_or_join, case_records_clear
from integrations.flags import flag_alone, flag_set, flag_take
from integrations.models import (
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    ExchangeRate,
    Expense,
    Invoice,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    SystemRole,
    TimeEntry,
    milestone_billed_projects,
)
from integrations.selectors import RouteTable, route_table_load
from integrations.services.route_switches import route_switches_apply_due
from integrations.sync.bulk import copy_insert, copy_insert_values, update_rows
from integrations.sync.outbound import OutboundItem, outbound_answer, outbound_messages
from integrations.sync.outbox import outbox_enqueue, outbox_flush, outbox_replay
from integrations.sync.ring import BILLING_ARRIVED, ring
from integrations.sync.steps import (
    after_page_register,
    after_poll_register,
    delivered_step_register,
)

logger = logging.getLogger(__name__)

PROCESS = "time_to_erp"
# Entries per transaction: 5,000 keeps one run's locks and memory small (about 10 MB) and still
# amortises the per-chunk queries. Setting CONCORD_BILLING_CHUNK (tests: many chunks from a
# small firm).
CHUNK = 5_000


def chunk_size() -> int:
    return int(getattr(settings, "CONCORD_BILLING_CHUNK", CHUNK))


def max_lines_per_invoice() -> int:
    """Lines per invoice (setting CONCORD_MAX_LINES_PER_INVOICE, default 100: a month of a busy
    project fits; an ERP takes far more, but a 100-line draft is what a reviewer can still read)."""
    return int(getattr(settings, "CONCORD_MAX_LINES_PER_INVOICE", 100))


# The step that posts a draft invoice to the ERP (its outbox rows and their delivered handler).
POST_STEP = "post_invoice"
# Invoices rendered again per transaction when a run retries the ones a mapping refused.
RESEND_CHUNK = 500
CENT = Decimal("0.01")
# Billed by the hour; fixed-fee time is billed by milestone. The rule lives with the contract,
# so the finance page counts what this run takes by the same one.
BILLABLE_MODELS = Contract.HOURLY_MODELS


@dataclass
class BillingRunReport:
    """What a run did. `considered`, `billed`, `blocked` and `not_billable` count time entries
    (the figures finance knows the run by); the expenses have their own."""

    considered: int = 0
    billed: int = 0
    invoices: int = 0
    blocked: int = 0
    not_billable: int = 0
    cases: set[int] = field(default_factory=set)
    expenses_considered: int = 0
    expenses_billed: int = 0
    expenses_blocked: int = 0
    # Draft invoices not yet sent that this run added lines to (Contract.add_to_open_draft).
    drafts_extended: int = 0


@dataclass
class _Problem:
    """Why an entry cannot be billed: a case type of the catalogue and what it is about."""

    case_type: str
    subject: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return case_fingerprint(
            case_type=self.case_type, process=PROCESS, step="validate", subject=self.subject
        )


def billing_run(
    *,
    limit: int | None = None,
    entry_ids: Collection[int] | None = None,
    expense_ids: Collection[int] | None = None,
) -> BillingRunReport:
    """Bill every approved, unbilled time entry (up to `limit`), chunk by chunk, with the
    waiting expenses of their contracts, then every expense still waiting (up to `limit` as
    well); with `entry_ids` or `expense_ids`, only those of them still unbilled (a case's
    retry: the records it holds)."""
    report = BillingRunReport()
    # Exchange rates and ERP routes are the same for every chunk of a run: read them once. So
    # is whether any expense waits: when none does (the usual run of a firm that bills no
    # expenses), the expense work costs this one EXISTS.
    retry = entry_ids is not None or expense_ids is not None
    # A switch of an entity's ERP whose time has come moves its route before the run reads it.
    route_switches_apply_due()
    books = _RunBooks(
        fx=_FxBook.load(),
        routes=_Routes.load(),
        expenses=not retry and Expense.objects.unbilled().exists(),
    )
    _resend_unrendered(books.routes)
    chunk = chunk_size()
    if retry:
        wanted = sorted(set(entry_ids or ()))
        for start in range(0, len(wanted), chunk):
            _bill_chunk(Q(pk__in=_among(wanted[start : start + chunk])), None, report, books)
        spent = sorted(set(expense_ids or ()))
        for start in range(0, len(spent), chunk):
            _bill_expense_chunk(Q(pk__in=_among(spent[start : start + chunk])), None, report, books)
        return report
    # The time left to milestones is not read (``_unbilled``), only counted: one query.
    report.not_billable = (
        TimeEntry.objects.unbilled().filter(project_id__in=milestone_billed_projects()).count()
    )
    last_id: int | None = 0
    while last_id is not None and (limit is None or report.considered < limit):
        size = chunk if limit is None else min(chunk, limit - report.considered)
        last_id = _bill_chunk(Q(pk__gt=last_id), size, report, books)
    _bill_expenses(report, books, limit)
    return report


def _bill_expenses(report: BillingRunReport, books: _RunBooks, limit: int | None = None) -> None:
    """Every expense still waiting, chunk by chunk (up to `limit`)."""
    chunk = chunk_size()
    last_id = 0 if books.expenses else None
    while last_id is not None and (limit is None or report.expenses_considered < limit):
        size = chunk if limit is None else min(chunk, limit - report.expenses_considered)
        last_id = _bill_expense_chunk(Q(pk__gt=last_id), size, report, books)


# --- Billing time as it arrives ------------------------------------------------------------------

# The runs that bill time while the poll that brings it still reads (``billing_arrived``) go on
# from the last entry id they went through, kept in the cache. Lost (a cache flush), the next
# such run starts from the first unbilled entry: it reads again what it left unbilled (time on a
# fixed fee, time held on a case) and makes the same invoices; nothing else changes. Entries
# below it that such a run never saw (one committed late) are the scheduled run's (from the
# first entry, every minute: config/celery.py ``billing-run``). The mark names its entry by id
# and creation time (`_arrived_mark`), so a mark the cache kept from another database is known.
ARRIVED = "billing:arrived"
ARRIVED_THROUGH = "billing:arrived:through"
# A poll that is done asks for the rest (a chunk not yet whole, the expenses) once: a run that
# holds ARRIVED when it asks sees this and bills the rest before it lets go.
ARRIVED_REST = "billing:arrived:rest"
# One such run at a time: a second would only wait for the first one's locks, or bill a
# chunk that is not whole because the first one holds part of it. Held while it works
# (renewed), gone ARRIVED_HOLD_S after its worker dies.
ARRIVED_HOLD_S = 30
ARRIVED_RENEW_S = 5.0


def billing_arrived(*, complete: bool) -> BillingRunReport | None:
    """Bill the time stored since the last such run, from where it stopped, while the poll
    that brings it is still reading (rung by each page it commits: integrations/sync/steps.py
    ``run_after_page``). Until the poll is done (`complete` False) only whole chunks: the first
    `chunk_size()` unbilled entries by id are the same entries whether a run takes them now or
    once the poll is done, so each chunk, and the invoices made of it, are the ones a run after
    the poll would make. Once it is done (`complete`), the rest too, and the waiting expenses.
    Returns None when another such run held the work (it does this one's when it ends)."""
    if complete:
        flag_set(ARRIVED_REST, ARRIVED_HOLD_S * 20)
    return flag_alone(
        ARRIVED,
        _bill_arrived,
        again=partial(ring, BILLING_ARRIVED, key="chunks", args=(False,), force=True),
        hold_s=ARRIVED_HOLD_S,
        renew_s=ARRIVED_RENEW_S,
    )


def _bill_arrived() -> BillingRunReport:
    report = BillingRunReport()
    route_switches_apply_due()
    # The poll reads expenses before time (integrations/sync/polling.py DEPENDENCY_ORDER): a
    # chunk takes those of its contracts onto its invoices, as a run after the poll would.
    books = _RunBooks(
        fx=_FxBook.load(), routes=_Routes.load(), expenses=Expense.objects.unbilled().exists()
    )
    chunk = chunk_size()
    through = _arrived_through()
    while True:
        last_id = _bill_chunk(Q(pk__gt=through), chunk, report, books, whole=True)
        if last_id is None:
            break
        through = last_id
        _arrived_mark(through)
    if flag_take(ARRIVED_REST):
        books.expenses = Expense.objects.unbilled().exists()
        _resend_unrendered(books.routes)
        last: int | None = through
        while last is not None:
            through, last = last, _bill_chunk(Q(pk__gt=last), chunk, report, books)
        _arrived_mark(through)
        _bill_expenses(report, books)
        # The poll is done and this was the rest: no chunk follows for them to share a call.
        outbox_flush()
    return report


def _arrived_mark(through: int) -> None:
    """Keep the last entry id these runs went through, with that entry's creation time."""
    created = TimeEntry.objects.filter(pk=through).values_list("created_at", flat=True).first()
    stamp = created.isoformat() if created is not None else ""
    cache.set(ARRIVED_THROUGH, f"{through}@{stamp}", timeout=None)


def _arrived_through() -> int:
    """The last entry id a run that bills arriving time went through (0: none yet). A mark whose
    entry is not the one stored under its id (another creation time, or none) is not this
    database's: the cache kept it while the database was restored from a backup, emptied or
    made anew, and its ids may be reused. Going on from it, these runs would bill nothing of what
    arrives below it (the scheduled run would, up to a minute later), so they start again from
    the first unbilled entry, as after a lost mark. One look-up by primary key."""
    through, _, stamp = str(cache.get(ARRIVED_THROUGH) or "").partition("@")
    if not through.isdigit() or not stamp:
        return 0
    try:
        created = datetime.fromisoformat(stamp)
    except ValueError:
        return 0
    if not TimeEntry.objects.filter(pk=int(through), created_at=created).exists():
        return 0
    return int(through)


def billing_after_page(*, connection_id: int, canonical_model: str) -> None:
    """A page of time entries committed: a run bills the whole chunks that have arrived."""
    if canonical_model == "timeentry":
        ring(BILLING_ARRIVED, key="chunks", args=(False,))


def billing_after_poll(*, connection_id: int, since: datetime) -> None:
    """A PSA's poll is done: a run bills what it brought that no whole chunk took (one query
    when it brought nothing unbilled)."""
    if not Connection.objects.filter(pk=connection_id, role=SystemRole.PSA).exists():
        return
    if _unbilled().filter(pk__gt=_arrived_through()).exists() or (
        Expense.objects.unbilled().exists()
    ):
        ring(BILLING_ARRIVED, key="rest", args=(True,))


def _unbilled() -> Any:
    """The unbilled time a run reads: none on a contract that bills no hours (fixed fee: its
    milestones bill it, and it stays unbilled for good). Read and locked with the rest, it was
    most of what a scheduled run did every minute: 20,000 such entries of a 100,000-entry firm,
    0.5 s of a run that billed nothing; as a NOT IN over the few such projects, it is not read."""
    return TimeEntry.objects.unbilled().exclude(project_id__in=milestone_billed_projects())


@dataclass(slots=True)
class _Entry:
    """A time entry as billing reads it: its own columns, its project and its worker. Plain
    objects read as tuples: 5,000 model instances per chunk, each with two related objects set
    through Django's descriptors, cost more CPU than validating and invoicing them."""

    pk: int
    day: date
    hours: Decimal
    task: str
    project: Project
    resource: Resource


@transaction.atomic
def _bill_chunk(
    where: Q, size: int | None, report: BillingRunReport, books: _RunBooks, *, whole: bool = False
) -> int | None:
    """Bill the unbilled entries `where` selects (the first `size` of them, by id); returns the
    last id taken, None when there was none (or, `whole`, fewer than `size`: then nothing)."""
    if whole and size and not _whole(where, size):
        return None
    # One statement finds the chunk and locks it, so two concurrent runs cannot both bill an
    # entry; SKIP LOCKED lets a second run take other entries instead of waiting. (Reading the
    # ids first and locking them by id was a second pass over the table per chunk, a second of
    # a 100,000-entry run.) A chunk `_whole` found may still come short here: another run may
    # hold some of its entries by now.
    chosen = (
        _unbilled()
        .filter(where)
        .select_for_update(skip_locked=True, of=("self",))
        .order_by("pk")
        .values_list("pk", "project_id", "resource_id", "date", "hours", "task")
    )
    rows = list(chosen if size is None else chosen[:size])
    if not rows or (whole and len(rows) < (size or 0)):
        return None
    last_id = int(rows[-1][0])
    # Read again, now that they are locked (one query, as the expense pass does): the statement
    # above saw the table as it was when it began, so an entry another run billed and committed
    # meanwhile (its lock gone by the time this one took it) still looked unbilled, and this
    # run's billing event would break the one-to-one and roll the whole chunk back.
    billed = set(
        BillingEvent.objects.filter(time_entry_id__in=_among([row[0] for row in rows]))
        .order_by()
        .values_list("time_entry_id", flat=True)
    )
    if billed:
        rows = [row for row in rows if row[0] not in billed]
        if not rows:
            return last_id
    # A chunk's entries share a few hundred projects and workers: load those once and attach
    # them, instead of joining them onto every entry row.
    projects = Project.objects.select_related(
        "contract__tax_rate", "legal_entity", "customer"
    ).in_bulk({row[1] for row in rows})
    resources = Resource.objects.in_bulk({row[2] for row in rows})
    entries = [
        _Entry(pk, day, hours, task, projects[project_id], resources[resource_id])
        for pk, project_id, resource_id, day, hours, task in rows
    ]
    report.considered += len(entries)
    rates = _RateBook.load(entries)
    fx, routes = books.fx, books.routes

    billable: list[tuple[_Entry, Decimal]] = []
    blocked: dict[str, tuple[_Problem, list[_Entry]]] = {}
    for entry in entries:
        contract = entry.project.contract
        if contract is not None and contract.billing_model not in BILLABLE_MODELS:
            # Fixed-fee work is invoiced by milestone, not by the hour. ``_unbilled`` leaves it
            # out, and billing_run counts it; only a contract changed since the read gets here.
            continue
        problem = _validate(entry, rates, fx, routes)
        if problem is not None:
            blocked.setdefault(problem.fingerprint, (problem, []))[1].append(entry)
            report.blocked += 1
            continue
        billable.append((entry, rates.rate_for(entry)))  # type: ignore[arg-type]
    # One case write per root cause, not per entry; in fingerprint order, so two runs lock the
    # cases they share in the same order.
    for fingerprint in sorted(blocked):
        problem, held = blocked[fingerprint]
        report.cases.add(_raise(held, problem, rates))

    # The waiting expenses of the contracts this chunk bills go on the same invoices.
    spends: list[_Spend] = []
    if books.expenses and billable:
        contracts = {entry.project.contract_id for entry, _ in billable}
        spends, _ = _take_expenses(
            Q(project__contract_id__in=contracts), chunk_size(), report, books, projects
        )

    report.billed += len(billable)
    report.invoices += _invoice(billable, routes, spends, report)
    _close_cases([entry.pk for entry, _ in billable])
    _close_cases([spend.pk for spend in spends], record_type="expense")
    return last_id


def _whole(where: Q, size: int) -> bool:
    """Whether `size` unbilled entries `where` selects: the `size`-th by id, one probe of the
    id index. A poll still reading rings a run after every page; asking first, instead of
    reading and locking the rows and then dropping them, spared a 100,000-entry poll reading
    and locking its entries twice over (230,000 rows) before each chunk was whole."""
    nth = _unbilled().filter(where).order_by("pk").values_list("pk", flat=True)[size - 1 : size]
    return bool(list(nth))  # read, not EXISTS: that would drop the order, and the index walk


def _among(ids: Sequence[int]) -> Any:
    """Up to a chunk of ids for ``pk__in``: on PostgreSQL one array parameter, since Django and
    psycopg spend 50 ms of CPU preparing and quoting 5,000 placeholders one by one; elsewhere
    the list."""
    if connection.vendor == "postgresql":
        return RawSQL("SELECT unnest(%s::bigint[])", (list(ids),))
    return ids


def _line_description(entry: _Entry) -> str:
    # "TE-<id>" first: it identifies the entry on the ERP line, which is how reconciliation (and
    # the tests) count that every approved entry was posted exactly once.
    task = f" {entry.task}" if entry.task else ""
    return f"TE-{entry.pk} {entry.day:%Y-%m-%d} {entry.resource.name}{task} ({entry.hours} h)"


# --- Validation -------------------------------------------------------------------------------


class _RateBook:
    """Bill rates for the chunk: contract rates first, then the firm default per role+currency."""

    def __init__(self, by_key: dict[tuple[int | None, str, str], Decimal]) -> None:
        self.by_key = by_key

    @classmethod
    def load(cls, entries: Iterable[_Entry]) -> _RateBook:
        contracts = {e.project.contract_id for e in entries if e.project.contract_id}
        cards = RateCard.objects.filter(Q(contract__in=contracts) | Q(contract__isnull=True))
        return cls({(c.contract_id, c.role, c.currency): c.bill_rate for c in cards})

    def rate_for(self, entry: _Entry) -> Decimal | None:
        role, currency = entry.resource.role, entry.project.currency
        contract_rate = self.by_key.get((entry.project.contract_id, role, currency))
        return (
            contract_rate if contract_rate is not None else self.by_key.get((None, role, currency))
        )


# Days an exchange rate counts for; the missing_exchange_rate case names the same number.
FX_RECENT_DAYS = 35


class _FxBook:
    def __init__(self, pairs: set[tuple[str, str]]) -> None:
        self.pairs = pairs

    @classmethod
    def load(cls) -> _FxBook:
        recent = date.today() - timedelta(days=FX_RECENT_DAYS)
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
    """Which ERP connection serves each legal entity (RoutingRule, else the role's default),
    and which served it before a switch (RouteSwitch, integrations/services/route_switches.py):
    an invoice made before its entity moved to another ERP is still that ERP's to post. Read
    once per run (integrations/selectors.py, `route_table_load`)."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self._pinned: dict[int, Connection | None] = {}

    @classmethod
    def load(cls) -> _Routes:
        return cls(route_table_load(role=SystemRole.ERP))

    def connection_for(self, legal_entity_id: int | None) -> Connection | None:
        return self.table.serving(legal_entity_id)

    def connection_of(self, invoice: Invoice, *, as_made: bool) -> Connection | None:
        """The ERP an invoice goes to: the one it was made for; for a draft older than that
        record, with `as_made` the one that served its entity when it was made, else the
        route now."""
        if invoice.erp_connection_id is not None:
            return self._connection(invoice.erp_connection_id)
        if as_made:
            return self.connection_at(invoice.legal_entity_id, invoice.created_at)
        return self.connection_for(invoice.legal_entity_id)

    def _connection(self, pk: int) -> Connection | None:
        for serving in self.table.by_entity.values():
            if serving.pk == pk:
                return serving
        if pk not in self._pinned:
            self._pinned[pk] = Connection.objects.filter(pk=pk).first()
        return self._pinned[pk]

    def connection_at(self, legal_entity_id: int | None, when: Any) -> Connection | None:
        """The connection that served the entity at `when`: the one a switch since moved it
        from, else its route now. (No query unless an entity of the run was switched since.)"""
        before = self.table.history.connection_at(legal_entity_id, when)
        if before is None:
            return self.connection_for(legal_entity_id)
        return self._connection(before)


@dataclass
class _RunBooks:
    fx: _FxBook
    routes: _Routes
    # Whether any approved, billable expense waited when the run began: if not, no chunk looks.
    expenses: bool = False
    # Expenses this run found blocked: not taken again by a later chunk of the same run.
    expenses_blocked: set[int] = field(default_factory=set)


def _validate(entry: _Entry, rates: _RateBook, fx: _FxBook, routes: _Routes) -> _Problem | None:
    project = entry.project
    on_project = {"project_id": project.pk, "project": f"{project.code} {project.name}"}
    if project.status != Project.Status.ACTIVE:
        status = project.get_status_display().lower()
        return _Problem("time_on_inactive_project", {**on_project, "status": status})
    if project.legal_entity is None:
        return _Problem("project_without_legal_entity", on_project)
    if project.contract is None:
        return _Problem("project_without_contract", on_project)
    if rates.rate_for(entry) is None:
        return _Problem(
            "missing_rate",
            {
                "contract_id": project.contract_id,
                "contract": project.contract.number,
                "role": entry.resource.role,
                "currency": project.currency,
            },
        )
    base = project.legal_entity.base_currency
    if not fx.has_rate(project.currency, base):
        return _Problem(
            "missing_exchange_rate",
            {"currency": project.currency, "base": base, "days": FX_RECENT_DAYS},
        )
    if routes.connection_for(project.legal_entity_id) is None:
        return _Problem(
            "no_erp_route",
            {"legal_entity_id": project.legal_entity_id, "legal_entity": project.legal_entity.code},
        )
    return None


def _raise(entries: Sequence[_Entry], problem: _Problem, rates: _RateBook) -> int:
    case = case_open_or_join(
        case_type=problem.case_type,
        subject=problem.subject,
        records=[_blocked_entry(entry, rates) for entry in entries],
        process=PROCESS,
        step="validate",
    )
    return case.pk


def _blocked_entry(entry: _Entry, rates: _RateBook) -> Blocked:
    rate = rates.rate_for(entry)
    return Blocked(
        record_type="timeentry",
        record_id=entry.pk,
        label=_line_description(entry),
        amount=(entry.hours * rate).quantize(CENT) if rate is not None else Decimal("0"),
        currency=entry.project.currency if rate is not None else "",
        hours=entry.hours,
    )


def _close_cases(ids: Sequence[int], record_type: str = "timeentry") -> None:
    """Records billed now take themselves off the cases of this process that held them before.

    Which of them an open case holds is read first, by the id range of the chunk through
    BlockedRecord's record index: usually none, and then that one small read is all. Handing
    every entry to `case_records_clear` instead named 5,000 ids twice in one statement per
    chunk, 2 to 3 s of a 100,000-entry run spent finding nothing."""
    if not ids:
        return
    held = set(
        BlockedRecord.objects.filter(
            record_type=record_type,
            record_id__gte=min(ids),
            record_id__lte=max(ids),
            case__status=ExceptionCase.Status.OPEN,
            case__process=PROCESS,
        )
        .order_by()
        .values_list("record_id", flat=True)
    )
    if held:
        case_records_clear(
            records=[(record_type, pk) for pk in ids if pk in held],
            process=PROCESS,
            note="Closed automatically: every entry it held has since been billed.",
        )


# --- Expenses ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Spend:
    """An approved, billable expense as billing reads it: its own columns, its project and the
    worker's name (read as tuples, as the time entries are)."""

    pk: int
    day: date
    category: str
    amount: Decimal
    currency: str
    project: Project
    worker: str


def _bill_expense_chunk(
    where: Q, size: int | None, report: BillingRunReport, books: _RunBooks
) -> int | None:
    """Bill the waiting expenses `where` selects (the first `size`, by id) that no time chunk
    took, on invoices of their own; returns the last id taken, None when there was none."""
    with transaction.atomic():
        spends, last_id = _take_expenses(where, size, report, books, {})
        report.invoices += _invoice((), books.routes, spends, report)
        _close_cases([spend.pk for spend in spends], record_type="expense")
    return last_id


def _take_expenses(
    where: Q,
    size: int | None,
    report: BillingRunReport,
    books: _RunBooks,
    projects: dict[int, Project],
) -> tuple[list[_Spend], int | None]:
    """Lock the waiting expenses `where` selects (the first `size`, by id), validate them, put
    the blocked ones on their cases; returns the billable ones and the last id taken. Four
    queries (the expenses, their billing events, their workers, the projects not in
    `projects`), and one case write per root cause: set-based, as the time chunk is. SKIP
    LOCKED: an expense another run holds is that run's to bill."""
    unbilled = Expense.objects.unbilled().filter(where)
    if books.expenses_blocked:
        unbilled = unbilled.exclude(pk__in=_among(sorted(books.expenses_blocked)))
    chosen = (
        unbilled.select_for_update(skip_locked=True, of=("self",))
        .order_by("pk")
        .values_list("pk", "project_id", "resource_id", "date", "category", "amount", "currency")
    )
    rows = list(chosen if size is None else chosen[:size])
    if not rows:
        return [], None
    last_id = int(rows[-1][0])
    # Read again, now that they are locked: the statement above saw the table as it was when
    # it began, so an expense another run billed and committed meanwhile (its lock gone by
    # the time this one took it) still looked unbilled. Without this the second run's billing
    # events would break the one-to-one and roll its whole chunk back.
    billed = set(
        BillingEvent.objects.filter(expense_id__in=_among([row[0] for row in rows]))
        .order_by()
        .values_list("expense_id", flat=True)
    )
    rows = [row for row in rows if row[0] not in billed]
    if not rows:
        return [], last_id
    missing = {row[1] for row in rows} - projects.keys()
    if missing:
        projects = {
            **projects,
            **Project.objects.select_related(
                "contract__tax_rate", "legal_entity", "customer"
            ).in_bulk(missing),
        }
    workers = dict(
        Resource.objects.filter(pk__in={row[2] for row in rows}).values_list("pk", "name")
    )
    spends = [
        _Spend(pk, day, category, amount, currency, projects[project_id], workers[resource_id])
        for pk, project_id, resource_id, day, category, amount, currency in rows
    ]
    report.expenses_considered += len(spends)
    billable: list[_Spend] = []
    blocked: dict[str, tuple[_Problem, list[_Spend]]] = {}
    for spend in spends:
        problem = _validate_expense(spend, books.fx, books.routes)
        if problem is not None:
            blocked.setdefault(problem.fingerprint, (problem, []))[1].append(spend)
            continue
        billable.append(spend)
    for fingerprint in sorted(blocked):
        problem, held = blocked[fingerprint]
        report.cases.add(_raise_expenses(held, problem))
        report.expenses_blocked += len(held)
        books.expenses_blocked.update(spend.pk for spend in held)
    report.expenses_billed += len(billable)
    return billable, last_id


def _validate_expense(spend: _Spend, fx: _FxBook, routes: _Routes) -> _Problem | None:
    """The time rules that apply to an expense (no bill rate: it is re-billed at cost), and the
    tax treatment its legal entity can apply."""
    project = spend.project
    on_project = {"project_id": project.pk, "project": f"{project.code} {project.name}"}
    if project.status != Project.Status.ACTIVE:
        status = project.get_status_display().lower()
        return _Problem(EXPENSE_ON_INACTIVE_PROJECT, {**on_project, "status": status})
    entity = project.legal_entity
    if entity is None:
        return _Problem(EXPENSE_PROJECT_WITHOUT_LEGAL_ENTITY, on_project)
    contract = project.contract
    if contract is None:
        return _Problem(EXPENSE_PROJECT_WITHOUT_CONTRACT, on_project)
    if not fx.has_rate(spend.currency, entity.base_currency):
        return _Problem(
            EXPENSE_MISSING_EXCHANGE_RATE,
            {"currency": spend.currency, "base": entity.base_currency, "days": FX_RECENT_DAYS},
        )
    if routes.connection_for(entity.pk) is None:
        return _Problem(
            EXPENSE_NO_ERP_ROUTE, {"legal_entity_id": entity.pk, "legal_entity": entity.code}
        )
    why = _tax_treatment_problem(project)
    if why:
        assert contract.tax_rate is not None  # noqa: S101 - only a tax profile has a problem
        return _Problem(
            EXPENSE_TAX_TREATMENT,
            {
                "contract_id": contract.pk,
                "contract": contract.number,
                "tax_rate": contract.tax_rate.code,
                "legal_entity": entity.code,
                "why": why,
            },
        )
    return None


def _tax_treatment_problem(project: Project) -> str:
    """What keeps the project's legal entity from charging its contract's tax profile ("" when
    nothing does, or the contract has none: untaxed, as its time is)."""
    tax = project.contract.tax_rate if project.contract is not None else None
    entity = project.legal_entity
    if tax is None or entity is None:
        return ""
    if not tax.active:
        return "is no longer active"
    if tax.country and entity.country and tax.country.upper() != entity.country.upper():
        return f"is a {tax.country} tax, which a {entity.country} legal entity cannot charge"
    if tax.requires_customer_tax_number and not project.customer.tax_number:
        return f"needs the customer's tax number, and {project.customer.name} has none"
    return ""


def _expense_description(spend: _Spend) -> str:
    # "EX-<id>" first, as "TE-<id>" for time: how an ERP line is traced back to its expense.
    return (
        f"EX-{spend.pk} {spend.day:%Y-%m-%d} {spend.worker} {spend.category} "
        f"({spend.currency} {spend.amount})"
    )


def _expense_line(spend: _Spend) -> _Line:
    amount = spend.amount.quantize(CENT, ROUND_HALF_UP)
    return _Line(
        description=_expense_description(spend),
        quantity=Decimal("1"),
        unit_amount=amount,
        amount=amount,
        entry_id=None,
        project_id=spend.project.pk,
        expense_id=spend.pk,
    )


def _raise_expenses(spends: Sequence[_Spend], problem: _Problem) -> int:
    first = spends[0].project
    case = case_open_or_join(
        case_type=problem.case_type,
        subject=problem.subject,
        records=[
            Blocked(
                record_type="expense",
                record_id=spend.pk,
                label=_expense_description(spend),
                amount=spend.amount,
                currency=spend.currency,
            )
            for spend in spends
        ],
        process=PROCESS,
        step="validate",
        # The case's scope where its subject names no project (a currency pair, a contract).
        legal_entity_id=first.legal_entity_id,
        region=first.region,
    )
    return case.pk


# --- Invoices ---------------------------------------------------------------------------------


class InvoiceLine(Protocol):
    """What an invoice's canonical record and case context read of a line: a billing event as
    stored, or a `_Line` of this run."""

    @property
    def description(self) -> str: ...
    @property
    def quantity(self) -> Decimal: ...
    @property
    def unit_amount(self) -> Decimal: ...
    @property
    def amount(self) -> Decimal: ...


class _Line(NamedTuple):
    """One billing event of this run, before it is stored: a time entry's (`entry_id`) or an
    expense's (`expense_id`)."""

    description: str
    quantity: Decimal
    unit_amount: Decimal
    amount: Decimal
    entry_id: int | None
    project_id: int
    expense_id: int | None = None


# A billing event's field_sources: none per field (its source_system says where it came from).
# One object for every row, so the COPY serialises it once.
_NO_FIELD_SOURCES: dict[str, Any] = {}

_GroupKey = tuple[int | None, int, str]


def _invoice(
    billable: Sequence[tuple[_Entry, Decimal]],
    routes: _Routes,
    spends: Sequence[_Spend] = (),
    report: BillingRunReport | None = None,
) -> int:
    """Group the billable entries and expenses into draft invoices (by contract, legal entity
    and currency: an expense's own currency), write the invoices, their billing events (one per
    entry or expense, pointing at its invoice), and hand each invoice to the sync layer (one
    outbox row per invoice it can render). Where the contract says so, lines first fill its
    unsent draft of this month (`_open_drafts`). Returns how many invoices were made."""
    groups: dict[_GroupKey, list[tuple[_Entry, Decimal]]]
    groups = defaultdict(list)
    for entry, rate in billable:
        project = entry.project
        entity_id = project.legal_entity_id
        assert entity_id is not None  # noqa: S101 - _validate refuses projects without one
        groups[(project.contract_id, entity_id, project.currency)].append((entry, rate))
    spent: dict[_GroupKey, list[_Spend]] = defaultdict(list)
    for spend in spends:
        entity_id = spend.project.legal_entity_id
        assert entity_id is not None  # noqa: S101 - _validate_expense refuses those without
        spent[(spend.project.contract_id, entity_id, spend.currency)].append(spend)
    # Time groups first, in the order they were met; then groups of expenses alone.
    heads: dict[_GroupKey, Project] = {key: group[0][0].project for key, group in groups.items()}
    for key, group_spends in spent.items():
        heads.setdefault(key, group_spends[0].project)
    per_invoice = max_lines_per_invoice()
    today = date.today()
    drafts = _open_drafts(heads, today, routes)
    invoices: list[tuple[Invoice, list[_Line]]] = []
    extended: list[tuple[Invoice, list[InvoiceLine]]] = []
    new_lines: list[tuple[Invoice, list[_Line]]] = []
    for key, project in heads.items():
        currency = key[2]
        contract = project.contract
        tax_percent = contract.tax_rate.rate_percent if contract and contract.tax_rate else 0
        # A project with no contract, or a contract that names no terms: the firm's usual.
        terms = (contract.payment_terms_days if contract else None) or (
            Contract.DEFAULT_PAYMENT_TERMS_DAYS
        )
        group = [
            _Line(
                description=_line_description(entry),
                quantity=entry.hours,
                unit_amount=rate,
                amount=(entry.hours * rate).quantize(CENT, ROUND_HALF_UP),
                entry_id=entry.pk,
                project_id=entry.project.pk,
            )
            for entry, rate in groups.get(key, ())
        ]
        if key in spent:
            group += [_expense_line(spend) for spend in spent[key]]
        for draft, held in drafts.get(key, ()):
            room = per_invoice - len(held)
            if room <= 0 or not group:
                continue
            added, group = group[:room], group[room:]
            lines: list[InvoiceLine] = [*held, *added]
            _totals_set(draft, lines, tax_percent)
            extended.append((draft, lines))
            new_lines.append((draft, added))
        for start in range(0, len(group), per_invoice):
            lines_ = group[start : start + per_invoice]
            subtotal = sum((line.amount for line in lines_), Decimal("0"))
            tax = (subtotal * Decimal(tax_percent) / 100).quantize(CENT, ROUND_HALF_UP)
            invoice = Invoice(
                legal_entity=project.legal_entity,  # loaded with the project
                customer=project.customer,  # loaded with the project
                contract=contract,
                # The ERP decided now and kept: a switch of the entity later leaves it there.
                erp_connection=routes.connection_for(key[1]),
                currency=currency,
                issue_date=today,
                due_date=today + timedelta(days=terms),
                subtotal=subtotal,
                tax_total=tax,
                total=subtotal + tax,
                amount_due=subtotal + tax,
                source_system="",
                field_sources={},
            )
            invoices.append((invoice, lines_))
    copy_insert(Invoice, [invoice for invoice, _ in invoices])
    # One COPY for all the time's billing events, from plain rows: at 100,000 entries an INSERT
    # is several times slower, and building 100,000 model instances first cost seconds of CPU.
    # In binary (the values have their fields' types), and no ids drawn first: none is needed.
    written = [*invoices, *new_lines]
    copy_insert_values(
        BillingEvent,
        [
            {
                "source": BillingEvent.Source.TIME,
                "time_entry_id": line.entry_id,
                "project_id": line.project_id,
                "contract_id": invoice.contract_id,
                "legal_entity_id": invoice.legal_entity_id,
                "invoice_id": invoice.pk,
                "description": line.description,
                "quantity": line.quantity,
                "unit_amount": line.unit_amount,
                "amount": line.amount,
                "currency": invoice.currency,
                "source_system": SystemRole.PSA,
                "field_sources": _NO_FIELD_SOURCES,
            }
            for invoice, lines in written
            for line in lines
            if line.expense_id is None
        ],
        ids=False,
        binary=True,
    )
    if spends:  # the expenses' billing events: a second COPY, only when there are any
        copy_insert_values(
            BillingEvent,
            [
                {
                    "source": BillingEvent.Source.EXPENSE,
                    "expense_id": line.expense_id,
                    "project_id": line.project_id,
                    "contract_id": invoice.contract_id,
                    "legal_entity_id": invoice.legal_entity_id,
                    "invoice_id": invoice.pk,
                    "description": line.description,
                    "quantity": line.quantity,
                    "unit_amount": line.unit_amount,
                    "amount": line.amount,
                    "currency": invoice.currency,
                    "source_system": SystemRole.PSA,
                    "field_sources": _NO_FIELD_SOURCES,
                }
                for invoice, lines in written
                for line in lines
                if line.expense_id is not None
            ],
            ids=False,
            binary=True,
        )
    if extended:
        _drafts_resend(extended, routes)
        if report is not None:
            report.drafts_extended += len(extended)
    _post(invoices, routes)
    return len(invoices)


def _totals_set(invoice: Invoice, lines: Sequence[InvoiceLine], tax_percent: Decimal | int) -> None:
    subtotal = sum((line.amount for line in lines), Decimal("0"))
    tax = (subtotal * Decimal(tax_percent) / 100).quantize(CENT, ROUND_HALF_UP)
    invoice.subtotal, invoice.tax_total = subtotal, tax
    invoice.total = invoice.amount_due = subtotal + tax


# --- Open drafts (Contract.add_to_open_draft) ---------------------------------------------------


def _open_drafts(
    heads: Mapping[_GroupKey, Project], today: date, routes: _Routes
) -> dict[_GroupKey, list[tuple[Invoice, list[BillingEvent]]]]:
    """The unsent drafts of this month that the groups of contracts with `add_to_open_draft`
    may add lines to, locked, with the billing events they hold; {} (and no query) when no
    contract of the chunk asks for it.

    Unsent means nothing of the draft can have reached the ERP: it is not marked posted, and
    its outbox rows are only this step's rows never attempted (or it has none: its mapping
    could not render it yet). Those rows are locked here and a claiming worker skips them
    until this transaction ends; a row a worker holds already, or any other row, makes the
    draft sent, and its lines go on a new invoice. A draft another run holds is skipped too,
    and so is one meant for another ERP than the one that serves its legal entity now (made
    before the entity was switched to a new ERP: it finishes on the old one, new lines go to
    the new one)."""
    flagged = {
        key: project
        for key, project in heads.items()
        if project.contract is not None and project.contract.add_to_open_draft
    }
    if not flagged:
        return {}
    ours = Q(source__in=(BillingEvent.Source.TIME, BillingEvent.Source.EXPENSE))
    candidates = list(
        Invoice.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(
            contract_id__in={key[0] for key in flagged},
            source_system="",
            status=Invoice.Status.DRAFT,
            issue_date__gte=today.replace(day=1),
            issue_date__lte=today,
        )
        # A milestone's invoice has no billing event until the ERP has it (milestones.py).
        .filter(Exists(BillingEvent.objects.filter(ours, invoice_id=OuterRef("pk"))))
        .order_by("pk")
    )
    # The same contract, legal entity, currency and customer as the group.
    candidates = [
        i
        for i in candidates
        if (key := (i.contract_id, i.legal_entity_id, i.currency)) in flagged
        and i.customer_id == flagged[key].customer_id
    ]
    if not candidates:
        return {}
    invoice_type = ContentType.objects.get_for_model(Invoice)
    ids = [i.pk for i in candidates]
    unsent_rows = list(
        OutboxMessage.objects.select_for_update(skip_locked=True)
        .filter(
            content_type=invoice_type,
            object_id__in=ids,
            process=PROCESS,
            step=POST_STEP,
            state=OutboxMessage.State.PENDING,
            attempts=0,
            needs_lookup=False,
        )
        .values_list("pk", "object_id", "connection_id")
    )
    unsent = {pk for pk, _, _ in unsent_rows}
    bound_for = {invoice_id: connection_id for _, invoice_id, connection_id in unsent_rows}
    sent = set(
        OutboxMessage.objects.filter(content_type=invoice_type, object_id__in=ids)
        .exclude(pk__in=unsent)
        .values_list("object_id", flat=True)
    )
    held: dict[int, list[BillingEvent]] = defaultdict(list)
    for event in BillingEvent.objects.filter(invoice_id__in=set(ids) - sent).order_by("pk"):
        held[event.invoice_id].append(event)  # type: ignore[index]
    drafts: dict[_GroupKey, list[tuple[Invoice, list[BillingEvent]]]] = defaultdict(list)
    for invoice in candidates:
        if invoice.pk in sent or not held[invoice.pk]:
            continue
        serving = routes.connection_for(invoice.legal_entity_id)
        made_for = invoice.erp_connection_id or bound_for.get(invoice.pk)
        if made_for is None:  # older than that record, not rendered: as its entity was served
            was = routes.connection_at(invoice.legal_entity_id, invoice.created_at)
            made_for = was.pk if was is not None else None
        if serving is None or made_for != serving.pk:
            continue
        key = (invoice.contract_id, invoice.legal_entity_id, invoice.currency)
        project = flagged[key]
        # The draft's customer, entity and contract are the group's: read with its project.
        invoice.customer = project.customer
        invoice.contract = project.contract
        if project.legal_entity is not None:  # the group key holds it: always
            invoice.legal_entity = project.legal_entity
        drafts[key].append((invoice, held[invoice.pk]))
    return drafts


def _drafts_resend(
    extended: Sequence[tuple[Invoice, Sequence[InvoiceLine]]], routes: _Routes
) -> None:
    """The drafts given more lines: their totals stored, their unsent rows (locked by
    `_open_drafts`) replaced by rows rendered from every line they hold now."""
    update_rows(
        Invoice,
        [invoice for invoice, _ in extended],
        ["subtotal", "tax_total", "total", "amount_due"],
    )
    OutboxMessage.objects.filter(
        content_type=ContentType.objects.get_for_model(Invoice),
        object_id__in=[invoice.pk for invoice, _ in extended],
        process=PROCESS,
        step=POST_STEP,
        state=OutboxMessage.State.PENDING,
        attempts=0,
    ).delete()
    # As a retry: a draft its mapping could not render before clears itself off that case.
    _post(extended, routes, retried=True)


def _post(
    invoices: Sequence[tuple[Invoice, Sequence[InvoiceLine]]],
    routes: _Routes,
    *,
    retried: bool = False,
    as_made: bool = False,
) -> None:
    """Hand each invoice to the sync layer, which renders its ERP's payload and writes its outbox
    row (or puts it on an integration admin's case when the mapping cannot render it). The
    invoice goes to the ERP that serves its legal entity; with `as_made`, to the one that served
    it when the invoice was made (an entity switched to another ERP since: the draft finishes
    where it started)."""
    contact_ids = invoice_contact_ids(invoices)
    items = []
    for invoice, lines in invoices:
        connection = routes.connection_of(invoice, as_made=as_made)
        if connection is None:  # only a retry can meet this: its route was removed since
            logger.warning("invoice %s has no ERP route any more; not sent", invoice.pk)
            continue
        contact_id = contact_ids.get((connection.pk, invoice.customer_id))
        items.append(
            OutboundItem(
                connection=connection,
                record=invoice,
                canonical=invoice_canonical(invoice, lines, contact_id),
                context=_invoice_context(invoice, lines),
            )
        )
    messages = outbound_messages(
        items=items,
        canonical_model="invoice",
        action="create",
        process=PROCESS,
        step=POST_STEP,
        version=1,
        retried=retried,
    )
    outbox_enqueue(messages=messages)


def invoice_canonical(
    invoice: Invoice, lines: Sequence[InvoiceLine], contact_id: str | None
) -> dict[str, Any]:
    """The draft invoice as the sync layer renders it (see OUTBOUND_FIELDS in
    integrations/mapping/canonical.py): its fields, the customer both by its id in the target
    (when known) and by value, the issuing entity, the contract's tax rate, one line per billing
    event. A key Concord has no value for is left out."""
    customer = invoice.customer
    contract = invoice.contract
    canonical: dict[str, Any] = {
        "reference": invoice_reference(invoice),
        "status": invoice.status,
        "currency": invoice.currency,
        "issue_date": invoice.issue_date,
        "due_date": invoice.due_date,
        "legal_entity__code": invoice.legal_entity.code,
        "customer__name": customer.name,
        "lines": [
            {
                "description": event.description,
                "quantity": event.quantity,
                "unit_amount": event.unit_amount,
                "amount": event.amount,
            }
            for event in lines
        ],
    }
    if contact_id:
        canonical["customer__external_id"] = contact_id
    if customer.tax_number:
        canonical["customer__tax_number"] = customer.tax_number
    if contract is not None and contract.tax_rate is not None:
        canonical["tax_rate__code"] = contract.tax_rate.code
    return canonical


def _invoice_context(invoice: Invoice, lines: Sequence[InvoiceLine]) -> dict[str, Any]:
    """What the outbox row and any case about the invoice say about it."""
    # Hours are the time lines' quantities; an expense line's quantity is one expense.
    hours = sum((e.quantity for e in lines if getattr(e, "expense_id", None) is None), Decimal("0"))
    return {
        "what": "invoice",
        "subject": f"customer {invoice.customer.name}",
        "label": f"Draft invoice {invoice_reference(invoice)} ({len(lines)} lines)",
        "amount": str(invoice.total),
        "currency": invoice.currency,
        "hours": str(hours),
        "queue": Queue.FINANCE,
    }


def invoice_contact_ids(
    invoices: Sequence[tuple[Invoice, Sequence[InvoiceLine]]],
) -> dict[tuple[int, int], str]:
    """The customer's id in each target ERP, where Concord knows it."""
    customer_type = ContentType.objects.get_for_model(Customer)
    wanted = {invoice.customer_id for invoice, _ in invoices}
    return {
        (x.connection_id, x.object_id): x.external_id
        for x in CrossReference.objects.filter(content_type=customer_type, object_id__in=wanted)
    }


def invoice_reference(invoice: Invoice) -> str:
    """Concord's reference for an invoice, sent with it: how a retried create finds the invoice
    it already made in the ERP (look-up-before-create)."""
    return f"{Invoice.REFERENCE_PREFIX}{invoice.pk}"


def _resend_unrendered(routes: _Routes) -> None:
    """Invoices of earlier runs still without an outbox row: their ERP's mapping could not
    render them (their case says why). Rendered again, so a fixed mapping sends them without
    anyone replaying anything; their case clears itself. In the usual run there are none and
    this is one query."""
    invoice_type = ContentType.objects.get_for_model(Invoice)
    queued = OutboxMessage.objects.filter(
        content_type=invoice_type, object_id=OuterRef("pk"), process=PROCESS, step=POST_STEP
    )
    # Time and expenses only: a milestone's billing event is posted by its own workflow
    # (milestones.py), which links it to its invoice only once the ERP has the invoice.
    billed = (
        BillingEvent.objects.filter(
            status=BillingEvent.Status.PENDING,
            invoice__isnull=False,
            source__in=(BillingEvent.Source.TIME, BillingEvent.Source.EXPENSE),
        )
        .order_by()
        .values("invoice_id")
    )
    unsent = list(
        Invoice.objects.filter(pk__in=billed, source_system="")
        .exclude(Exists(queued))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for start in range(0, len(unsent), RESEND_CHUNK):
        with transaction.atomic():
            invoices = list(
                Invoice.objects.select_related("customer", "contract__tax_rate", "legal_entity")
                .filter(pk__in=unsent[start : start + RESEND_CHUNK])
                .order_by("pk")
            )
            lines: dict[int, list[BillingEvent]] = defaultdict(list)
            for event in BillingEvent.objects.filter(invoice__in=invoices).order_by("pk"):
                lines[event.invoice_id].append(event)  # type: ignore[index]
            _post([(i, lines[i.pk]) for i in invoices], routes, retried=True, as_made=True)


# --- After delivery ---------------------------------------------------------------------------


def invoices_posted(messages: Sequence[OutboxMessage]) -> None:
    """The ERP has the draft invoices: record its numbers and mark their billing events invoiced."""
    # The ERP's answer, read through its published mapping: canonical fields, no vendor names.
    posted = {m.object_id: outbound_answer(m) for m in messages}
    invoices = Invoice.objects.in_bulk(list(posted))
    for invoice_id, answer in posted.items():
        invoice = invoices.get(invoice_id)
        if invoice is None:
            continue
        invoice.number = str(answer.get("number") or invoice.number)
        invoice.status = Invoice.Status.DRAFT
        invoice.source_system = SystemRole.ERP
    update_rows(Invoice, list(invoices.values()), ["number", "status", "source_system"])
    BillingEvent.objects.filter(invoice_id__in=list(posted)).update(
        status=BillingEvent.Status.INVOICED
    )


delivered_step_register(process=PROCESS, step=POST_STEP, handler=invoices_posted)
after_page_register(billing_after_page)
after_poll_register(billing_after_poll)


# The case types billing validation raises (_validate); their retry bills the held entries.
VALIDATION_CASE_TYPES = (
    "time_on_inactive_project",
    "project_without_legal_entity",
    "project_without_contract",
    "missing_rate",
    "missing_exchange_rate",
    "no_erp_route",
)


def billing_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a billing validation case (exceptions/retry.py): run the billing run again for
    the time entries it holds; those billed now take themselves off it."""
    held = BlockedRecord.objects.filter(case=case, record_type="timeentry")
    report = billing_run(entry_ids=list(held.values_list("record_id", flat=True)))
    return RetryResult(
        count=report.considered,
        summary=f"billed {report.billed} of {report.considered} held time entries"
        + (f"; {report.blocked} still blocked" if report.blocked else ""),
    )


retry_handler_register(
    case_types=VALIDATION_CASE_TYPES, handler=billing_case_retry, process=PROCESS
)

# The case types the expense checks raise (_validate_expense, EXPENSE_CASE_TYPES in the
# catalogue); their retry bills the held expenses.


def expense_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry an expense validation case (exceptions/retry.py): run the billing run again for
    the expenses it holds; those billed now take themselves off it."""
    held = BlockedRecord.objects.filter(case=case, record_type="expense")
    report = billing_run(expense_ids=list(held.values_list("record_id", flat=True)))
    return RetryResult(
        count=report.expenses_considered,
        summary=f"billed {report.expenses_billed} of {report.expenses_considered} held expenses"
        + (f"; {report.expenses_blocked} still blocked" if report.expenses_blocked else ""),
    )


retry_handler_register(case_types=EXPENSE_CASE_TYPES, handler=expense_case_retry, process=PROCESS)


# --- Invoices an ERP refused, sent again from the current data (a vendor_validation case) -----


def invoices_resend_case_retry(case: ExceptionCase) -> RetryResult:
    """Retry a vendor_validation case of billing (exceptions/retry.py): the ERP refused its
    invoices for their data (a customer's missing tax number), so replaying the payload it
    refused would only be refused again. Each parked invoice is rendered again from the
    canonical data as it is now (the customer as fixed) as the invoice's next version: a new
    row linked to the parked one, which is marked skipped. The new rows look the invoice up
    before creating it, so one whose first attempt landed after all is not posted twice. Other
    rows parked on the case (not this step's invoices) are replayed as they were."""
    invoice_type = ContentType.objects.get_for_model(Invoice)
    parked = list(
        OutboxMessage.objects.select_for_update(of=("self",))
        .select_related("connection")
        .filter(exception_case=case, state=OutboxMessage.State.PARKED)
        .order_by("pk")
    )
    ours = [
        m
        for m in parked
        if m.content_type_id == invoice_type.pk and m.process == PROCESS and m.step == POST_STEP
    ]
    others = [m for m in parked if m not in ours]
    replayed = len(outbox_replay(messages=others)) if others else 0
    sent = _resend_invoices(ours, case) if ours else 0
    words = [f"sent {sent} invoice(s) again from the current data"] if ours else []
    if others:
        words.append(f"replayed {replayed} {'other ' if ours else ''}parked outbox row(s)")
    return RetryResult(count=sent + replayed, summary="; ".join(words) or "nothing was parked")


def _resend_invoices(parked: Sequence[OutboxMessage], case: ExceptionCase) -> int:
    original = {m.object_id: m for m in parked}
    invoices = list(
        Invoice.objects.select_related("customer", "contract__tax_rate", "legal_entity")
        .filter(pk__in=list(original))
        .order_by("pk")
    )
    lines: dict[int, list[BillingEvent]] = defaultdict(list)
    for event in BillingEvent.objects.filter(invoice__in=invoices).order_by("pk"):
        lines[event.invoice_id].append(event)  # type: ignore[index]
    # The next version of each invoice: one more than any row it has had in this step.
    latest = dict(
        OutboxMessage.objects.filter(
            content_type=ContentType.objects.get_for_model(Invoice),
            object_id__in=list(original),
            process=PROCESS,
            step=POST_STEP,
        )
        .order_by()
        .values("object_id")
        .annotate(top=Max("record_version"))
        .values_list("object_id", "top")
    )
    contact_ids = invoice_contact_ids([(i, lines[i.pk]) for i in invoices])
    by_version: dict[int, list[OutboundItem]] = defaultdict(list)
    for invoice in invoices:
        # The ERP that refused it, whatever the routes say now: an invoice made for the legacy
        # ERP before its entity moved to the new one is fixed and posted where it started.
        connection = original[invoice.pk].connection
        by_version[latest.get(invoice.pk, 1) + 1].append(
            OutboundItem(
                connection=connection,
                record=invoice,
                canonical=invoice_canonical(
                    invoice,
                    lines[invoice.pk],
                    contact_ids.get((connection.pk, invoice.customer_id)),
                ),
                context=_invoice_context(invoice, lines[invoice.pk]),
            )
        )
    messages: list[OutboxMessage] = []
    for version, items in sorted(by_version.items()):
        messages += outbound_messages(
            items=items,
            canonical_model="invoice",
            action="create",
            process=PROCESS,
            step=POST_STEP,
            version=version,
            # Not `retried`: that would clear the invoices off this case now, before the ERP
            # has taken them; their delivery clears them (sync/failures.py close_cases_for).
        )
    for message in messages:
        message.needs_lookup = True  # the refused attempt may have landed after all
        message.replay_of = original[message.object_id]
        message.exception_case = case
    outbox_enqueue(messages=messages)
    sent = {m.object_id for m in messages}
    OutboxMessage.objects.filter(pk__in=[original[i].pk for i in sent]).update(
        state=OutboxMessage.State.SKIPPED,
        last_error="Sent again from the current data as a newer version; see that row.",
    )
    return len(sent)


retry_handler_register(
    case_types=("vendor_validation",), handler=invoices_resend_case_retry, process=PROCESS
)
