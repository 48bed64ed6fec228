"""Keyset pagination of the queue list: every case exactly once across pages, in order, for each
sort, stable while cases are added; and a fixed number of queries per page and per case page
whatever the number of rows."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from exceptions import actions, selectors
from exceptions.errors import CaseRefused
from exceptions.models import ExceptionCase
from exceptions.services import Blocked
from integrations.models import CrossReference, InboundMessage, OutboxMessage, SyncAttempt
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.exceptions.cases import admin_user, entries, finance_case, finance_user
from tests.factories import CustomerFactory, TimeEntryFactory, make_connection

pytestmark = pytest.mark.django_db

_amounts = itertools.cycle(["10", "250", "250", "99.5", "1000", "250"])


def _cases(count: int) -> list[ExceptionCase]:
    """Finance cases with amounts that tie, due dates that tie (and a few without one), ages
    that differ."""
    made = []
    now = timezone.now()
    for i in range(count):
        case = finance_case(records=entries(1, amount=next(_amounts)))
        due = None if i % 7 == 3 else now + timedelta(hours=i % 4)
        ExceptionCase.objects.filter(pk=case.pk).update(
            sla_due_at=due, first_seen_at=now - timedelta(minutes=(i * 37) % 11)
        )
        made.append(case)
    return made


def _walk(user: Any, sort: str, limit: int, between: Any = None) -> list[int]:
    seen: list[int] = []
    cursor = None
    for page_number in range(100):
        page = selectors.case_list(user=user, sort=sort, cursor=cursor, limit=limit)
        seen += [c.pk for c in page.cases]
        if between is not None and page_number == 0:
            between()
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
    raise AssertionError("more than 100 pages")


def _expected(sort: str) -> list[int]:
    rows = ExceptionCase.objects.filter(status="open")
    if sort == "amount":
        return list(rows.order_by("-amount_blocked", "-id").values_list("pk", flat=True))
    if sort == "age":
        return list(rows.order_by("first_seen_at", "id").values_list("pk", flat=True))
    keyed = rows.filter(sla_due_at__isnull=False).order_by("sla_due_at", "id")
    nulls = rows.filter(sla_due_at__isnull=True).order_by("id")
    return [*keyed.values_list("pk", flat=True), *nulls.values_list("pk", flat=True)]


@pytest.mark.parametrize("sort", ["sla", "amount", "age"])
def test_every_case_appears_exactly_once_in_order_across_pages(sort: str) -> None:
    _cases(23)
    ada = finance_user()
    walked = _walk(ada, sort, limit=4)
    assert walked == _expected(sort)
    assert len(walked) == len(set(walked)) == 23


@pytest.mark.parametrize("sort", ["sla", "amount", "age"])
def test_cases_added_while_paging_do_not_repeat_or_hide_the_others(sort: str) -> None:
    before = {c.pk for c in _cases(17)}
    ada = finance_user()

    def add() -> None:
        _cases(6)  # some sort before the cursor, some after

    walked = _walk(ada, sort, limit=5, between=add)
    assert len(walked) == len(set(walked))
    assert before <= set(walked)


def test_a_page_link_made_for_another_sort_is_refused() -> None:
    _cases(3)
    ada = finance_user()
    page = selectors.case_list(user=ada, sort="amount", limit=1)
    assert page.next_cursor is not None
    with pytest.raises(CaseRefused, match="not valid"):
        selectors.case_list(user=ada, sort="age", cursor=page.next_cursor)
    with pytest.raises(CaseRefused, match="not valid"):
        selectors.case_list(user=ada, sort="age", cursor="garbage!")


def _queries(call: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        call()
    return len(captured)


@pytest.mark.parametrize("rows", [3, 40])
def test_a_list_page_costs_the_same_queries_whatever_it_shows(rows: int) -> None:
    _cases(rows)
    pk = finance_user().pk
    for case in ExceptionCase.objects.all()[:rows]:
        ExceptionCase.objects.filter(pk=case.pk).update(assignee_id=pk)

    def first_page() -> None:
        ada = User.objects.get(pk=pk)  # a fresh user: access is looked up again
        page = selectors.case_list(user=ada, limit=50)
        [(c.assignee.username if c.assignee else "", c.legal_entity) for c in page.cases]
        selectors.case_totals(cases=selectors.case_queryset(user=ada))

    # The user, access (role groups and queues, one query), the page (cases with their assignee
    # and entity; the page not being full, then those without a deadline), the totals.
    assert _queries(first_page) == 5


def _rich_case(size: int) -> ExceptionCase:
    """A case holding `size` time entries (each cross-referenced), `size` raw inbound messages,
    `size` parked outbox rows with two attempts each, `size` comments, and a group of `size`."""
    conn = make_connection(name=f"Xero {size}")
    time = [TimeEntryFactory.create() for _ in range(size)]
    for entry in time:
        CrossReference.objects.create(
            content_type_id=_ct("timeentry"),
            object_id=entry.pk,
            connection=conn,
            external_id=f"harvest-{entry.pk}",
        )
    messages = [
        InboundMessage.objects.create(
            connection=conn,
            source="webhook",
            object_type="Contacts",
            external_id=f"c{i}",
            dedupe_key=f"d{size}-{i}",
            payload={"Name": f"Contact {i}"},
        )
        for i in range(size)
    ]
    records = [
        *(Blocked("timeentry", e.pk, f"TE-{e.pk}", Decimal("10"), "EUR") for e in time),
        *(Blocked("inboundmessage", m.pk, f"Contacts c{m.pk}") for m in messages),
    ]
    case = finance_case(f"rich {size}", records=records)
    rows = [
        outbox_message(
            connection=conn,
            process="time_to_erp",
            step="post_invoice",
            operation="put_invoices",
            record=CustomerFactory.create(),
            version=1,
            payload={"Reference": f"R{size}-{i}"},
        )
        for i in range(size)
    ]
    outbox_enqueue(messages=rows)
    parked = OutboxMessage.objects.filter(connection=conn)
    parked.update(state="parked", exception_case=case)
    for row in parked:
        for status_code in (503, 400):
            attempt = SyncAttempt.objects.create(
                connection=conn, operation="put_invoices", started_at=timezone.now(),
                latency_ms=12, status_code=status_code, outcome="business",
                vendor_response='{"Message": "A validation exception occurred"}',
            )  # fmt: skip
            attempt.messages.add(row)
    ada = finance_user()
    for i in range(size):
        actions.case_comment(actor=ada, case_id=case.pk, text=f"note {i}")
        finance_case(f"rich {size}", complaint=f"other complaint {i}")  # same group
    return case


def _ct(model: str) -> int:
    return ContentType.objects.get_by_natural_key("integrations", model).pk


def test_the_case_page_costs_the_same_queries_whatever_the_case_holds() -> None:
    small, large = _rich_case(2), _rich_case(25)
    admin_pk = admin_user().pk
    counts = []
    for case in (small, large):

        def detail(case: ExceptionCase = case) -> None:
            admin = User.objects.get(pk=admin_pk)
            shown = selectors.case_detail(user=admin, case_id=case.pk)
            for held in shown.records:
                [v.external_id for v in held.vendor]
            for parked in shown.outbox:
                [a.vendor_response for a in parked.attempts]
            [c.author.username for c in shown.comments]
            [e.actor_label for e in shown.events]

        counts.append(_queries(detail))
    shown = selectors.case_detail(user=User.objects.get(pk=admin_pk), case_id=large.pk)
    assert len(shown.records) == 50
    assert len(shown.inbound) == 25
    assert (len(shown.outbox), shown.more_outbox) == (
        selectors.DETAIL_ROWS,
        25 - selectors.DETAIL_ROWS,
    )
    assert all(len(parked.attempts) == 2 for parked in shown.outbox)
    assert len(shown.group) == 21  # itself and the 20 first others
    assert all(held.vendor for held in shown.records if held.record.record_type == "timeentry")
    # The user, access (role groups), the case, its blocked records, their cross-references,
    # the inbound messages, the outbox rows, their count, their attempts, the group, comments,
    # audit trail.
    assert counts[0] == counts[1] == 12
