"""The outbox's retry budget: a time window AND a number of attempts, held on every path (a
recorded failure, the claim, the sweeper's release, a replay); a row that spends it parks with
an integration admin's case, and no path sends a row past it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from exceptions.models import ExceptionCase
from integrations.classification import ErrorClass
from integrations.models import Connection, OutboxMessage
from integrations.sync.outbox import (
    RELEASED,
    outbox_claim,
    outbox_message,
    outbox_record_outcomes,
    outbox_replay,
    outbox_sweep,
)
from integrations.sync.outcome import Outcome
from tests.factories import CustomerFactory, make_connection

pytestmark = [
    pytest.mark.django_db,
    # At least 3 attempts AND an hour since the first.
    pytest.mark.usefixtures("budget"),
]

State = OutboxMessage.State


@pytest.fixture
def budget() -> Any:
    with override_settings(CONCORD_OUTBOX_MIN_ATTEMPTS=3, CONCORD_OUTBOX_RETRY_WINDOW_S=3600):
        yield


@pytest.fixture
def xero() -> Connection:
    return make_connection()


def _row(connection: Connection, **fields: Any) -> OutboxMessage:
    customer = CustomerFactory.create()
    message = outbox_message(
        connection=connection,
        process="provisioning",
        step="create_contact",
        operation="put_contacts",
        record=customer,
        version=1,
        payload={"Name": customer.name},
        context={"what": "customer", "subject": f"customer {customer.name}"},
    )
    message.save()
    OutboxMessage.objects.filter(pk=message.pk).update(**fields)
    return OutboxMessage.objects.select_related("connection", "content_type").get(pk=message.pk)


def _failed(message: OutboxMessage, **fields: Any) -> Outcome:
    return Outcome(
        message=message,
        ok=False,
        error_class=ErrorClass.TRANSIENT,
        error="Xero server error (500)",
        **fields,
    )


def test_a_row_past_its_attempts_but_inside_the_window_is_tried_again(xero: Connection) -> None:
    # A burst of faults: 8 attempts in 10 minutes. The budget is not spent.
    message = _row(
        xero,
        state=State.IN_FLIGHT,
        attempts=8,
        first_attempt_at=timezone.now() - timedelta(minutes=10),
    )
    counts = outbox_record_outcomes(outcomes=[_failed(message)])
    assert (counts["retry"], counts["parked"]) == (1, 0)
    message.refresh_from_db()
    assert message.state == State.PENDING
    assert message.next_attempt_at > timezone.now()


def test_a_row_inside_its_attempts_but_past_the_window_is_tried_again(xero: Connection) -> None:
    message = _row(
        xero,
        state=State.IN_FLIGHT,
        attempts=2,
        first_attempt_at=timezone.now() - timedelta(hours=2),
    )
    assert outbox_record_outcomes(outcomes=[_failed(message)])["retry"] == 1


def test_a_row_past_both_parks_with_a_case(xero: Connection) -> None:
    message = _row(
        xero,
        state=State.IN_FLIGHT,
        attempts=3,
        first_attempt_at=timezone.now() - timedelta(hours=2),
    )
    assert outbox_record_outcomes(outcomes=[_failed(message)])["parked"] == 1
    message.refresh_from_db()
    assert message.state == State.PARKED
    case = message.exception_case
    assert case is not None
    assert (case.case_type, case.queue) == ("retries_exhausted", "integration_admin")
    assert "kept failing after 3 attempts (last: Xero server error (500))" in case.message


def test_a_call_our_own_limits_held_back_is_no_attempt(xero: Connection) -> None:
    message = _row(
        xero,
        state=State.IN_FLIGHT,
        attempts=3,
        first_attempt_at=timezone.now() - timedelta(hours=2),
    )
    outcome = _failed(message, not_sent=True, retry_after=2.0)
    assert outbox_record_outcomes(outcomes=[outcome])["retry"] == 1
    message.refresh_from_db()
    assert (message.state, message.attempts) == (State.PENDING, 2)


def test_the_sweeper_parks_a_vanished_workers_row_whose_budget_is_spent(xero: Connection) -> None:
    long_ago = timezone.now() - timedelta(hours=2)
    spent = _row(xero, state=State.IN_FLIGHT, claimed_at=long_ago, attempts=3)
    OutboxMessage.objects.filter(pk=spent.pk).update(first_attempt_at=long_ago)
    young = _row(
        xero,
        state=State.IN_FLIGHT,
        claimed_at=long_ago,
        attempts=5,
        first_attempt_at=timezone.now() - timedelta(minutes=5),
    )

    report = outbox_sweep()

    assert (report["released"], report["parked"]) == (1, 1)
    spent.refresh_from_db()
    young.refresh_from_db()
    assert spent.state == State.PARKED
    assert spent.attempts == 3  # parked where it stood: not sent again
    assert young.state == State.PENDING
    assert young.needs_lookup  # the vanished worker may have sent it
    case = ExceptionCase.objects.get(case_type="retries_exhausted")
    assert RELEASED.split(":")[0] in case.message


def test_a_claim_parks_a_row_whose_budget_is_spent_instead_of_sending_it(
    xero: Connection,
) -> None:
    long_ago = timezone.now() - timedelta(hours=2)
    spent = _row(
        xero,
        state=State.PENDING,
        attempts=4,
        first_attempt_at=long_ago,
        next_attempt_at=long_ago,
        last_error="Xero server error (503)",
    )
    fresh = _row(xero, state=State.PENDING, next_attempt_at=long_ago)

    claimed = outbox_claim(connection_id=xero.pk, limit=10, worker="w1")

    assert [m.pk for m in claimed] == [fresh.pk]
    fresh.refresh_from_db()
    assert (fresh.state, fresh.attempts) == (State.IN_FLIGHT, 1)
    assert fresh.first_attempt_at is not None
    spent.refresh_from_db()
    assert (spent.state, spent.attempts) == (State.PARKED, 4)
    case = spent.exception_case
    assert case is not None
    assert "last: Xero server error (503)" in case.message


def test_the_first_claim_starts_the_window_and_later_claims_keep_it(xero: Connection) -> None:
    message = _row(xero, state=State.PENDING, next_attempt_at=timezone.now())
    (claimed,) = outbox_claim(connection_id=xero.pk, limit=1, worker="w1")
    started = claimed.first_attempt_at
    assert started is not None
    outbox_record_outcomes(outcomes=[_failed(claimed)])
    OutboxMessage.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    (again,) = outbox_claim(connection_id=xero.pk, limit=1, worker="w1")
    assert again.attempts == 2
    again.refresh_from_db()
    assert again.first_attempt_at == started


@override_settings(CONCORD_OUTBOX_MIN_ATTEMPTS=1, CONCORD_OUTBOX_RETRY_WINDOW_S=0)
def test_a_replay_gets_a_budget_of_its_own_and_parks_again_once_it_is_spent(
    xero: Connection,
) -> None:
    long_ago = timezone.now() - timedelta(hours=2)
    parked = _row(xero, state=State.IN_FLIGHT, attempts=1, first_attempt_at=long_ago)
    outbox_record_outcomes(outcomes=[_failed(parked)])
    parked.refresh_from_db()
    assert parked.state == State.PARKED

    (replay,) = outbox_replay(messages=[parked])
    assert (replay.attempts, replay.first_attempt_at) == (0, None)
    (claimed,) = outbox_claim(connection_id=xero.pk, limit=1, worker="w1")
    assert claimed.pk == replay.pk
    assert outbox_record_outcomes(outcomes=[_failed(claimed)])["parked"] == 1
    replay.refresh_from_db()
    assert (replay.state, replay.attempts) == (State.PARKED, 1)
