"""Workflow steps that follow a delivery, registered by the workflows themselves.

The sync layer delivers outbox rows; what happens next is the business process's decision.
Workflows sit above sync, so sync never imports them: each workflow registers, when it is
imported (integrations/apps.py imports the workflows package at start-up), the handler of each
(process, step) whose delivered rows it wants to see. The outbox calls `on_delivered` in the
same transaction that marks the rows done, so the next step's rows commit with them or not at
all (explicitly, never through signals).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from integrations.models import OutboxMessage

DeliveredHandler = Callable[[Sequence[OutboxMessage]], None]

_handlers: dict[tuple[str, str], DeliveredHandler] = {}


def delivered_step_register(*, process: str, step: str, handler: DeliveredHandler) -> None:
    """Call `handler` with the rows of (process, step) each time some are delivered."""
    registered = _handlers.get((process, step))
    if registered is not None and registered is not handler:
        raise ValueError(f"a handler for {process}/{step} is registered already: {registered}")
    _handlers[(process, step)] = handler


def on_delivered(*, messages: Sequence[OutboxMessage]) -> None:
    by_step: dict[tuple[str, str], list[OutboxMessage]] = defaultdict(list)
    for message in messages:
        by_step[(message.process, message.step)].append(message)
    for key, delivered in by_step.items():
        handler = _handlers.get(key)
        if handler is not None:
            handler(delivered)
