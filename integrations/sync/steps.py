"""Workflow steps that follow a delivery or an arrival, registered by the workflows themselves.

The sync layer delivers outbox rows; what happens next is the business process's decision.
Workflows sit above sync, so sync never imports them: each workflow registers, when it is
imported (integrations/apps.py imports the workflows package at start-up), the handler of each
(process, step) whose delivered rows it wants to see. The outbox calls `on_delivered` in the
same transaction that marks the rows done, so the next step's rows commit with them or not at
all (explicitly, never through signals).

Arrivals work the same way: a workflow that starts from a record a system sends (provisioning
from a CRM opportunity turning closed-won) registers for the canonical model, and inbound
processing hands it each such record once it has been applied (or, for a model without a table,
mapped), with its mapped fields.

Polls too: a workflow that moves on from what a poll stored (back-sync from the ERP's invoices
and payments, milestone billing from completed milestones) registers an after-poll hook, which
the polling task runs once the poll is done (`run_after_poll`). One that can start on part of a
long read (billing what has arrived while later pages of time entries are still read) registers
an after-page hook, run each time a polled page of its model has committed (`run_after_page`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from integrations.models import Connection, OutboxMessage
from integrations.selectors import routes_remembered

logger = logging.getLogger(__name__)

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
    # The runs moved on here look their routes up once between them.
    with routes_remembered():
        for key, delivered in by_step.items():
            handler = _handlers.get(key)
            if handler is not None:
                handler(delivered)


@dataclass(frozen=True)
class Arrival:
    """A record a system sent, as inbound processing applied it: its canonical model, the
    sender's id for it, the mapped fields, and the canonical record's id when it has a table."""

    connection: Connection
    canonical_model: str
    external_id: str
    fields: Mapping[str, Any]
    record_id: int | None = None


ArrivalHandler = Callable[[Arrival], None]
ArrivalsHandler = Callable[[Sequence[Arrival]], None]

_arrivals: dict[str, list[ArrivalHandler]] = defaultdict(list)
# handler -> the same handler for many records at once, where the workflow has one.
_batched: dict[ArrivalHandler, ArrivalsHandler] = {}


def arrival_register(
    *, canonical_model: str, handler: ArrivalHandler, batch: ArrivalsHandler | None = None
) -> None:
    """Call `handler` with every record of `canonical_model` a system sends, once applied.
    `batch`, when given, takes many such records at once (a batch of webhooks: `on_arrivals`)
    to the same effect as `handler` taking each in turn, with its look-ups and writes made
    once for all of them."""
    if handler not in _arrivals[canonical_model]:
        _arrivals[canonical_model].append(handler)
    if batch is not None:
        _batched[handler] = batch


def arrival_awaited(canonical_model: str) -> bool:
    """Whether a workflow waits for records of `canonical_model` (polls of a model without a
    table read it only then: integrations/sync/polling.py)."""
    return bool(_arrivals.get(canonical_model))


def on_arrival(*, arrival: Arrival) -> None:
    """Hand an applied record to the workflows that wait for its model (no handler: nothing).
    A handler that fails is logged and does not undo the record's own processing: the record
    is stored, and the workflow's run can be resumed (its trigger delivered again, or its
    case retried)."""
    for handler in _arrivals.get(arrival.canonical_model, ()):
        _hand(handler, arrival)


def on_arrivals(*, arrivals: Sequence[Arrival]) -> None:
    """`on_arrival` for many records (a batch of webhooks, in the order they came): each run
    of consecutive records of one model goes to a handler's batch form where it has one, else
    to the handler one by one. A batch that fails is logged and its records are handed over one
    by one, so one record's fault holds up no other."""
    start = 0
    while start < len(arrivals):
        model = arrivals[start].canonical_model
        end = start
        while end < len(arrivals) and arrivals[end].canonical_model == model:
            end += 1
        group = arrivals[start:end]
        for handler in _arrivals.get(model, ()):
            batch = _batched.get(handler)
            if batch is not None and len(group) > 1:
                try:
                    batch(group)
                    continue
                except Exception:
                    logger.exception(
                        "the %s step after %s %s records failed; handing them over one by one",
                        getattr(batch, "__qualname__", batch),
                        len(group),
                        model,
                    )
            for arrival in group:
                _hand(handler, arrival)
        start = end


def _hand(handler: ArrivalHandler, arrival: Arrival) -> None:
    try:
        handler(arrival)
    except Exception:
        logger.exception(
            "the %s step after %s %s failed",
            getattr(handler, "__qualname__", handler),
            arrival.canonical_model,
            arrival.external_id,
        )


class AfterPollHook(Protocol):
    def __call__(self, *, connection_id: int, since: datetime) -> object: ...


_after_poll: list[AfterPollHook] = []


def after_poll_register(hook: AfterPollHook) -> None:
    """Call `hook(connection_id=..., since=...)` after each poll of a connection (`since`: when
    the poll started, so the hook can look only at what it stored)."""
    if hook not in _after_poll:
        _after_poll.append(hook)


def run_after_poll(*, connection_id: int, since: datetime) -> None:
    """Run the after-poll hooks, in the order they registered. A hook that fails is logged
    with its traceback and stops neither the hooks after it nor the poll, whose records are
    stored already (one workflow's fault does not hold up another's)."""
    for hook in list(_after_poll):
        try:
            hook(connection_id=connection_id, since=since)
        except Exception:
            logger.exception(
                "the %s hook after the poll of connection %s failed",
                getattr(hook, "__qualname__", hook),
                connection_id,
            )


class AfterPageHook(Protocol):
    def __call__(self, *, connection_id: int, canonical_model: str) -> object: ...


_after_page: list[AfterPageHook] = []


def after_page_register(hook: AfterPageHook) -> None:
    """Call `hook(connection_id=..., canonical_model=...)` each time a polled page has
    committed (its records and the cursor past them), while the rest of the read goes on."""
    if hook not in _after_page:
        _after_page.append(hook)


def run_after_page(*, connection_id: int, canonical_model: str) -> None:
    """Run the after-page hooks. They must be cheap (a ring, not the work): they run on the
    poll's page writer, between one page and the next. A hook that fails is logged and stops
    neither the others nor the poll."""
    for hook in list(_after_page):
        try:
            hook(connection_id=connection_id, canonical_model=canonical_model)
        except Exception:
            logger.exception(
                "the %s hook after a %s page of connection %s failed",
                getattr(hook, "__qualname__", hook),
                canonical_model,
                connection_id,
            )
