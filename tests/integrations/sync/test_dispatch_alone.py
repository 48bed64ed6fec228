"""One dispatch task per connection at a time: a second task for a connection that is being
dispatched leaves its rows to the first (and takes no worker process for long), the first rings
again when it ends if one was turned away, and a dead holder's hold lapses within seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from integrations.flags import flag_clear, flag_set
from integrations.models import Connection
from integrations.sync import dispatch
from integrations.sync.dispatch import DispatchReport, outbox_dispatch_alone
from tests.factories import make_connection


@pytest.fixture
def erp(db: None) -> Iterator[Connection]:
    connection = make_connection()
    yield connection
    flag_clear(f"dispatch:{connection.pk}:hold")
    flag_clear(f"dispatch:{connection.pk}:wanted")


@pytest.fixture
def rung(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], bool]]:
    calls: list[tuple[list[int], bool]] = []
    monkeypatch.setattr(
        dispatch,
        "ring_dispatch",
        lambda ids, force=False, **kw: calls.append((sorted(ids), force)),
    )
    return calls


def test_a_second_task_leaves_the_connection_to_the_one_dispatching_it(
    erp: Connection, monkeypatch: pytest.MonkeyPatch, rung: list[tuple[list[int], bool]]
) -> None:
    turned_away: list[DispatchReport | None] = []

    def first_task(*, connection_id: int, worker: str, **_: Any) -> DispatchReport:
        # While the first task works, a second one is started for the same connection.
        turned_away.append(outbox_dispatch_alone(connection_id=connection_id, worker="second"))
        return DispatchReport(claimed=3, done=3)

    monkeypatch.setattr(dispatch, "outbox_dispatch", first_task)

    report = outbox_dispatch_alone(connection_id=erp.pk, worker="first")

    assert report == DispatchReport(claimed=3, done=3)
    assert turned_away == [None]  # the second did nothing
    # The first, ending, rings once more for what the second was rung for.
    assert rung == [([erp.pk], True)]


def test_a_task_alone_rings_no_more_than_its_dispatch_does(
    erp: Connection, monkeypatch: pytest.MonkeyPatch, rung: list[tuple[list[int], bool]]
) -> None:
    ran: list[str] = []

    def task(*, connection_id: int, worker: str, **_: Any) -> DispatchReport:
        ran.append(worker)
        return DispatchReport()

    monkeypatch.setattr(dispatch, "outbox_dispatch", task)
    assert outbox_dispatch_alone(connection_id=erp.pk, worker="only") == DispatchReport()
    assert outbox_dispatch_alone(connection_id=erp.pk, worker="next") == DispatchReport()
    assert ran == ["only", "next"]  # the hold ends with its task
    assert rung == []


def test_the_hold_is_renewed_while_the_task_works_and_lapses_when_its_worker_dies(
    erp: Connection, monkeypatch: pytest.MonkeyPatch, rung: list[tuple[list[int], bool]]
) -> None:
    monkeypatch.setattr(dispatch, "HOLD_S", 1)
    monkeypatch.setattr(dispatch, "HOLD_RENEW_S", 0.3)
    others: list[DispatchReport | None] = []

    def long_task(*, connection_id: int, worker: str, **_: Any) -> DispatchReport:
        time.sleep(2.5)  # longer than the hold's lifetime: only its renewal keeps it
        others.append(outbox_dispatch_alone(connection_id=connection_id, worker="other"))
        return DispatchReport()

    monkeypatch.setattr(dispatch, "outbox_dispatch", long_task)
    worker = threading.Thread(
        target=outbox_dispatch_alone, kwargs={"connection_id": erp.pk, "worker": "long"}
    )
    worker.start()
    worker.join()
    assert others == [None]

    # A worker killed while holding it: nothing renews the hold, which lapses.
    assert flag_set(f"dispatch:{erp.pk}:hold", 1)
    monkeypatch.setattr(
        dispatch, "outbox_dispatch", lambda *, connection_id, worker, **_: DispatchReport()
    )
    assert outbox_dispatch_alone(connection_id=erp.pk, worker="meanwhile") is None
    time.sleep(1.5)
    assert outbox_dispatch_alone(connection_id=erp.pk, worker="after") == DispatchReport()
