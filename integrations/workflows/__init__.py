"""Business workflows. Each module owns one process; `on_delivered` calls the next step of a
process once its outbox rows reach the target (explicitly, never through signals)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from integrations.models import OutboxMessage


def _handlers() -> dict[tuple[str, str], Callable[[Sequence[OutboxMessage]], None]]:
    from integrations.workflows import time_to_erp

    return {(time_to_erp.PROCESS, "post_invoice"): time_to_erp.invoices_posted}


def on_delivered(messages: Sequence[OutboxMessage]) -> None:
    by_step: dict[tuple[str, str], list[OutboxMessage]] = defaultdict(list)
    for message in messages:
        by_step[(message.process, message.step)].append(message)
    handlers = _handlers()
    for key, delivered in by_step.items():
        handler = handlers.get(key)
        if handler is not None:
            handler(delivered)
