"""Celery task plumbing that does not need a worker: the bound on redeliveries."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from integrations.tasks import MAX_DELIVERIES, too_many_deliveries


def test_a_message_is_dropped_after_too_many_deliveries() -> None:
    task = SimpleNamespace(
        name="integrations.dispatch_outbox", request=SimpleNamespace(id=str(uuid.uuid4()))
    )
    verdicts = [too_many_deliveries(task) for _ in range(MAX_DELIVERIES + 2)]
    assert verdicts == [False] * MAX_DELIVERIES + [True, True]
    other = SimpleNamespace(name=task.name, request=SimpleNamespace(id=str(uuid.uuid4())))
    assert too_many_deliveries(other) is False
