"""outbox_enqueue: every new key stored once with its payload as given, whether the rows go by
COPY (many) or by INSERT (few), and a key already there (or given twice) never stored twice."""

from __future__ import annotations

from typing import Any

import pytest

from integrations.models import Connection, Customer, OutboxMessage
from integrations.sync.outbox import COPY_FROM_ROWS, outbox_enqueue, outbox_message
from tests.factories import CustomerFactory, make_connection

pytestmark = pytest.mark.django_db


def _rows(
    connection: Connection, customers: list[Customer], *, version: int = 1
) -> list[OutboxMessage]:
    return [
        outbox_message(
            connection=connection,
            process="time_to_erp",
            step="post_invoice",
            operation="put_invoices",
            record=customer,
            version=version,
            payload=_payload(n),
            context={"what": "invoice", "label": f"Draft {n}"},
        )
        for n, customer in enumerate(customers)
    ]


def _payload(n: int) -> dict[str, Any]:
    # Quotes, backslashes and non-ASCII text: what a quoting bug would mangle.
    return {
        "Reference": f'INV-{n} "quoted" back\\slash',
        "LineItems": [{"Description": f"Zoë's line {i}", "Quantity": 1.5} for i in range(3)],
    }


def test_many_rows_are_stored_once_each_with_their_payloads() -> None:
    connection = make_connection()
    customers = CustomerFactory.create_batch(COPY_FROM_ROWS + 5)
    rows = _rows(connection, customers)

    assert outbox_enqueue(messages=rows) == len(rows)

    stored = {m.object_id: m for m in OutboxMessage.objects.all()}
    assert len(stored) == len(rows)
    for n, customer in enumerate(customers):
        message = stored[customer.pk]
        assert message.payload == _payload(n)
        assert message.context == {"what": "invoice", "label": f"Draft {n}"}
        assert message.state == OutboxMessage.State.PENDING
        assert message.created_at is not None
    assert all(row.pk == stored[row.object_id].pk for row in rows)


def test_keys_already_there_are_not_stored_again() -> None:
    connection = make_connection()
    customers = CustomerFactory.create_batch(COPY_FROM_ROWS + 5)
    outbox_enqueue(messages=_rows(connection, customers[:3]))

    assert outbox_enqueue(messages=_rows(connection, customers)) == len(customers) - 3
    assert OutboxMessage.objects.count() == len(customers)


@pytest.mark.parametrize("count", [2, COPY_FROM_ROWS + 2])
def test_a_key_given_twice_is_stored_once(count: int) -> None:
    connection = make_connection()
    customers = CustomerFactory.create_batch(count)
    rows = _rows(connection, customers) + _rows(connection, customers[:1])

    assert outbox_enqueue(messages=rows) == count
    assert OutboxMessage.objects.count() == count
    assert sorted(OutboxMessage.objects.values_list("object_id", flat=True)) == sorted(
        c.pk for c in customers
    )
