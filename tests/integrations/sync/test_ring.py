"""Ringing workers (integrations/sync/ring.py): by task name, on commit, debounced, one ring per
connection however many rows wait. Messages are read back from the real Redis broker."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.db import transaction

from integrations.flags import flag_clear
from integrations.models import OutboxMessage
from integrations.sync import ring
from integrations.sync.outbox import outbox_message, outbox_sweep
from tests.factories import CustomerFactory, make_connection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    time.sleep(2 * ring.SOON_WINDOW_S)  # a soon ring of an earlier test lands first
    for queue in ("celery", "inbound", "outbox.xero", "outbox.harvest", "outbox.salesforce"):
        client.delete(queue)
    yield client
    for queue in ("celery", "inbound", "outbox.xero", "outbox.harvest", "outbox.salesforce"):
        client.delete(queue)


def _queued(broker: redis.Redis, queue: str) -> list[tuple[str, list[int]]]:
    """(task name, args) of each message waiting in a queue."""
    found = []
    for raw in broker.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], body[0]))
    return found


def test_a_ring_inside_a_transaction_waits_for_the_commit(broker: redis.Redis) -> None:
    flag_clear(f"ring:{ring.PROCESS_INBOUND_BATCH}:41")
    with transaction.atomic():
        ring.ring_inbound([41])
        assert _queued(broker, "inbound") == []  # not before the commit
    assert _queued(broker, "inbound") == [(ring.PROCESS_INBOUND_BATCH, [41])]


def test_a_ring_in_a_rolled_back_transaction_is_never_sent(broker: redis.Redis) -> None:
    flag_clear(f"ring:{ring.PROCESS_INBOUND_BATCH}:42")

    def ring_then_fail() -> None:
        with transaction.atomic():
            ring.ring_inbound([42])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        ring_then_fail()
    assert _queued(broker, "inbound") == []


def test_rings_while_one_waits_add_nothing_until_the_task_starts(broker: redis.Redis) -> None:
    flag_clear(f"ring:{ring.PROCESS_INBOUND_BATCH}:43")
    for _ in range(50):
        ring.ring_inbound([43])
    assert len(_queued(broker, "inbound")) == 1
    ring.ring_answered(ring.PROCESS_INBOUND_BATCH, 43)  # the queued task has started
    ring.ring_inbound([43])
    assert len(_queued(broker, "inbound")) == 2


def test_dispatch_rings_go_to_the_vendor_queue_by_name(broker: redis.Redis) -> None:
    xero = make_connection()
    harvest = make_connection(name="Harvest", role="psa", vendor="harvest")
    for connection in (xero, harvest):
        flag_clear(f"ring:{ring.DISPATCH_OUTBOX}:{connection.pk}")
    ring.ring_dispatch([xero.pk, harvest.pk])
    assert _queued(broker, "outbox.xero") == [(ring.DISPATCH_OUTBOX, [xero.pk])]
    assert _queued(broker, "outbox.harvest") == [(ring.DISPATCH_OUTBOX, [harvest.pk])]


def test_one_sweep_rings_each_connection_once_however_many_rows_wait(
    broker: redis.Redis,
) -> None:
    connections = [
        make_connection(name=f"Xero {i}", base_url=f"http://127.0.0.1:8100/x{i}") for i in range(3)
    ]
    customer = CustomerFactory.create()
    rows = [
        outbox_message(
            connection=connection,
            process="time_to_erp",
            step="post_invoice",
            operation="put_invoices",
            record=customer,
            version=index * 1000 + version,  # the idempotency key is per record version
            payload={},
        )
        for index, connection in enumerate(connections)
        for version in range(1, 1001)
    ]
    OutboxMessage.objects.bulk_create(rows, batch_size=1000)  # no enqueue ring: the sweep's own
    assert OutboxMessage.objects.filter(state="pending").count() == 3000

    report = outbox_sweep()

    assert report["connections_rung"] == 3
    assert sorted(args[0] for _, args in _queued(broker, "outbox.xero")) == sorted(
        c.pk for c in connections
    )


def _wait_for(broker: redis.Redis, count: int) -> list[tuple[str, list[int]]]:
    deadline = time.monotonic() + 5
    while len(queued := _queued(broker, "inbound")) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return queued


def test_soon_rings_of_a_burst_share_one_round_trip(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag_clear(f"ring:{ring.PROCESS_INBOUND_BATCH}:45")
    asked: list[str] = []
    real_flag_set = ring.flag_set

    def counting_flag_set(name: str, ttl_s: int) -> bool:
        asked.append(name)
        return real_flag_set(name, ttl_s)

    monkeypatch.setattr(ring, "flag_set", counting_flag_set)
    for _ in range(50):
        ring.ring_inbound([45], soon=True)

    assert _wait_for(broker, 1) == [(ring.PROCESS_INBOUND_BATCH, [45])]
    time.sleep(3 * ring.SOON_WINDOW_S)
    assert len(_queued(broker, "inbound")) == 1
    assert 1 <= len(asked) <= 2  # one per window, not one per ring


def test_a_soon_ring_waits_for_the_commit_and_follows_a_started_task(broker: redis.Redis) -> None:
    flag_clear(f"ring:{ring.PROCESS_INBOUND_BATCH}:46")
    with transaction.atomic():
        ring.ring_inbound([46], soon=True)
        time.sleep(3 * ring.SOON_WINDOW_S)
        assert _queued(broker, "inbound") == []  # not before the commit
    assert len(_wait_for(broker, 1)) == 1

    ring.ring_answered(ring.PROCESS_INBOUND_BATCH, 46)  # the queued task has started
    ring.ring_inbound([46], soon=True)  # a row committed after it read its rows
    assert len(_wait_for(broker, 2)) == 2
