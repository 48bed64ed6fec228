"""What "retry" means for each case type, registered by the layers that know how to re-run it.

exceptions sits below sync and the workflows, so it never imports them: each registers, when it
is imported, the handler that re-runs the work its case types hold up (integrations/sync/
failures.py: parked outbox rows are replayed; integrations/sync/inbound.py: held inbound
messages are replayed; integrations/workflows/time_to_erp.py: held time entries are billed
again). exceptions/apps.py imports those modules at start-up, so every process has them all.
exceptions/actions.py calls the handler with the case locked, inside the action's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exceptions.models import ExceptionCase


@dataclass(frozen=True)
class RetryResult:
    """What a retry re-ran: how many rows, messages or entries, in words for the audit trail
    ("replayed 3 parked outbox rows")."""

    count: int
    summary: str


RetryHandler = Callable[[ExceptionCase], RetryResult]

_handlers: dict[tuple[str, str | None], RetryHandler] = {}


def retry_handler_register(
    *, case_types: Iterable[str], handler: RetryHandler, process: str | None = None
) -> None:
    """Re-run the held work of cases of `case_types` (of `process` only, when given: a handler
    for a type and process comes before one for the type alone) with `handler(case)`."""
    for case_type in case_types:
        registered = _handlers.get((case_type, process))
        if registered is not None and registered is not handler:
            raise ValueError(
                f"a retry handler for {case_type}/{process or '*'} is registered already: "
                f"{registered}"
            )
        _handlers[(case_type, process)] = handler


def retry_handler_for(case: ExceptionCase) -> RetryHandler | None:
    return _handlers.get((case.case_type, case.process)) or _handlers.get((case.case_type, None))
