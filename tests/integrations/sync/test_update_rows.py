"""update_rows writes what bulk_update would: each row its own values, of every column type the
outbox holds (text, JSON, timestamps, null, booleans, numbers), and nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.models import OutboxMessage
from integrations.sync.bulk import update_rows
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.factories import CustomerFactory, make_connection

pytestmark = pytest.mark.django_db


def _stored(count: int) -> list[OutboxMessage]:
    connection = make_connection()
    outbox_enqueue(
        messages=[
            outbox_message(
                connection=connection,
                process="time_to_erp",
                step="post_invoice",
                operation="put_invoices",
                record=customer,
                version=1,
                payload={"n": n},
            )
            for n, customer in enumerate(CustomerFactory.create_batch(count))
        ]
    )
    return list(OutboxMessage.objects.order_by("pk"))


def test_each_row_gets_its_own_values() -> None:
    rows = _stored(3)
    done_at = timezone.now() - timedelta(minutes=5)
    for n, row in enumerate(rows):
        row.state = OutboxMessage.State.DONE if n else OutboxMessage.State.PENDING
        row.done_at = done_at if n else None
        row.result = {"number": f"INV-{n}", "quote": 'it\'s "here"', "total": 12.5 + n}
        row.attempts = n + 2
        row.needs_lookup = bool(n % 2)
        row.last_error = "" if n else "a 'refusal'"

    update_rows(
        OutboxMessage,
        rows,
        ["state", "done_at", "result", "attempts", "needs_lookup", "last_error"],
    )

    for n, row in enumerate(OutboxMessage.objects.order_by("pk")):
        assert row.state == ("done" if n else "pending")
        assert row.done_at == (done_at if n else None)
        assert row.result == {"number": f"INV-{n}", "quote": 'it\'s "here"', "total": 12.5 + n}
        assert row.attempts == n + 2
        assert row.needs_lookup is bool(n % 2)
        assert row.last_error == ("" if n else "a 'refusal'")
        assert row.payload == {"n": n}  # not named: untouched


def test_a_column_null_in_every_row() -> None:
    rows = _stored(2)
    for row in rows:
        row.claimed_at = None
        row.first_attempt_at = None

    update_rows(OutboxMessage, rows, ["claimed_at", "first_attempt_at"])

    assert list(OutboxMessage.objects.values_list("claimed_at", "first_attempt_at")) == [
        (None, None),
        (None, None),
    ]


def test_nothing_to_write() -> None:
    update_rows(OutboxMessage, [], ["state"])
