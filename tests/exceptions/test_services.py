"""Opening, joining, clearing and resolving cases through the one path (exceptions.services)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from exceptions.models import BlockedRecord, ExceptionCase
from exceptions.services import (
    IDS_PER_QUERY,
    INSERT_BATCH,
    Blocked,
    case_open_or_join,
    case_records_clear,
    case_resolve,
)

pytestmark = pytest.mark.django_db

PROCESS, STEP = "time_to_erp", "validate"


def _subject(project_id: int = 7) -> dict[str, Any]:
    return {"project_id": project_id, "project": f"P-{project_id} Apollo", "status": "closed"}


def _entry(pk: int, amount: str = "100", currency: str = "GBP", hours: str = "1") -> Blocked:
    return Blocked(
        record_type="timeentry",
        record_id=pk,
        label=f"TE-{pk}",
        amount=Decimal(amount),
        currency=currency,
        hours=Decimal(hours),
    )


def _open(records: list[Blocked], project_id: int = 7, process: str = PROCESS) -> ExceptionCase:
    return case_open_or_join(
        case_type="time_on_inactive_project",
        subject=_subject(project_id),
        records=records,
        process=process,
        step=STEP,
    )


def _fresh(case: ExceptionCase) -> ExceptionCase:
    return ExceptionCase.objects.get(pk=case.pk)


def test_open_takes_queue_priority_sla_and_wording_from_the_catalogue() -> None:
    case = _fresh(_open([_entry(1), _entry(2, amount="50.5", hours="2.25")]))
    assert case.status == ExceptionCase.Status.OPEN
    assert case.queue == "pmo"
    assert case.priority == ExceptionCase.Priority.P3
    assert case.sla_due_at is not None
    assert case.sla_due_at - case.first_seen_at == timedelta(days=3)  # P3
    assert case.record_count == 2
    assert case.hours_blocked == Decimal("3.25")
    assert case.amounts == {"GBP": "150.50"}
    assert (case.amount_blocked, case.currency) == (Decimal("150.50"), "GBP")
    assert case.occurrences == 2
    assert case.message == (
        "2 approved time entries (GBP 150.50, 3.25 hours) on project P-7 Apollo cannot be "
        "invoiced: the project is closed, so its time cannot be billed."
    )
    assert set(case.blocked_records.values_list("record_type", "record_id", "amount")) == {
        ("timeentry", 1, Decimal("100.00")),
        ("timeentry", 2, Decimal("50.50")),
    }


def test_join_adds_only_records_the_case_does_not_hold() -> None:
    first = _open([_entry(1), _entry(2)])
    again = _open([_entry(2), _entry(3, currency="EUR", amount="40"), _entry(3)])
    assert again.pk == first.pk
    case = _fresh(first)
    assert ExceptionCase.objects.count() == 1
    assert case.blocked_records.count() == 3
    assert case.record_count == 3
    assert case.hours_blocked == Decimal("3.00")
    assert case.amounts == {"EUR": "40.00", "GBP": "200.00"}
    # Two currencies: no single figure (it would add EUR to GBP).
    assert (case.amount_blocked, case.currency) == (Decimal("0"), "")
    assert case.occurrences == 2 + 3
    assert case.message.startswith("3 approved time entries (EUR 40.00 + GBP 200.00, 3.00 hours)")


def test_a_join_takes_the_latest_subject_wording() -> None:
    _open([_entry(1)])
    case = case_open_or_join(
        case_type="time_on_inactive_project",
        subject={**_subject(), "status": "on hold", "project": "P-7 Apollo II"},
        records=[_entry(2)],
        process=PROCESS,
        step=STEP,
    )
    assert "project P-7 Apollo II" in case.message
    assert "the project is on hold" in case.message


def test_a_different_subject_is_another_case() -> None:
    one = _open([_entry(1)], project_id=7)
    two = _open([_entry(1)], project_id=8)
    assert one.pk != two.pk


def test_a_subject_missing_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        case_open_or_join(
            case_type="time_on_inactive_project",
            subject={"project_id": 7, "project": "P-7"},
            records=[_entry(1)],
            process=PROCESS,
            step=STEP,
        )


def test_a_partial_clear_takes_the_records_off_and_rewords_the_case() -> None:
    case = _open([_entry(1), _entry(2, hours="2"), _entry(3, currency="EUR", amount="40")])
    resolved = case_records_clear(
        records=[("timeentry", 2), ("timeentry", 3), ("timeentry", 99)], note="billed"
    )
    assert resolved == set()
    case = _fresh(case)
    assert case.status == ExceptionCase.Status.OPEN
    assert list(case.blocked_records.values_list("record_id", flat=True)) == [1]
    assert case.record_count == 1
    assert case.hours_blocked == Decimal("1.00")
    assert case.amounts == {"GBP": "100.00"}
    assert (case.amount_blocked, case.currency) == (Decimal("100.00"), "GBP")
    assert case.message.startswith("1 approved time entry (GBP 100.00, 1.00 hours) on project")


def test_a_case_closes_itself_when_its_last_record_clears() -> None:
    case = _open([_entry(1), _entry(2)])
    other = _open([_entry(2)], project_id=8)
    resolved = case_records_clear(
        records=[("timeentry", 1), ("timeentry", 2)], note="Closed automatically: billed."
    )
    assert resolved == {case.pk, other.pk}
    case = _fresh(case)
    assert case.status == ExceptionCase.Status.RESOLVED
    assert case.resolution_note == "Closed automatically: billed."
    assert case.resolved_at is not None
    assert (case.record_count, case.hours_blocked, case.amounts) == (0, Decimal("0"), {})
    assert case.message.startswith("0 approved time entries on project P-7 Apollo")
    assert not BlockedRecord.objects.exists()
    # The root cause can come back: a new case opens beside the resolved one.
    assert _open([_entry(5)]).pk != case.pk


def test_a_clear_leaves_other_processes_and_cases_that_wait_for_a_person() -> None:
    elsewhere = _open([_entry(1)], process="reconciliation")
    conflict = case_open_or_join(
        case_type="ownership_conflict",
        subject={
            "model": "timeentry",
            "record_id": 1,
            "record": "time entry TE-1",
            "connection_id": 1,
            "connection": "Harvest",
            "fields": ["hours"],
            "changes": "hours to 8 (owned by the PSA)",
        },
        records=[_entry(1)],
        process="inbound",
        step="ownership",
    )
    here = _open([_entry(1)])
    assert case_records_clear(records=[("timeentry", 1)], note="billed", process=PROCESS) == {
        here.pk
    }
    assert _fresh(elsewhere).record_count == 1
    assert _fresh(conflict).status == ExceptionCase.Status.OPEN
    # Only the types named, when named.
    assert (
        case_records_clear(records=[("timeentry", 1)], note="synced", case_types=["missing_rate"])
        == set()
    )
    assert _fresh(elsewhere).status == ExceptionCase.Status.OPEN
    # Without a process, every open case that closes by itself; the conflict still waits.
    case_records_clear(records=[("timeentry", 1)], note="synced")
    assert _fresh(elsewhere).status == ExceptionCase.Status.RESOLVED
    assert _fresh(conflict).status == ExceptionCase.Status.OPEN


def test_resolve_by_hand_keeps_the_records_and_rewords() -> None:
    case = _open([_entry(1), _entry(2)])
    resolved = case_resolve(case_id=case.pk, note="Waived: written off", status="waived")
    assert resolved is not None
    case = _fresh(case)
    assert case.status == ExceptionCase.Status.WAIVED
    assert case.resolution_note == "Waived: written off"
    assert case.record_count == 2
    assert case.blocked_records.count() == 2
    # A later success no longer touches a closed case.
    assert case_records_clear(records=[("timeentry", 1)], note="billed") == set()
    assert _fresh(case).record_count == 2


@pytest.mark.parametrize("held", [10, 1_000])
def test_join_and_clear_cost_the_same_queries_whatever_the_case_holds(
    held: int, django_assert_num_queries: Any
) -> None:
    _open([_entry(pk) for pk in range(1, held + 1)])
    # PostgreSQL: savepoint; one statement that locks the case and inserts what it does not hold
    # yet; one that updates it and inserts its audit row; release. SQLite: the lock, the
    # insert, the update and the audit row one by one.
    one_statement = connection.vendor == "postgresql"
    with django_assert_num_queries(4 if one_statement else 6):
        _open([_entry(held + 1), _entry(1)])
    # Clear: savepoint; one statement that finds and locks the cases holding the records and
    # takes the records off them; one that updates the cases and inserts their audit rows;
    # release.
    with django_assert_num_queries(4 if one_statement else 6):
        case_records_clear(records=[("timeentry", 2), ("timeentry", held + 1)], note="billed")
    case = ExceptionCase.objects.get()
    assert case.record_count == held - 1
    assert case.blocked_records.count() == held - 1
    assert case.hours_blocked == Decimal(held - 1)
    assert case.amounts == {"GBP": f"{100 * (held - 1)}.00"}
    assert case.message.startswith(f"{held - 1} approved time entries (GBP {100 * (held - 1):,}.00")


def test_a_join_bigger_than_one_insert_adds_every_new_record() -> None:
    """More records than one INSERT takes (a first billing run): the case is locked first, then
    they go in by batches; the totals move by the new ones only."""
    case = _open([_entry(1), _entry(2)])
    joined = _open([_entry(pk) for pk in range(1, INSERT_BATCH + 502)])
    assert joined.pk == case.pk
    case = _fresh(case)
    assert case.record_count == INSERT_BATCH + 501
    assert case.blocked_records.count() == INSERT_BATCH + 501
    assert case.amounts == {"GBP": f"{100 * (INSERT_BATCH + 501)}.00"}
    assert case.occurrences == 2 + INSERT_BATCH + 501


def test_a_clear_bigger_than_one_statement_takes_every_record_off() -> None:
    """More records than one IN list takes: the cases are locked first, then the records go by
    chunks; the case still holding some stays open with the right totals."""
    held = IDS_PER_QUERY + 10
    case = _open([_entry(pk) for pk in range(1, held + 1)])
    other = _open([_entry(1), _entry(held + 1)], project_id=8)
    resolved = case_records_clear(
        records=[("timeentry", pk) for pk in range(1, held)], note="billed"
    )
    assert resolved == set()
    case, other = _fresh(case), _fresh(other)
    assert (case.record_count, case.blocked_records.count()) == (1, 1)
    assert case.amounts == {"GBP": "100.00"}
    assert (
        other.record_count,
        list(other.blocked_records.values_list("record_id", flat=True)),
    ) == (
        1,
        [held + 1],
    )
    assert other.message.startswith("1 approved time entry (GBP 100.00, 1.00 hours)")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's lock waits")
def test_two_concurrent_openers_make_one_case() -> None:
    """A holds its new case uncommitted; B finds no open case, inserts its own and waits on the
    unique index; when A commits, B's insert fails and B joins A's case."""
    a_opened, release_a = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def opener_a() -> None:
        try:
            with transaction.atomic():
                results["a"] = _open([_entry(1)]).pk
                a_opened.set()
                release_a.wait(20)
        except Exception as exc:  # surfaced by the asserts below
            results["a_error"] = exc
        finally:
            connection.close()

    def opener_b() -> None:
        try:
            a_opened.wait(20)
            results["b"] = _open([_entry(2)]).pk
        except Exception as exc:
            results["b_error"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=opener_a), threading.Thread(target=opener_b)]
    for t in threads:
        t.start()
    assert a_opened.wait(20)
    waited = _wait_for_a_lock_wait()
    release_a.set()
    for t in threads:
        t.join(30)
    assert waited, "B never waited on A's uncommitted case"
    assert "a_error" not in results
    assert "b_error" not in results
    assert results["a"] == results["b"]
    (case,) = ExceptionCase.objects.all()
    assert case.record_count == 2
    assert case.occurrences == 2
    assert set(case.blocked_records.values_list("record_id", flat=True)) == {1, 2}


def _wait_for_a_lock_wait(timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.02)
    return False
