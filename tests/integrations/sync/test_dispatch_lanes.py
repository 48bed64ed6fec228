"""The dispatcher sends a one-item-a-call vendor's rows (Harvest) on several lanes at once, up
to the connection's max_concurrency, each record's rows in turn on one lane: different records
overlap, one record's rows never do, and every row is sent once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from integrations.models import Connection, Customer, LegalEntity, OutboxMessage, SyncAttempt
from integrations.sync import dispatch
from integrations.sync.dispatch import outbox_dispatch
from tests.integrations.conftest import Sandbox

State = OutboxMessage.State


def _row(psa: Connection, customer: Customer, operation: str, payload: dict[str, object]) -> int:
    message = OutboxMessage.objects.create(
        connection=psa,
        process="lanes-test",
        step="psa_client",
        operation=operation,
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=customer.pk,
        idempotency_key=f"lanes-{operation}-{customer.pk}-{len(str(payload))}-{payload}",
        payload=payload,
        next_attempt_at=timezone.now(),
    )
    return message.pk


def _span(attempt: SyncAttempt) -> tuple[float, float]:
    start = attempt.started_at.timestamp()
    return start, start + attempt.latency_ms / 1000


@pytest.mark.django_db(transaction=True)
def test_records_go_out_at_once_and_each_record_s_rows_in_turn(
    make_connection: Callable[..., Connection], sandbox: Sandbox
) -> None:
    psa = make_connection("harvest", rate_limit_per_minute=100_000, max_concurrency=4)
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    customers = [
        Customer.objects.create(name=f"Lane {n} Ltd", legal_entity=entity, currency="GBP")
        for n in range(8)
    ]
    rows = [_row(psa, c, "create_client", {"name": c.name}) for c in customers]
    # Every Harvest answer takes 150 ms: lanes show as calls that overlap.
    sandbox.faults("harvest", latency_ms=150)

    report = outbox_dispatch(connection_id=psa.pk, worker="lanes-test")

    assert (report.claimed, report.done, report.retry, report.parked) == (8, 8, 0, 0)
    sent = OutboxMessage.objects.filter(pk__in=rows)
    assert set(sent.values_list("state", flat=True)) == {State.DONE}
    assert sandbox.stats("harvest", "clients")["created"] == 8
    calls = sorted(
        _span(a) for a in SyncAttempt.objects.filter(connection=psa, operation="create_client")
    )
    assert len(calls) == 8
    most_at_once = max(sum(1 for s, e in calls if s <= start < e) for start, _ in calls)
    assert 2 <= most_at_once <= dispatch.MAX_LANES

    # Two updates of one record, claimed together, among other records' rows: in turn.
    harvest_id = {c["data"]["name"]: int(c["id"]) for c in sandbox.records("harvest", "clients")}
    one = [
        _row(
            psa,
            customers[0],
            "update_client",
            {"id": harvest_id[customers[0].name], "address": f"{n} Main St"},
        )
        for n in (1, 2)
    ]
    others = [
        _row(psa, c, "update_client", {"id": harvest_id[c.name], "address": "9 Side St"})
        for c in customers[1:]
    ]
    OutboxMessage.objects.filter(pk=one[1]).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    OutboxMessage.objects.filter(pk=one[0]).update(
        next_attempt_at=timezone.now() - timedelta(seconds=2)
    )

    report = outbox_dispatch(connection_id=psa.pk, worker="lanes-test")

    assert report.done == len(one) + len(others)
    updates = [
        _span(a)
        for a in SyncAttempt.objects.filter(
            connection=psa, operation="update_client", messages__pk__in=one
        ).order_by("messages__pk")
    ]
    assert len(updates) == 2
    assert updates[0][1] <= updates[1][0]  # the older row's call ended before the newer began
    client = sandbox.records("harvest", "clients")
    assert {c["data"]["name"]: c["data"].get("address") for c in client}[customers[0].name] == (
        "2 Main St"
    )
