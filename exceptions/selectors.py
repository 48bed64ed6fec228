"""Reads behind the exception queue pages and the cases API.

- `case_list`: a user's cases (their queues only: exceptions/access.py), filtered by
  `CaseFilterSet` (django-filter), sorted by SLA due, amount blocked or age, one page at a time
  by keyset (a cursor on (sort key, id)): each page is one index range scan of `limit + 1` rows
  however deep it is, and no page counts the whole table.
- `case_totals`: counts and amount blocked per currency over the same filtered set (one
  aggregate, plus one small read of the cases blocking several currencies).
- `case_my_work`, `queue_sla_overview`, `queue_list`: "my work", the SLA view and the queues.
- `case_detail`: one case with everything its page shows, in a fixed number of queries
  whatever it holds.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import django_filters
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import connection as db_connection
from django.db.models import Count, Q, QuerySet, Sum
from django.urls import NoReverseMatch, get_script_prefix, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from exceptions.access import CaseAccess, case_access
from exceptions.catalogue import CATALOGUE, CaseType
from exceptions.errors import CaseForbidden, CaseNotFound, CaseRefused
from exceptions.models import (
    BlockedRecord,
    CaseComment,
    CaseEvent,
    ExceptionCase,
    SlaPolicy,
    WorkQueue,
)
from exceptions.retry import retry_handler_for
from integrations import models as m

OPEN = ExceptionCase.Status.OPEN
# Rows per page: 50 by default, 200 at most.
PAGE_SIZE = 50
PAGE_MAX = 200
# What the detail page shows of a big case: the first 50 blocked records (the rest are counted
# on the case and listed page by page elsewhere), the latest 10 outbox rows with their attempts
# (each row's payload and vendor answers are pages of JSON: ten are what a person reads),
# the latest 200 audit rows, 20 other cases of the group.
DETAIL_RECORDS = 50
DETAIL_ROWS = 10
DETAIL_EVENTS = 200
DETAIL_GROUP = 20
# Matches a search resolves to per kind (customers by name, invoices by number, ...): a name
# that matches more than 50 customers is too vague to page through anyway.
SEARCH_MATCHES = 50
SEARCH_CASES = 10_000
# Cases blocking several currencies read one by one for the totals (rare: most root causes are
# in one currency); past this many the per-currency amounts leave them out and say so.
MIXED_MAX = 1_000


# --- Sorting and keyset pagination ----------------------------------------------------------------


@dataclass(frozen=True)
class Sort:
    field: str
    descending: bool = False
    # Cases from before SLAs have none: they come last, in id order.
    nullable: bool = False

    def order(self) -> list[str]:
        sign = "-" if self.descending else ""
        return [f"{sign}{self.field}", f"{sign}id"]


SORTS: dict[str, Sort] = {
    "sla": Sort("sla_due_at", nullable=True),  # soonest due first
    "amount": Sort("amount_blocked", descending=True),  # biggest first
    "age": Sort("first_seen_at"),  # oldest first
}
DEFAULT_SORT = "sla"


@dataclass
class CasePage:
    cases: list[ExceptionCase]
    # Pass back as `cursor` for the next page; None on the last.
    next_cursor: str | None
    sort: str


def cursor_encode(sort: str, value: Any, pk: int) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    raw = json.dumps([sort, value, pk], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str, sort: str) -> tuple[Any, int]:
    """(sort key, id) of the last row of the previous page."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name, value, pk = json.loads(raw)
        if name != sort or not isinstance(pk, int):
            raise ValueError
        spec = SORTS[sort]
        if value is None:
            if not spec.nullable:
                raise ValueError
        elif spec.field == "amount_blocked":
            value = Decimal(value)
        else:
            value = parse_datetime(value)
            if value is None:
                raise ValueError
        return value, pk
    except (ValueError, TypeError, KeyError, InvalidOperation, binascii.Error):
        raise CaseRefused(
            "This page link is not valid (or was made for another sort); start from the first page."
        ) from None


def case_page(
    *,
    cases: QuerySet[ExceptionCase],
    sort: str,
    cursor: str | None,
    limit: int = PAGE_SIZE,
    limit_max: int = PAGE_MAX,
) -> CasePage:
    """One page of `cases` (from `case_queryset`) in `sort` order after `cursor`. `limit_max`
    bounds what a person may ask for; the CSV export walks pages of 1,000."""
    spec = SORTS.get(sort)
    if spec is None:
        raise CaseRefused(f"Sort by {', '.join(SORTS)}; not {sort!r}.")
    limit = max(1, min(limit, limit_max))
    cases = cases.select_related("assignee", "legal_entity")
    rows: list[ExceptionCase] = []
    if cursor is None:
        value, pk, in_nulls = None, 0, False
    else:
        value, pk = cursor_decode(cursor, sort)
        in_nulls = value is None
    f = spec.field
    if not in_nulls:
        keyed = cases.filter(**{f"{f}__isnull": False}) if spec.nullable else cases
        if cursor is not None:
            # The range condition alone (>= / <=) is what the index scan starts from; the OR
            # only steps past the rows of the same key already shown.
            if spec.descending:
                keyed = keyed.filter(Q(**{f"{f}__lt": value}) | Q(**{f: value, "pk__lt": pk}))
                keyed = keyed.filter(**{f"{f}__lte": value})
            else:
                keyed = keyed.filter(Q(**{f"{f}__gt": value}) | Q(**{f: value, "pk__gt": pk}))
                keyed = keyed.filter(**{f"{f}__gte": value})
        rows = list(keyed.order_by(*spec.order())[: limit + 1])
        pk = 0
    if spec.nullable and len(rows) <= limit:
        # Past the last case with a due date: those without one, by id (their own index range).
        nulls = cases.filter(**{f"{f}__isnull": True, "pk__gt": pk}).order_by("pk")
        rows += list(nulls[: limit + 1 - len(rows)])
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    next_cursor = cursor_encode(sort, getattr(last, f), last.pk) if more and last else None
    return CasePage(cases=rows, next_cursor=next_cursor, sort=sort)


# --- Filters --------------------------------------------------------------------------------------

SLA_STATES = [("ok", "On time"), ("due_soon", "Due soon"), ("breached", "Breached")]


def _queue_choices() -> list[tuple[str, str]]:
    return list(WorkQueue.objects.order_by("name").values_list("code", "name"))


def _case_type_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(CATALOGUE)]


class CaseFilterSet(django_filters.FilterSet):
    """The queue list's filters. `assignee` takes a user id, "me" or "none"; `q` searches the
    business ids a person has in hand (see `case_search_q`)."""

    # distinct=False: these filter columns of the case itself, so no row can repeat, and a
    # DISTINCT would sort every matching row before the page's LIMIT.
    queue = django_filters.MultipleChoiceFilter(choices=_queue_choices, distinct=False)
    status = django_filters.ChoiceFilter(choices=ExceptionCase.Status.choices)
    process = django_filters.CharFilter()
    case_type = django_filters.MultipleChoiceFilter(choices=_case_type_choices, distinct=False)
    legal_entity = django_filters.NumberFilter(field_name="legal_entity_id")
    region = django_filters.ChoiceFilter(choices=m.Project.Region.choices)
    assignee = django_filters.CharFilter(method="filter_assignee")
    sla = django_filters.ChoiceFilter(choices=SLA_STATES, method="filter_sla")
    amount_min = django_filters.NumberFilter(field_name="amount_blocked", lookup_expr="gte")
    amount_max = django_filters.NumberFilter(field_name="amount_blocked", lookup_expr="lte")
    q = django_filters.CharFilter(method="filter_search", max_length=100)

    class Meta:
        model = ExceptionCase
        fields: list[str] = []

    def __init__(
        self,
        *args: Any,
        user: Any = None,
        queue_choices: Sequence[tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        if queue_choices is not None:  # the queues the caller read already: not read again
            self.filters["queue"].extra["choices"] = queue_choices

    def filter_assignee(
        self, cases: QuerySet[ExceptionCase], name: str, value: str
    ) -> QuerySet[ExceptionCase]:
        if value == "me":
            return cases.filter(assignee_id=getattr(self.user, "pk", None))
        if value == "none":
            return cases.filter(assignee__isnull=True)
        if value.isdigit():
            return cases.filter(assignee_id=int(value))
        raise CaseRefused(f'Assignee is a user id, "me" or "none"; not {value!r}.')

    def filter_sla(
        self, cases: QuerySet[ExceptionCase], name: str, value: str
    ) -> QuerySet[ExceptionCase]:
        return cases.filter(sla_state_q(value))

    def filter_search(
        self, cases: QuerySet[ExceptionCase], name: str, value: str
    ) -> QuerySet[ExceptionCase]:
        return cases.filter(case_search_q(value)) if value.strip() else cases


# Due soon, for a priority the SlaPolicy table has no row for.
DUE_SOON_DEFAULT = timedelta(hours=4)


def sla_windows() -> dict[int, timedelta]:
    """How close to its deadline a case of each priority is due soon (SlaPolicy)."""
    windows = dict(SlaPolicy.objects.values_list("priority", "due_soon_within"))
    return {p: windows.get(p, DUE_SOON_DEFAULT) for p in ExceptionCase.Priority.values}


def sla_state_q(state: str, *, now: datetime | None = None) -> Q:
    """Open cases on time, due soon (within their priority's SlaPolicy.due_soon_within of the
    deadline) or breached (past it). One read of the (four-row) SLA table."""
    now = now or timezone.now()
    if state == "breached":
        return Q(status=OPEN, sla_due_at__lt=now)
    windows = sla_windows()
    soon = Q()
    for priority, window in windows.items():
        soon |= Q(priority=priority, sla_due_at__lt=now + window)
    if state == "due_soon":
        # The widest window bounds the index range; the priorities' own windows filter in it.
        within = Q(sla_due_at__gte=now, sla_due_at__lt=now + max(windows.values()))
        return Q(status=OPEN) & within & soon
    return Q(status=OPEN) & (Q(sla_due_at__isnull=True) | (Q(sla_due_at__gte=now) & ~soon))


def case_sla_state(case: ExceptionCase, *, now: datetime, windows: Mapping[int, timedelta]) -> str:
    """One case's SLA state by the rule of `sla_state_q`: "breached", "due_soon", "ok"; "none"
    for an open case without a deadline (from before SLAs), "" for a closed one. `windows` is
    `sla_windows()`, read once per page."""
    if case.status != OPEN:
        return ""
    if case.sla_due_at is None:
        return "none"
    if case.sla_due_at < now:
        return "breached"
    if case.sla_due_at < now + windows.get(case.priority, DUE_SOON_DEFAULT):
        return "due_soon"
    return "ok"


_CASE_ID = re.compile(r"#?(\d{1,18})")
_ENTRY_ID = re.compile(r"(?i)TE-?(\d{1,18})")
_INVOICE_REF = re.compile(r"(?i)CONCORD-INV-(\d{1,18})")


def case_search_q(term: str) -> Q:
    """Cases a business id or name points at, each resolved through an index of a small table
    or of BlockedRecord's (record type, record id), never by a scan of the cases:

    - a case id ("#123", "123") or a time entry id ("TE-123", "123"): the case, or the cases
      holding that time entry;
    - an invoice number ("INV-0042") or Concord's reference ("CONCORD-INV-5"): the cases holding
      that invoice;
    - a project code ("P-007"): the cases about the project or holding its time entries;
    - a customer's name, or part of it ("Acme"): the cases about its projects, contracts,
      invoices or itself;
    - a contract number: the cases of its customer;
    - any id a vendor gave (an opportunity "006...", a Xero contact id): the canonical record
      it is cross-referenced to, and the raw inbound messages with that id that cases hold.
    """
    term = term.strip()[:100]
    found = Q(pk__in=[])
    held: list[Q] = []
    if match := _CASE_ID.fullmatch(term):
        found |= Q(pk=int(match[1]))
        held.append(Q(record_type="timeentry", record_id=int(match[1])))
    if match := _ENTRY_ID.fullmatch(term):
        held.append(Q(record_type="timeentry", record_id=int(match[1])))
    if match := _INVOICE_REF.fullmatch(term):
        held.append(Q(record_type="invoice", record_id=int(match[1])))
    if any(c.isdigit() for c in term):
        # Through the (legal entity, number) index: the entities are a handful.
        entities = list(m.LegalEntity.objects.values_list("pk", flat=True))
        invoices = m.Invoice.objects.filter(legal_entity_id__in=entities, number=term).exclude(
            number=""
        )
        held.append(Q(record_type="invoice", record_id__in=invoices.values("pk")[:SEARCH_MATCHES]))
    projects = list(
        m.Project.objects.filter(code__iexact=term).values_list("pk", flat=True)[:SEARCH_MATCHES]
    )
    if projects:
        found |= Q(project_id__in=projects)
        entries = m.TimeEntry.objects.filter(project_id__in=projects).values("pk")
        held.append(Q(record_type="timeentry", record_id__in=entries))
    customers = list(
        m.Customer.objects.filter(name__icontains=term).values_list("pk", flat=True)[
            :SEARCH_MATCHES
        ]
    )
    customers += list(
        m.Contract.objects.filter(number__iexact=term).values_list("customer_id", flat=True)[
            :SEARCH_MATCHES
        ]
    )
    if customers:
        found |= Q(customer_id__in=customers)
    # A vendor's id: through the cross-references' (connection, type, external id) index and
    # the inbound messages' (connection, object type, external id) one; the connections, types
    # and feeds are a few dozen, given as lists so each is one index descent.
    connections = list(m.Connection.objects.values_list("pk", flat=True))
    types = list(ContentType.objects.filter(app_label="integrations").values_list("pk", flat=True))
    refs = m.CrossReference.objects.filter(
        connection_id__in=connections, content_type_id__in=types, external_id=term
    ).select_related("content_type")
    for ref in refs[:SEARCH_MATCHES]:
        model = ref.content_type.model
        held.append(Q(record_type=model, record_id=ref.object_id))
        if model == "project":
            found |= Q(project_id=ref.object_id)
        elif model == "customer":
            found |= Q(customer_id=ref.object_id)
    feeds = Q()
    for connection_id, object_type in (
        m.MappingSet.objects.order_by().values_list("connection_id", "object_type").distinct()
    ):
        feeds |= Q(connection_id=connection_id, object_type=object_type)
    if feeds:
        messages = m.InboundMessage.objects.filter(feeds, external_id=term).values("pk")
        held.append(Q(record_type="inboundmessage", record_id__in=messages[:SEARCH_MATCHES]))
    if not held:
        return found
    # The cases holding those records, read first as a list of ids, each kind of record by its
    # own branch of one UNION ALL (each an index scan of BlockedRecord's (type, id) index).
    # PostgreSQL cannot use an index for each side of an OR holding a subquery, e.g.
    # `project_id = 7 OR id IN (SELECT case_id ...)` or `(type = 'timeentry' AND record_id =
    # 9) OR record_id IN (SELECT ...)`: it tests every case of the queue, or every blocked
    # record, instead (seconds at 5,000,000 blocked records); `project_id = 7 OR id = ANY(ids)`
    # is two index scans. At most SEARCH_CASES ids: a business id held up by more cases than
    # that is not a search.
    branches = [
        BlockedRecord.objects.filter(q).order_by().values_list("case_id", flat=True) for q in held
    ]
    held_by = branches[0].union(*branches[1:], all=True) if len(branches) > 1 else branches[0]
    return found | Q(pk__in=sorted(set(held_by[:SEARCH_CASES])))


# --- Lists ----------------------------------------------------------------------------------------


def case_queryset(
    *,
    user: Any,
    filters: Mapping[str, Any] | None = None,
    queue_choices: Sequence[tuple[str, str]] | None = None,
) -> QuerySet[Any]:
    """The cases `user` may see, filtered by CaseFilterSet (open ones unless `status` is given),
    unsorted: `case_list` pages it, `case_totals` adds it up. `queue_choices`: every queue's
    (code, name), when the caller has read them."""
    access = case_access(user)
    if access.none:
        return ExceptionCase.objects.none()
    data = dict(filters or {})
    if hasattr(filters, "getlist"):  # a QueryDict: keep the repeated keys (queue=a&queue=b)
        data = {key: filters.getlist(key) for key in filters}  # type: ignore[union-attr]
        data = {k: (v if k in ("queue", "case_type") else v[-1]) for k, v in data.items()}
    data = {k: v for k, v in data.items() if v not in ("", None, [])}
    data.setdefault("status", OPEN)
    base = ExceptionCase.objects.filter(access.q())
    filterset = CaseFilterSet(data, queryset=base, user=user, queue_choices=queue_choices)
    if not filterset.is_valid():
        errors = "; ".join(
            f"{name}: {' '.join(str(e) for e in errs)}" for name, errs in filterset.errors.items()
        )
        raise CaseRefused(f"These filters are not valid: {errors}")
    return filterset.qs


def case_list(
    *,
    user: Any,
    filters: Mapping[str, Any] | None = None,
    sort: str = DEFAULT_SORT,
    cursor: str | None = None,
    limit: int = PAGE_SIZE,
) -> CasePage:
    """One page of the queue list (see the module's docstring)."""
    return case_page(
        cases=case_queryset(user=user, filters=filters), sort=sort, cursor=cursor, limit=limit
    )


def case_my_work(
    *, user: Any, sort: str = DEFAULT_SORT, cursor: str | None = None, limit: int = PAGE_SIZE
) -> CasePage:
    """The open cases assigned to `user` (in queues they still work in)."""
    return case_list(user=user, filters={"assignee": "me"}, sort=sort, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class CurrencyTotal:
    currency: str  # "" for the cases that block no amount
    cases: int
    amount: Decimal


@dataclass(frozen=True)
class Totals:
    cases: int
    by_currency: list[CurrencyTotal]
    # Cases blocking several currencies left out of the amounts (more than MIXED_MAX of them).
    mixed_left_out: int = 0
    # More closed cases match than COUNT_CAP: `cases` counts COUNT_CAP of them.
    capped: bool = False
    # Closed (resolved, waived) cases counted in `cases`; they are in no amount.
    closed: int = 0


def case_totals(
    *,
    cases: QuerySet[ExceptionCase],
    status: str = OPEN,
    user: Any = None,
    filters: Mapping[str, Any] | None = None,
) -> Totals:
    """Counts and amount blocked per currency over a filtered set of one `status` (the filter's,
    open by default as in `case_queryset`).

    Given the `user` and the `filters` `cases` was made from, open cases filtered only by what
    CaseTally counts (queue, process, case type, legal entity, region, assignee) are added up
    from the tally: a few dozen rows however many cases match (`case_tally_totals`). Otherwise:

    Open cases: one GROUP BY (served by the amount indexes, which carry the currency) and one
    read of those that block several currencies (their `amounts`), which are few; a case in
    several currencies counts once in `cases` and once under each of its currencies.

    Closed cases (resolved, waived) block nothing any more, so they get no amounts, and they
    are counted to COUNT_CAP only: a count of 700,000 resolved cases is a scan nobody waits
    for."""
    if user is not None and filters is not None:
        tallied = case_tally_totals(user=user, filters=filters)
        if tallied is not None:
            return tallied
    if status != OPEN:
        closed = capped_count(cases)
        return Totals(
            cases=min(closed, COUNT_CAP),
            by_currency=[],
            capped=closed > COUNT_CAP,
            closed=min(closed, COUNT_CAP),
        )
    rows = list(
        cases.order_by()
        .values("currency")
        .annotate(n=Count("pk"), amount=Sum("amount_blocked"))
        .values_list("currency", "n", "amount")
    )
    total = sum(n for _, n, _ in rows)
    count: dict[str, int] = defaultdict(int)
    amount: dict[str, Decimal] = defaultdict(Decimal)
    for currency, n, value in rows:
        if currency:
            count[currency] += n
            amount[currency] += Decimal(value or 0)
    left_out = 0
    if any(not currency for currency, _, _ in rows):
        mixed = cases.filter(currency="").exclude(amounts={}).order_by()
        amounts = list(mixed.values_list("amounts", flat=True)[: MIXED_MAX + 1])
        if len(amounts) > MIXED_MAX:
            left_out = mixed.count()
            amounts = []
        for by_currency in amounts:
            for currency, value in by_currency.items():
                count[currency] += 1
                amount[currency] += Decimal(value)
        none = next((n for currency, n, _ in rows if not currency), 0) - len(amounts) - left_out
        if none > 0:
            count[""] = none
    return Totals(
        cases=total,
        by_currency=[
            CurrencyTotal(currency=c, cases=count[c], amount=amount[c])
            for c in sorted(count, key=lambda c: (c == "", c))
        ],
        mixed_left_out=left_out,
    )


# The filters CaseTally has a dimension for; any other (SLA state, amount range, search) is
# counted over the matching cases instead.
TALLIED_FILTERS = frozenset(
    {"queue", "status", "process", "case_type", "legal_entity", "region", "assignee"}
)


def _tally_where(user: Any, filters: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    """The WHERE clause over CaseTally's dimensions for `filters` (already validated by
    `case_queryset`), or None if the tally cannot answer them."""
    data = {k: v for k, v in filters.items() if v not in ("", None, [])}
    if data.get("status", OPEN) != OPEN or not set(data) <= TALLIED_FILTERS:
        return None
    access = case_access(user)
    clauses: list[str] = []
    params: list[Any] = []

    def many(values: Any) -> list[str]:
        return [values] if isinstance(values, str) else list(values)

    if not access.all_queues:
        clauses.append("queue = ANY(%s)")
        params.append(sorted(access.queues))
    if "queue" in data:
        clauses.append("queue = ANY(%s)")
        params.append(many(data["queue"]))
    if "case_type" in data:
        clauses.append("case_type = ANY(%s)")
        params.append(many(data["case_type"]))
    for key in ("process", "region"):
        if key in data:
            clauses.append(f"{key} = %s")
            params.append(str(data[key]))
    if "legal_entity" in data:
        try:
            entity = Decimal(str(data["legal_entity"]))
        except InvalidOperation:
            return None
        if entity != entity.to_integral_value():
            return None
        clauses.append("legal_entity_id = %s")
        params.append(int(entity))
    if "assignee" in data:
        value = str(data["assignee"])
        if value == "me":
            assignee = getattr(user, "pk", None) or -1
        elif value == "none":
            assignee = 0
        elif value.isdigit():
            assignee = int(value)
        else:
            return None
        clauses.append("assignee_id = %s")
        params.append(assignee)
    return " AND ".join(clauses) or "TRUE", params


def case_tally_totals(*, user: Any, filters: Mapping[str, Any]) -> Totals | None:
    """The open cases' totals from CaseTally and its deltas not yet folded in (one statement,
    so one snapshot), or None when the filters need the cases themselves or there is no tally
    (SQLite). The same figures as counting the cases (tests/exceptions/test_tally.py)."""
    if db_connection.vendor != "postgresql":
        return None
    found = _tally_where(user, filters)
    if found is None:
        return None
    where, params = found
    with db_connection.cursor() as cursor:
        # `where` is made of fixed clauses by _tally_where; the values are parameters.
        cursor.execute(
            "SELECT kind, currency, sum(cases), sum(amount) FROM ("  # noqa: S608
            f"SELECT kind, currency, cases, amount FROM exceptions_casetally WHERE {where} "
            "UNION ALL "
            f"SELECT kind, currency, cases, amount FROM exceptions_casetallydelta WHERE {where}"
            ") AS t GROUP BY kind, currency",
            params + params,
        )
        rows = cursor.fetchall()
    total = 0
    count: dict[str, int] = defaultdict(int)
    amount: dict[str, Decimal] = defaultdict(Decimal)
    for kind, currency, n, value in rows:
        if kind in ("s", "m", "n"):
            total += n
        if kind in ("s", "c") and n:
            count[currency] += n
            amount[currency] += Decimal(value or 0)
        elif kind == "n" and n:
            count[""] += n
    return Totals(
        cases=total,
        by_currency=[
            CurrencyTotal(currency=c, cases=count[c], amount=amount[c])
            for c in sorted(count, key=lambda c: (c == "", c))
            if count[c] > 0
        ],
    )


@dataclass(frozen=True)
class QueueSummary:
    code: str
    name: str
    # Open cases, those due soon and those past their SLA, each counted to COUNT_CAP + 1.
    open: int
    due_soon: int
    breached: int
    mine: bool  # the user works in it (integration admins see every queue, not all theirs)


# Counts on the queue and SLA pages stop here: 10,001 reads "more than 10,000". Each count is
# then one index range scan of at most that many entries (a few ms), never a count of a
# million-case queue.
COUNT_CAP = 10_000


def capped_count(cases: QuerySet[ExceptionCase]) -> int:
    """How many `cases`, counting no further than COUNT_CAP + 1."""
    return cases.order_by().values("pk")[: COUNT_CAP + 1].count()


def queue_list(*, user: Any, now: datetime | None = None) -> list[QueueSummary]:
    """The queues `user` sees, with their open, due-soon and breached counts (each capped at
    COUNT_CAP + 1: three bounded index range scans per queue)."""
    access = case_access(user)
    if access.none:
        return []
    now = now or timezone.now()
    queues = WorkQueue.objects.order_by("name")
    if not access.all_queues:
        queues = queues.filter(code__in=sorted(access.queues))
    soon, late = sla_state_q("due_soon", now=now), sla_state_q("breached", now=now)
    mine = access.own
    out = []
    for queue in queues:
        cases = ExceptionCase.objects.filter(queue=queue.code, status=OPEN)
        out.append(
            QueueSummary(
                code=queue.code,
                name=queue.name,
                open=capped_count(cases),
                due_soon=capped_count(cases.filter(soon)),
                breached=capped_count(cases.filter(late)),
                mine=queue.code in mine,
            )
        )
    return out


# People offered in an "assign to" select: a queue of more than 200 is a directory, not a team
# (past it, the API assigns by user id).
MEMBERS_MAX = 200


def queue_members(*, queues: Sequence[str], limit: int = MEMBERS_MAX) -> list[Any]:
    """Who the cases of `queues` can be given to: the active users of their role groups and
    their explicit members (the rule of exceptions/access.py), by username. One query."""
    user_model = get_user_model()
    # Two semi-joins rather than joins and a DISTINCT over every user they multiply.
    queue_ids = WorkQueue.objects.filter(code__in=queues).values("pk")
    groups = WorkQueue.groups.through.objects.filter(workqueue_id__in=queue_ids)
    of_groups = user_model.groups.through.objects.filter(
        group_id__in=groups.values("group_id")
    ).values("user_id")
    named = WorkQueue.members.through.objects.filter(workqueue_id__in=queue_ids).values("user_id")
    return list(
        user_model.objects.filter(is_active=True)
        .filter(Q(pk__in=of_groups) | Q(pk__in=named))
        .only("id", "username", "first_name", "last_name")
        .order_by("username")[:limit]
    )


@dataclass(frozen=True)
class QueueSla:
    queue: QueueSummary
    due_soon: list[ExceptionCase]
    breached: list[ExceptionCase]


def queue_sla_overview(
    *, user: Any, queue: str | None = None, limit: int = 20, now: datetime | None = None
) -> list[QueueSla]:
    """The SLA view: per queue the user sees (or only `queue`), the counts of cases due soon
    and breached and the first `limit` of each (breached: longest overdue first; due soon:
    soonest first)."""
    now = now or timezone.now()
    access = case_access(user)
    summaries = [s for s in queue_list(user=user, now=now) if queue in (None, s.code)]
    out = []
    for summary in summaries:
        cases = ExceptionCase.objects.filter(access.q(), queue=summary.code).select_related(
            "assignee"
        )
        order = ["sla_due_at", "id"]
        out.append(
            QueueSla(
                queue=summary,
                breached=list(
                    cases.filter(sla_state_q("breached", now=now)).order_by(*order)[:limit]
                ),
                due_soon=list(
                    cases.filter(sla_state_q("due_soon", now=now)).order_by(*order)[:limit]
                ),
            )
        )
    return out


# --- One case ---------------------------------------------------------------------------------


# The rows a case names, and the fields of theirs a case's page and actions read: the rest of a
# project's or a customer's many fields are not built into objects for every page.
CASE_RELATED = ("assignee", "legal_entity", "project", "customer", "connection")
CASE_RELATED_SHOWN = (
    "assignee__username",
    "assignee__first_name",
    "assignee__last_name",
    "assignee__email",
    "legal_entity__code",
    "legal_entity__name",
    "project__code",
    "project__name",
    "customer__name",
    "connection__name",
    "connection__vendor",
)
_CASE_FIELDS = tuple(f.name for f in ExceptionCase._meta.concrete_fields)


def case_get(*, user: Any, case_id: int) -> ExceptionCase:
    """The case, if `user` may see it: CaseNotFound when there is none, CaseForbidden when it
    is in a queue they do not work in."""
    case = (
        ExceptionCase.objects.select_related(*CASE_RELATED)
        # Of the related rows, what the page shows (and never the connection's secrets).
        .only(*_CASE_FIELDS, *CASE_RELATED_SHOWN)
        .filter(pk=case_id)
        .first()
    )
    if case is None:
        raise CaseNotFound(f"There is no case #{case_id}.")
    access = case_access(user)
    if not access.allows(case.queue):
        raise CaseForbidden(
            f"Case #{case_id} is in the {case.get_queue_display()} queue, which you do not work in."
        )
    return case


@dataclass(frozen=True)
class VendorRecord:
    """The record in a connected system, through its cross-reference."""

    connection_id: int
    connection: str
    vendor: str
    external_id: str
    # The cross-reference in Concord's API.
    url: str | None


@dataclass
class HeldRecord:
    record: BlockedRecord
    # The canonical record (or raw message) in Concord's API.
    url: str | None
    vendor: list[VendorRecord] = field(default_factory=list)


@dataclass(frozen=True)
class AttemptShown:
    """One call of an outbox row to its vendor, as the case page shows it (read as values: a
    huge case's page shows 40)."""

    started_at: datetime
    latency_ms: int
    status_code: int | None
    outcome: str
    error: str
    vendor_response: str

    def get_outcome_display(self) -> str:
        try:
            return str(m.SyncAttempt.Outcome(self.outcome).label)
        except ValueError:
            return self.outcome


@dataclass
class ParkedRow:
    """An outbox row parked on the case, with its attempts oldest first."""

    row: m.OutboxMessage
    attempts: list[AttemptShown]


@dataclass
class CaseDetail:
    case: ExceptionCase
    kind: CaseType | None
    can_retry: bool
    records: list[HeldRecord]
    more_records: int
    # The source payloads: the raw inbound messages the case holds.
    inbound: list[m.InboundMessage]
    # The mapped results: the outbox rows parked on the case (latest first), each with its
    # attempts (the vendor's response on each), oldest first.
    outbox: list[ParkedRow]
    # Outbox rows on the case beyond the latest DETAIL_ROWS shown.
    more_outbox: int
    group: list[ExceptionCase]
    comments: list[CaseComment]
    events: list[CaseEvent]


def case_detail(*, user: Any, case_id: int) -> CaseDetail:
    """Everything the case page shows, in a fixed number of queries whatever the case holds:
    the case, its first blocked records with links to the canonical record and to the record in
    the vendor, the raw inbound messages it holds (the source payload), the outbox rows parked
    on it (the mapped result) with every attempt and the vendor's response, the other open
    cases of its root-cause group, its comments and its audit trail."""
    case = case_get(user=user, case_id=case_id)
    # In the order of the (case, record type, record id) index: the first 50 of a case holding
    # 50,000 are read from it, not sorted.
    held = list(case.blocked_records.order_by("record_type", "record_id")[:DETAIL_RECORDS])
    records = [HeldRecord(record=r, url=_api_url(r.record_type, r.record_id)) for r in held]
    _attach_vendor_records(records)
    message_ids = [r.record_id for r in held if r.record_type == "inboundmessage"]
    inbound = (
        list(m.InboundMessage.objects.filter(pk__in=message_ids).order_by("id"))
        if message_ids
        else []
    )
    on_case = m.OutboxMessage.objects.filter(exception_case=case)
    rows = list(on_case.select_related("content_type").order_by("-id")[:DETAIL_ROWS])
    outbox = [ParkedRow(row=row, attempts=[]) for row in rows]
    _attach_attempts(outbox)
    # One count (an index range of the case's rows), so the page costs the same queries
    # whatever the case holds.
    outbox_total = on_case.count()
    return CaseDetail(
        case=case,
        kind=CATALOGUE.get(case.case_type),
        can_retry=case.status == OPEN and retry_handler_for(case) is not None,
        records=records,
        more_records=max(0, case.record_count - len(held)),
        inbound=inbound,
        outbox=outbox,
        more_outbox=outbox_total - len(outbox),
        group=case_group(case=case, access=case_access(user)),
        comments=list(case.comments.select_related("author").order_by("id")),
        events=list(case.events.select_related("actor").order_by("-id")[:DETAIL_EVENTS]),
    )


def case_group(
    *, case: ExceptionCase, access: CaseAccess, limit: int = DETAIL_GROUP
) -> list[ExceptionCase]:
    """The open cases of the case's root-cause group (the case itself included, first), in its
    queue: what "retry the whole group" retries (exceptions.actions.case_retry_group)."""
    if not case.group_key or not access.allows(case.queue):
        return [case]
    others = list(
        ExceptionCase.objects.filter(group_key=case.group_key, queue=case.queue, status=OPEN)
        .exclude(pk=case.pk)
        .order_by("id")[:limit]
    )
    return [case, *others]


def _api_url(record_type: str, record_id: int) -> str | None:
    prefix = _api_prefix(get_script_prefix(), record_type)
    return None if prefix is None else f"{prefix}{record_id}/"


@functools.lru_cache(maxsize=64)
def _api_prefix(script_prefix: str, record_type: str) -> str | None:
    """The API path of a record type's details up to the id ("/api/v1/time-entries/" for
    "timeentry", under the script prefix reverse adds): one reverse per type for the process,
    not one per record shown."""
    try:
        url = reverse(f"{record_type}-detail", args=[0])
    except NoReverseMatch:
        return None
    return url[: -len("0/")] if url.endswith("/0/") else None


def _attach_attempts(rows: Sequence[ParkedRow]) -> None:
    """Each outbox row's attempts, oldest first (one query for all of them, read as values)."""
    if not rows:
        return
    by_row = {parked.row.pk: parked for parked in rows}
    found = (
        m.SyncAttempt.objects.filter(messages__in=list(by_row))
        .order_by("started_at", "id")
        .values_list(
            "messages",
            "started_at",
            "latency_ms",
            "status_code",
            "outcome",
            "error",
            "vendor_response",
        )
    )
    for row_id, started_at, latency_ms, status_code, outcome, error, response in found:
        by_row[row_id].attempts.append(
            AttemptShown(started_at, latency_ms, status_code, outcome, error, response)
        )


def _attach_vendor_records(records: Sequence[HeldRecord]) -> None:
    """Each canonical record's cross-references (one query for all of them, read as values)."""
    by_type: dict[int, list[int]] = defaultdict(list)
    type_of: dict[str, int] = {}
    for held in records:
        record_type = held.record.record_type
        if record_type == "inboundmessage":
            continue
        if record_type not in type_of:
            try:
                model = apps.get_model("integrations", record_type)
            except LookupError:
                continue
            # ContentType's own cache: no query after the first for the process.
            type_of[record_type] = ContentType.objects.get_for_model(model).pk
        by_type[type_of[record_type]].append(held.record.record_id)
    if not by_type:
        return
    wanted = Q()
    for content_type_id, ids in by_type.items():
        wanted |= Q(content_type_id=content_type_id, object_id__in=ids)
    vendors = dict(m.Vendor.choices)
    refs: dict[tuple[int, int], list[VendorRecord]] = defaultdict(list)
    found = m.CrossReference.objects.filter(wanted).values_list(
        "pk",
        "content_type_id",
        "object_id",
        "connection_id",
        "connection__name",
        "connection__vendor",
        "external_id",
    )
    for pk, content_type_id, object_id, connection_id, name, vendor, external_id in found:
        refs[(content_type_id, object_id)].append(
            VendorRecord(
                connection_id=connection_id,
                connection=name,
                vendor=str(vendors.get(vendor, vendor)),
                external_id=external_id,
                url=_api_url("crossreference", pk),
            )
        )
    for held in records:
        shown_type = type_of.get(held.record.record_type)
        if shown_type is not None:
            held.vendor = refs.get((shown_type, held.record.record_id), [])
