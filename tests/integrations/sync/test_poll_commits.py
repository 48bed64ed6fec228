"""A poll's page transactions, on the page writer's own connections, commit without waiting
for the log flush (``synchronous_commit = off`` for those transactions only; why that keeps
exactly-once: integrations/sync/polling.py, `_unflushed`). Inline, inside a caller's
transaction, the steps leave that transaction's commit as it is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection, transaction

from integrations.sync.pagewriter import PageJob, PageWriter
from integrations.sync.polling import _page_step

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL setting")


def _recorder(seen: list[str]) -> Callable[[], None]:
    def step() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            seen.append(cursor.fetchone()[0])

    return step


def _setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_threaded_pages_transactions_commit_unflushed_and_only_they() -> None:
    seen: list[str] = []
    writer = PageWriter(lanes=2, threaded=True)
    try:
        for _ in range(3):
            step = _recorder(seen)
            writer.submit(
                PageJob(
                    steps=[_page_step(writer, step), _page_step(writer, step)],
                    final=_page_step(writer, step),
                )
            )
        writer.drain()
    finally:
        writer.close()

    assert seen == ["off"] * 9
    assert _setting() == "on"  # the server's default, for every other transaction


@pytest.mark.django_db
def test_inline_steps_leave_the_callers_commit_as_it_is() -> None:
    seen: list[str] = []
    with transaction.atomic():
        writer = PageWriter()
        assert not writer.threaded
        step = _recorder(seen)
        writer.submit(PageJob(steps=[_page_step(writer, step)], final=_page_step(writer, step)))
        assert _setting() == "on"
    assert seen == ["on", "on"]
