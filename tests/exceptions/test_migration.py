"""0002/0003: the JSON list of blocked records becomes BlockedRecord rows and case totals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("exceptions", "0001_initial")]
AFTER = [("exceptions", "0003_remove_exceptioncase_records")]


@pytest.mark.django_db(transaction=True)
def test_json_records_are_copied_into_rows_with_their_totals_and_back() -> None:
    try:
        _forward_and_back()
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def _forward_and_back() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("exceptions", "ExceptionCase")
    now = "2026-11-20T10:00:00Z"
    case = old.objects.create(
        fingerprint="f" * 64,
        process="time_to_erp",
        step="validate",
        case_type="missing_rate",
        queue="finance",
        message="2 approved time entries ...",
        first_seen_at=now,
        last_seen_at=now,
        records=[
            {"type": "timeentry", "id": 1, "label": "TE-1", "amount": "100.00",
             "currency": "GBP", "hours": "1.50"},
            {"type": "timeentry", "id": 2, "label": "TE-2", "amount": "40",
             "currency": "EUR", "hours": "2"},
            {"type": "timeentry", "id": 2, "label": "TE-2 again", "amount": "40",
             "currency": "EUR", "hours": "2"},
            {"type": "inboundmessage", "id": 9, "label": "time_entries 9"},
        ],
    )  # fmt: skip
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)

    new_apps = executor.loader.project_state(AFTER).apps
    migrated = new_apps.get_model("exceptions", "ExceptionCase").objects.get(pk=case.pk)
    rows = new_apps.get_model("exceptions", "BlockedRecord").objects.filter(case_id=case.pk)
    assert set(rows.values_list("record_type", "record_id", "label", "amount", "hours")) == {
        ("timeentry", 1, "TE-1", Decimal("100.00"), Decimal("1.50")),
        ("timeentry", 2, "TE-2", Decimal("40.00"), Decimal("2.00")),
        ("inboundmessage", 9, "time_entries 9", Decimal("0"), Decimal("0")),
    }
    assert migrated.record_count == 3
    assert migrated.hours_blocked == Decimal("3.50")
    assert migrated.amounts == {"EUR": "40.00", "GBP": "100.00"}
    assert (migrated.amount_blocked, migrated.currency) == (Decimal("0"), "")

    # And back: the rows become the JSON list again.
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("exceptions", "ExceptionCase")
    records = old.objects.get(pk=case.pk).records
    assert sorted((r["type"], r["id"], r["amount"]) for r in records) == [
        ("inboundmessage", 9, "0.00"),
        ("timeentry", 1, "100.00"),
        ("timeentry", 2, "40.00"),
    ]
