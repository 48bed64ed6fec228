"""Versions count within one effect (a process's step on a record: provisioning's write-back of
a contract's ids, back-sync's billing status on the same contract, a fix's third update). Rows of
different effects on one record are never stale for each other and are never superseded by each
other: each carries other fields. They still go one at a time per record and operation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.utils import timezone

from integrations.classification import ErrorClass
from integrations.models import Connection, Customer, OutboxMessage
from integrations.sync.outbox import (
    outbox_claim,
    outbox_enqueue,
    outbox_message,
    outbox_record_outcomes,
)
from integrations.sync.outcome import Outcome
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

State = OutboxMessage.State


@pytest.fixture
def erp(make_connection: Callable[..., Connection]) -> Connection:
    return make_connection("xero")


def _row(erp: Connection, customer: Customer, process: str, version: int) -> OutboxMessage:
    return outbox_message(
        connection=erp,
        process=process,
        step="update",
        operation="put_contacts",
        record=customer,
        version=version,
        payload={"Name": customer.name, "by": process},
    )


def _claim(erp: Connection) -> list[tuple[str, int]]:
    return [
        (m.process, m.record_version)
        for m in outbox_claim(connection_id=erp.pk, limit=10, worker="w")
    ]


def test_a_delivered_version_of_one_effect_leaves_another_effects_row_alone(
    erp: Connection,
) -> None:
    customer = CustomerFactory.create()
    back_sync = _row(erp, customer, "back_sync", 3)
    outbox_enqueue(messages=[back_sync])
    OutboxMessage.objects.filter(idempotency_key=back_sync.idempotency_key).update(state=State.DONE)
    outbox_enqueue(messages=[_row(erp, customer, "provisioning", 1)])

    assert _claim(erp) == [("provisioning", 1)]  # not skipped as older than back-sync's v3


def test_rows_of_two_effects_on_one_record_still_go_one_at_a_time(erp: Connection) -> None:
    customer = CustomerFactory.create()
    outbox_enqueue(messages=[_row(erp, customer, "back_sync", 5)])
    outbox_enqueue(messages=[_row(erp, customer, "provisioning", 1)])

    assert _claim(erp) == [("provisioning", 1)]  # the lowest version first, as ever
    assert _claim(erp) == []  # back-sync's waits for it
    OutboxMessage.objects.filter(process="provisioning").update(state=State.DONE)
    assert _claim(erp) == [("back_sync", 5)]


def test_within_one_effect_the_older_version_still_goes_first_and_a_stale_one_is_skipped(
    erp: Connection,
) -> None:
    customer = CustomerFactory.create()
    outbox_enqueue(messages=[_row(erp, customer, "fix", 2), _row(erp, customer, "fix", 1)])
    assert _claim(erp) == [("fix", 1)]
    OutboxMessage.objects.filter(record_version=1).update(state=State.DONE)
    assert _claim(erp) == [("fix", 2)]
    OutboxMessage.objects.filter(record_version=2).update(state=State.DONE)
    late = _row(erp, customer, "fix", 1)
    late.idempotency_key += ":late"
    outbox_enqueue(messages=[late])
    assert _claim(erp) == []
    assert OutboxMessage.objects.get(idempotency_key=late.idempotency_key).state == State.SKIPPED


def test_a_delivery_supersedes_parked_rows_of_its_own_effect_only(erp: Connection) -> None:
    customer = CustomerFactory.create()
    outbox_enqueue(
        messages=[
            _row(erp, customer, "back_sync", 1),
            _row(erp, customer, "provisioning", 1),
        ]
    )
    OutboxMessage.objects.update(state=State.PARKED)
    delivered = _row(erp, customer, "back_sync", 2)
    outbox_enqueue(messages=[delivered])
    (claimed,) = outbox_claim(connection_id=erp.pk, limit=10, worker="w")
    assert (claimed.process, claimed.record_version) == ("back_sync", 2)

    outbox_record_outcomes(outcomes=[Outcome(message=claimed, ok=True, external_id="c-1")])

    states = dict(OutboxMessage.objects.filter(record_version=1).values_list("process", "state"))
    assert states == {"back_sync": State.SKIPPED, "provisioning": State.PARKED}


def test_a_throttled_row_waits_what_the_vendor_said_not_a_grown_backoff(erp: Connection) -> None:
    """A 429 (nothing written, Retry-After 2 s) on a row's eighth attempt: back in about 2 s,
    not 16-32 s; a lost answer (it may have been written) still backs off by its attempts."""
    customer = CustomerFactory.create()
    outbox_enqueue(
        messages=[_row(erp, customer, "fix", 1), _row(erp, CustomerFactory.create(), "fix", 1)]
    )
    OutboxMessage.objects.update(attempts=7)
    throttled, lost = outbox_claim(connection_id=erp.pk, limit=10, worker="w")
    before = timezone.now()
    outbox_record_outcomes(
        outcomes=[
            Outcome(
                message=throttled,
                ok=False,
                error_class=ErrorClass.TRANSIENT,
                error="throttled by vendor (429)",
                retry_after=2.0,
            ),
            Outcome(
                message=lost,
                ok=False,
                error_class=ErrorClass.TRANSIENT,
                error="connection lost",
                maybe_applied=True,
            ),
        ]
    )
    throttled.refresh_from_db()
    lost.refresh_from_db()
    assert 2.0 <= (throttled.next_attempt_at - before).total_seconds() <= 2.5
    assert (lost.next_attempt_at - before).total_seconds() >= 16.0
    assert (lost.needs_lookup, throttled.needs_lookup) == (True, False)
