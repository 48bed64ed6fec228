"""The page writer: steps on their own threads and connections, final steps in page order, and
a failure that stops everything behind it."""

from __future__ import annotations

import random
import threading
import time
from functools import partial

import pytest
from django.db import connection, transaction

from integrations.sync.pagewriter import PageJob, PageWriter

pytestmark = pytest.mark.django_db(transaction=True)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def note(self, name: str) -> None:
        time.sleep(random.uniform(0, 0.01))
        assert connection.in_atomic_block  # every step runs inside a transaction
        with self.lock:
            self.lines.append(name)


def test_steps_run_side_by_side_and_final_steps_follow_in_page_order() -> None:
    log = Log()
    writer = PageWriter(lanes=2, threaded=True)
    lane_threads: set[str] = set()

    def step(name: str) -> None:
        lane_threads.add(threading.current_thread().name)
        log.note(name)

    try:
        for page in range(12):
            writer.submit(
                PageJob(
                    steps=[partial(step, f"raw{page}"), partial(step, f"rows{page}")],
                    final=partial(log.note, f"final{page}"),
                )
            )
        writer.drain()
    finally:
        writer.close()

    finals = [line for line in log.lines if line.startswith("final")]
    assert finals == [f"final{p}" for p in range(12)]
    for page in range(12):
        final_at = log.lines.index(f"final{page}")
        assert log.lines.index(f"raw{page}") < final_at
        assert log.lines.index(f"rows{page}") < final_at
    assert lane_threads == {"page-writer-0", "page-writer-1"}


def test_a_failed_step_stops_the_pages_behind_it_and_reaches_the_caller() -> None:
    log = Log()
    writer = PageWriter(lanes=2, threaded=True)

    def broken() -> None:
        raise RuntimeError("database went away")

    try:
        writer.submit(PageJob(steps=[lambda: log.note("raw0")], final=lambda: log.note("final0")))
        writer.drain()
        writer.submit(PageJob(steps=[broken], final=lambda: log.note("final1")))
        writer.submit(PageJob(steps=[lambda: log.note("raw2")], final=lambda: log.note("final2")))
        with pytest.raises(RuntimeError, match="database went away"):
            writer.drain()
        with pytest.raises(RuntimeError, match="database went away"):
            writer.submit(PageJob(steps=[lambda: log.note("raw3")]))
    finally:
        writer.close()
    assert "final0" in log.lines
    assert "final1" not in log.lines
    assert "final2" not in log.lines
    assert "raw3" not in log.lines


def test_wait_for_returns_once_the_page_writing_those_records_committed() -> None:
    writer = PageWriter(lanes=2, threaded=True)
    release = threading.Event()
    committed: list[str] = []

    def slow() -> None:
        release.wait(5)
        committed.append("page0")

    try:
        writer.submit(PageJob(steps=[slow], external_ids=frozenset({"a", "b"})))
        writer.wait_for({"c"})  # not written by the page in flight: no wait
        assert committed == []
        threading.Timer(0.2, release.set).start()
        writer.wait_for({"b"})
        assert committed == ["page0"]
    finally:
        writer.close()


def test_inside_the_callers_transaction_pages_are_written_inline() -> None:
    log = Log()
    with transaction.atomic():
        writer = PageWriter()
        assert not writer.threaded
        writer.submit(PageJob(steps=[lambda: log.note("raw")], final=lambda: log.note("final")))
        assert log.lines == ["raw", "final"]
        writer.close()
