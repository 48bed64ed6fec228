"""Two people act on one case at the same moment, each on their own database connection: the
second gets a clear message, and the work is retried exactly once."""

from __future__ import annotations

import itertools
import re
import threading
import time
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from exceptions import actions, retry
from exceptions.errors import CaseConflict
from exceptions.models import CaseEvent, ExceptionCase
from exceptions.retry import RetryResult
from exceptions.services import case_records_clear
from integrations.models import OutboxMessage
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.exceptions.cases import entries, finance_case, finance_user, pmo_case
from tests.factories import CustomerFactory, make_connection

# The second hears who acted and when; "0 seconds" unless the machine is very busy.
RETRIED_BY_ADA = r"ada retried this case \d+ seconds? ago; nothing was done\."

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's row locks"),
]


def _parked_case(rows: int) -> ExceptionCase:
    case = finance_case()
    conn = make_connection()
    outbox_enqueue(
        messages=[
            outbox_message(
                connection=conn,
                process="time_to_erp",
                step="post_invoice",
                operation="put_invoices",
                record=CustomerFactory.create(),
                version=1,
                payload={"Reference": f"R{i}"},
            )
            for i in range(rows)
        ]
    )
    OutboxMessage.objects.update(state="parked", exception_case=case)
    return case


def _slowed(monkeypatch: pytest.MonkeyPatch, entered: threading.Event) -> None:
    """The outbox retry, holding its lock 0.5 s: the other person's request arrives while the
    first is still inside, and must wait for it."""
    real = retry._handlers[("vendor_validation", None)]

    def slow(case: ExceptionCase) -> RetryResult:
        entered.set()
        time.sleep(0.5)
        return real(case)

    monkeypatch.setitem(retry._handlers, ("vendor_validation", None), slow)


def _race(*calls: Any) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        try:
            start.wait(10)
            results[i] = calls[i]()
        except Exception as exc:  # the assertions below read it
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_two_people_retry_one_case_at_once_and_it_is_retried_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = _parked_case(3)
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    entered = threading.Event()
    _slowed(monkeypatch, entered)

    def bob_after_ada() -> Any:
        entered.wait(10)  # Ada holds the lock now
        return actions.case_retry(actor=bob, case_id=case.pk, revision=0)

    ada_result, bob_result = _race(
        lambda: actions.case_retry(actor=ada, case_id=case.pk, revision=0), bob_after_ada
    )
    assert isinstance(ada_result, actions.RetryOutcome), ada_result
    assert ada_result.count == 3
    assert isinstance(bob_result, CaseConflict), bob_result
    assert re.fullmatch(RETRIED_BY_ADA, str(bob_result))
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3
    assert list(
        CaseEvent.objects.filter(action="retried").values_list("actor_label", flat=True)
    ) == ["ada"]
    assert ExceptionCase.objects.get(pk=case.pk).revision == 1


def test_two_browsers_retry_through_the_api_and_exactly_one_retry_happens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = _parked_case(2)
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    entered = threading.Event()
    _slowed(monkeypatch, entered)

    def post(person: Any, wait: bool) -> Any:
        if wait:
            entered.wait(10)
        client = APIClient()
        client.force_authenticate(person)
        return client.post(f"/api/v1/cases/{case.pk}/retry/", {"revision": 0}, format="json")

    first, second = _race(lambda: post(ada, False), lambda: post(bob, True))
    assert (first.status_code, second.status_code) == (202, 409)
    assert first.json()["count"] == 2
    assert re.fullmatch(RETRIED_BY_ADA, second.json()["detail"])
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 2
    assert CaseEvent.objects.filter(action="retried").count() == 1


def test_joins_and_clears_racing_on_one_case_lose_no_update() -> None:
    """Seven writers at once on one case, each on its own connection: four join 40 new records
    one by one, three clear 30 of the 40 it held. Its totals are what its records add up to, its
    message says them, and its trail reads as one change after another (each starts from the
    count the previous one left)."""
    held = entries(40, amount="100", currency="EUR", hours="1")
    case = pmo_case(4242, records=held)
    new = entries(40, amount="10", currency="GBP", hours="0.5")

    def joiner(batch: list[Any]) -> None:
        for record in batch:
            pmo_case(4242, records=[record])

    def clearer(batch: list[Any]) -> None:
        for record in batch:
            case_records_clear(records=[record.key], note="billed")

    results = _race(
        *(lambda b=new[i::4]: joiner(b) for i in range(4)),
        *(lambda b=held[i:30:3]: clearer(b) for i in range(3)),
    )
    assert results == [None] * 7, results
    case = ExceptionCase.objects.get(pk=case.pk)
    assert case.status == "open"
    assert case.blocked_records.count() == 50
    assert case.record_count == 50
    assert case.amounts == {"EUR": "1000.00", "GBP": "400.00"}
    assert case.hours_blocked == 30
    assert case.message.startswith(
        "50 approved time entries (EUR 1,000.00 + GBP 400.00, 30.00 hours) on project"
    )
    trail = list(CaseEvent.objects.filter(case=case).order_by("id"))
    assert [e.action for e in trail].count("joined") == 40
    assert [e.action for e in trail].count("cleared") == 30
    for previous, event in itertools.pairwise(trail):
        step = 1 if event.action == "joined" else -1
        assert event.before["record_count"] == previous.after["record_count"], event.pk
        assert event.after["record_count"] == previous.after["record_count"] + step, event.pk
