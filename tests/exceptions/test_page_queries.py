"""The issue's cross-check: the number of queries a queue page makes does not grow with the
rows it shows, through the real URLs. The queue list, "my work" and the SLA view with 5 cases
and with 50; a case's page holding 1 blocked record and 50, its parked row with 1 attempt and
20. Each page is also checked to really show the larger number."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from exceptions import actions
from exceptions.models import ExceptionCase
from integrations.models import OutboxMessage, SyncAttempt
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.exceptions.cases import entries, finance_case, finance_user
from tests.factories import CustomerFactory, make_connection

pytestmark = pytest.mark.django_db

ROW = re.compile(r'<tr id="case-(\d+)"')
SLA_ITEM = re.compile(r'<li><span class="sla-badge sla-(breached|due_soon)">')


def _client(person: User) -> Client:
    client = Client()
    client.force_login(person)
    return client


def _queries(client: Client, path: str) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured.captured_queries), response.content.decode()


def _cases(person: User, count: int) -> None:
    """`count` open finance cases taken by `person`, due from 2 hours ago to 2 hours ahead
    (breached and due soon: P2's window is 4 hours)."""
    for i in range(count):
        case = finance_case(records=entries(1, currency="GBP" if i % 2 else "EUR"))
        due = timezone.now() + timedelta(hours=(i % 5) - 2, minutes=1)
        ExceptionCase.objects.filter(pk=case.pk).update(sla_due_at=due)
        actions.case_take(actor=person, case_id=case.pk, revision=0)


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/cases/", ROW),
        ("/cases/?sort=amount&sla=breached", ROW),
        ("/cases/mine/", ROW),
        ("/cases/sla/", SLA_ITEM),
    ],
)
def test_a_list_page_makes_as_many_queries_for_50_rows_as_for_5(
    path: str, shown: re.Pattern[str]
) -> None:
    ada = finance_user()
    client = _client(ada)
    _cases(ada, 5)
    client.get(path)  # the session's first read
    few, page = _queries(client, path)
    rows_few = len(shown.findall(page))
    _cases(ada, 45)
    many, page = _queries(client, path)
    rows_many = len(shown.findall(page))
    assert rows_few <= 5 < rows_many, (rows_few, rows_many)
    assert many == few, f"{path}: {few} queries for {rows_few} rows, {many} for {rows_many}"


def _case_holding(records: int, attempts: int) -> ExceptionCase:
    """A finance case holding `records` time entries and a parked outbox row with `attempts`
    attempts (each refused by Xero)."""
    case = finance_case(records=entries(records))
    conn = make_connection(name=f"Xero for case {case.pk}")
    message = outbox_message(
        connection=conn,
        process="time_to_erp",
        step="post_invoice",
        operation="put_invoices",
        record=CustomerFactory.create(),
        version=1,
        payload={"Reference": f"CONCORD-INV-{case.pk}"},
    )
    outbox_enqueue(messages=[message])
    row = OutboxMessage.objects.get(idempotency_key=message.idempotency_key)
    OutboxMessage.objects.filter(pk=row.pk).update(state="parked", exception_case=case)
    for n in range(attempts):
        attempt = SyncAttempt.objects.create(
            connection=conn,
            operation="put_invoices",
            started_at=timezone.now() - timedelta(minutes=n),
            latency_ms=90,
            status_code=400,
            outcome="business",
            error=f"refusal {n}: TaxNumber is required",
            vendor_response='{"Message": "TaxNumber is required"}',
        )
        attempt.messages.add(row)
    return case


def test_a_case_page_makes_as_many_queries_for_50_records_and_20_attempts_as_for_1() -> None:
    person = finance_user()
    small, large = _case_holding(1, 1), _case_holding(50, 20)
    client = _client(person)
    client.get(f"/cases/{small.pk}/")  # the session's first read
    counts: list[int] = []
    pages: list[Any] = []
    for case in (small, large):
        count, page = _queries(client, f"/cases/{case.pk}/")
        counts.append(count)
        pages.append(page)
    # The large page really shows them: 50 held records' labels, 20 attempts' errors.
    assert pages[0].count("TE entry") == 1
    assert pages[1].count("TE entry") == 50
    assert len(re.findall(r"refusal \d+: TaxNumber is required", pages[0])) == 1
    assert len(re.findall(r"refusal \d+: TaxNumber is required", pages[1])) == 20
    assert counts[0] == counts[1], counts
