"""A batch vendor's rows that come one at a time wait a moment to share a call: fewer due rows
than a batch, all new, wait until none has come for LINGER_S (at most LINGER_MAX_S from the
oldest); a full batch, an older row or a one-item-a-call vendor waits for nothing."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from integrations.connectors.connection_limits import limits_for
from integrations.models import Connection, Customer, OutboxMessage, SyncAttempt
from integrations.sync import dispatch
from integrations.sync.dispatch import _linger_wait, _Work, outbox_dispatch
from integrations.sync.outbox import outbox_flush
from integrations.vendors import connector_for
from integrations.workflows.time_to_erp import billing_run
from tests.factories import make_connection
from tests.firms import approved_time_firm
from tests.integrations.conftest import Sandbox
from tests.integrations.sync.test_dispatch_concurrency import _row, customers  # noqa: F401

LINGER, MOST = _Work.LINGER_S, _Work.LINGER_MAX_S


@pytest.fixture
def erp(db: None) -> Connection:
    return make_connection()


def _rows(erp: Connection, customers: list[Customer], ages_s: list[float]) -> None:  # noqa: F811
    """Due rows created `ages_s` seconds ago (the concurrency tests' rows, one per customer)."""
    now = timezone.now()
    for customer, age in zip(customers, ages_s, strict=False):
        row = _row(erp, customer, "put_invoices", {})
        OutboxMessage.objects.filter(pk=row.pk).update(created_at=now - timedelta(seconds=age))


@pytest.mark.parametrize(
    ("ages_s", "low", "high"),
    [
        ([0.0, 0.0, 0.0], LINGER - 0.1, LINGER),  # just written: wait for more
        ([0.2, 0.1], LINGER - 0.1 - 0.1, LINGER - 0.1),  # from the newest
        ([MOST - 0.05, 0.0], 0.0, 0.05),  # the oldest has waited nearly its most
        ([MOST + 1, 0.0], 0.0, 0.0),  # an older row (a retry, a backlog): no wait
    ],
)
def test_fresh_rows_fewer_than_a_batch_wait_for_more(
    erp: Connection,
    customers: list[Customer],  # noqa: F811
    ages_s: list[float],
    low: float,
    high: float,
) -> None:
    _rows(erp, customers, ages_s)
    wait = _linger_wait(erp, 50, LINGER, MOST)
    assert wait is not None
    assert low <= wait <= high + 0.05


def test_with_nothing_due_the_look_says_so(erp: Connection) -> None:
    assert _linger_wait(erp, 50, LINGER, MOST) is None


@pytest.mark.django_db(transaction=True)  # the dispatcher lingers only outside a transaction
def test_a_look_that_finds_nothing_due_makes_no_claim(
    erp: Connection,
    customers: list[Customer],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lane waiting for another's call looks every POLL_S: with nothing due, one small read,
    not the claim's locking read of the rows."""
    claims: list[int] = []

    def claim(**kwargs: Any) -> list[OutboxMessage]:
        claims.append(1)
        return []

    monkeypatch.setattr(dispatch, "outbox_claim", claim)
    work = _Work(connector_for(erp), erp, "linger", time.monotonic() + 5)

    assert work.next(Counter()) is None  # nothing due, no lane sending: drained
    assert claims == []

    _rows(erp, customers, [MOST + 1])  # one row due, old enough to go at once
    work = _Work(connector_for(erp), erp, "linger", time.monotonic() + 5)
    work.next(Counter())
    assert claims == [1]


def test_lanes_waiting_on_a_call_look_once_per_poll_interval(
    erp: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four lanes with nothing due while a fifth sends (for the whole second here): a look
    every POLL_S between them, not one lane's fruitless look waking the next to look again."""
    looks: list[float] = []

    def nothing_due(*args: Any, **kwargs: Any) -> None:
        looks.append(time.monotonic())
        return None

    monkeypatch.setattr(dispatch, "_linger_wait", nothing_due)
    monkeypatch.setattr(dispatch, "_rate_share_used", lambda connector: 0.0)
    work = _Work(connector_for(erp), erp, "linger", time.monotonic() + 1.0)
    work.sending = 1  # a lane in a call that outlasts the budget
    lanes = [threading.Thread(target=work.next, args=(Counter(),)) for _ in range(4)]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join(timeout=10)

    assert work.out_of_time
    assert 2 <= len(looks) <= 1.0 / _Work.POLL_S + 2, f"{len(looks)} looks in 1 s"


def test_a_full_batch_waits_for_nothing(
    erp: Connection,
    customers: list[Customer],  # noqa: F811
) -> None:
    _rows(erp, customers, [0.0] * 5)
    assert _linger_wait(erp, 5, LINGER, MOST) == 0.0
    assert (_linger_wait(erp, 6, LINGER, MOST) or 0.0) > 0.0


@pytest.mark.django_db(transaction=True)
def test_invoices_written_one_by_one_go_in_one_call(sandbox: Sandbox) -> None:
    """Eight invoices committed 60 ms apart (eight workflow runs) while the dispatcher runs:
    one Xero call, not one each."""
    erp = approved_time_firm(sandbox.url, projects=8, entries_per_project=1)

    def one_by_one() -> None:
        try:
            for _ in range(8):
                billing_run(limit=1)
                time.sleep(0.06)
        finally:
            connections.close_all()

    writer = threading.Thread(target=one_by_one)
    writer.start()
    time.sleep(0.02)  # the first invoice in
    reports: list[Any] = []
    while writer.is_alive() or OutboxMessage.objects.filter(state="pending").exists():
        report = outbox_dispatch(connection_id=erp.pk, worker="linger")
        reports.append(report)
        if not report.claimed:
            time.sleep(0.01)
    writer.join()

    assert set(OutboxMessage.objects.values_list("state", flat=True)) == {"done"}
    assert sandbox.stats("xero", "Invoices")["created"] == 8
    puts = SyncAttempt.objects.filter(connection=erp, operation="put_invoices").count()
    assert puts <= 2, f"{puts} calls for 8 invoices written 60 ms apart"


@pytest.mark.django_db(transaction=True)  # the dispatcher lingers only outside a transaction
def test_with_much_of_the_rate_window_spent_rows_wait_longer_to_share_a_call(
    erp: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls, not time, are what runs out then: the linger's quiet time and its most grow."""
    asked: list[tuple[float, float]] = []

    def wait(connection: Connection, batch: int, quiet_s: float, most_s: float, **_: Any) -> float:
        asked.append((quiet_s, most_s))
        return 0.0

    monkeypatch.setattr(dispatch, "_linger_wait", wait)
    limits = limits_for(erp)
    connector = connector_for(erp, limits=limits)
    limits.store.clear(limits.prefix)
    work = _Work(connector, erp, "linger", time.monotonic() + 5)

    work.linger()
    rate, window = limits.settings.rate_per_minute, limits.settings.rate_window_s
    taken = math.ceil(rate * _Work.TIGHT_FROM)
    for n in range(taken):
        assert limits.store.rate_take(limits.key("rate"), rate, window, f"call {n}") == 0
    assert limits.rate_share_used() == pytest.approx(taken / rate)
    work.linger()

    assert asked == [(LINGER, MOST), (_Work.LINGER_TIGHT_S, _Work.LINGER_TIGHT_MAX_S)]
    assert _Work.LINGER_TIGHT_S > LINGER
    assert _Work.LINGER_TIGHT_MAX_S > MOST


def test_once_a_due_row_predates_a_flush_none_waits(
    erp: Connection,
    customers: list[Customer],  # noqa: F811
) -> None:
    """A row written before the flush goes now, and takes along the rows written since
    (another writer's, one at a time, would otherwise keep the quiet from coming)."""
    _rows(erp, customers, [0.2, 0.0])
    now = time.time()
    assert _linger_wait(erp, 50, LINGER, MOST, flushed_at=now - 0.1) == 0.0
    assert (_linger_wait(erp, 50, LINGER, MOST, flushed_at=now - 60) or 0.0) > 0.0


@pytest.mark.django_db(transaction=True)  # the dispatcher lingers only outside a transaction
def test_a_lingering_lane_goes_as_soon_as_the_writer_flushes(
    erp: Connection,
    customers: list[Customer],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A billing run's last invoices waited out the linger for more that never came (0.5-0.9 s
    at the end of a 100k run); the run's word that it is done ends the wait."""
    monkeypatch.setattr(_Work, "LINGER_S", 5.0)
    monkeypatch.setattr(_Work, "LINGER_MAX_S", 5.0)
    monkeypatch.setattr(dispatch, "_rate_share_used", lambda connector: 0.0)
    _rows(erp, customers, [0.0, 0.0])
    work = _Work(connector_for(erp), erp, "linger", time.monotonic() + 10)
    flush = threading.Timer(0.3, outbox_flush)
    began = time.monotonic()
    flush.start()

    assert work.linger()

    took = time.monotonic() - began
    flush.join()
    assert 0.25 <= took < 1.0, f"lingered {took:.2f} s"
