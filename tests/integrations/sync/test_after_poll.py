"""The hooks the workflows run after each poll (integrations/sync/steps.py): registered by the
workflows themselves, run by the polling task, and one hook's failure stops neither the others
nor the poll."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from celery.app.task import Context
from django.utils import timezone

from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, PollCursor, TimeEntry
from integrations.sync import steps
from integrations.sync.polling import poll_connection
from integrations.tasks import poll_connection_task
from integrations.workflows.back_sync import back_sync_sweep
from integrations.workflows.milestones import milestone_after_poll
from integrations.workflows.time_to_erp import billing_after_page, billing_after_poll
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db


def test_the_workflows_register_their_after_poll_hooks() -> None:
    assert back_sync_sweep in steps._after_poll
    assert milestone_after_poll in steps._after_poll
    before = list(steps._after_poll)
    steps.after_poll_register(back_sync_sweep)  # a module imported twice registers once
    assert steps._after_poll == before


def test_a_failing_hook_is_logged_and_stops_neither_the_next_hook_nor_the_poll(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    harvest = make_connection("harvest", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=harvest)
    seen: list[tuple[int, datetime]] = []

    def broken(*, connection_id: int, since: datetime) -> None:
        raise RuntimeError("the back-sync's database is away")

    def recording(*, connection_id: int, since: datetime) -> None:
        seen.append((connection_id, since))

    monkeypatch.setattr(steps, "_after_poll", [])
    steps.after_poll_register(broken)
    steps.after_poll_register(recording)
    started = timezone.now()

    with caplog.at_level(logging.ERROR, logger="integrations.sync.steps"):
        # Under a delivery id of its own, as a worker runs it: a plain call has none, and
        # its runs would add up against MAX_DELIVERIES from one test run to the next.
        poll_connection_task.request_stack.push(Context(id=str(uuid.uuid4())))
        try:
            reports = poll_connection_task.run(harvest.pk)
        finally:
            poll_connection_task.request_stack.pop()

    # The poll went through and says so; the hook after the broken one ran with its start.
    assert reports
    assert not [r for r in reports.values() if r["error"]], reports
    assert PollCursor.objects.filter(connection=harvest, last_success_at__isnull=False).exists()
    ((connection_id, since),) = seen
    assert connection_id == harvest.pk
    assert started <= since <= timezone.now()
    (record,) = [r for r in caplog.records if r.name == "integrations.sync.steps"]
    assert "broken" in record.getMessage()
    assert str(harvest.pk) in record.getMessage()
    assert record.exc_info is not None
    assert "the back-sync's database is away" in str(record.exc_info[1])


def test_billing_registers_its_after_page_and_after_poll_hooks() -> None:
    assert billing_after_page in steps._after_page
    assert billing_after_poll in steps._after_poll


def test_after_page_hooks_run_as_each_page_of_a_long_read_commits(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """Pages of 250: the hook runs once per page, each time with that page's entries stored,
    and the expenses are all read before the first page of time (a chunk of time takes the
    waiting expenses of its contracts)."""
    settings.CONCORD_POLL_PAGE_SIZE = 250
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    harvest = make_connection("harvest", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=harvest)
    pages: list[tuple[str, int]] = []

    def recording(*, connection_id: int, canonical_model: str) -> None:
        assert connection_id == harvest.pk
        pages.append((canonical_model, TimeEntry.objects.count()))

    monkeypatch.setattr(steps, "_after_page", [])
    steps.after_page_register(recording)

    poll_connection(connection_id=harvest.pk)

    stored = [count for model, count in pages if model == "timeentry"]
    assert len(stored) >= 4, pages
    assert stored == sorted(stored)
    assert 0 < stored[0] < stored[-1] == TimeEntry.objects.count()
    models = [model for model, _ in pages]
    assert "expense" in models
    assert models.index("timeentry") > max(i for i, m in enumerate(models) if m == "expense")
