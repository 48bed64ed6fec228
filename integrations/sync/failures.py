"""Turning failed outbox rows into exception cases a person can act on, and closing them again.

Classification decides who sees a failure: a vendor's validation error goes to the business
owner's queue with the amount it blocks; a permanent error, or transient ones that outlasted every
retry, go to the integration admins. One case per root cause, however many rows it blocks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Q

from exceptions.models import ExceptionCase, Queue
from exceptions.services import (
    blocked_record,
    case_fingerprint,
    exception_case_drop_records,
    exception_case_open_or_join,
)
from integrations.models import OutboxMessage

if TYPE_CHECKING:
    from integrations.sync.outbox import Outcome


def _describe(case: ExceptionCase, *, what: str, subject: str, reason: str) -> str:
    count = len(case.records)
    noun = what if count == 1 else f"{what}s"
    impact = []
    if case.amount_blocked:
        impact.append(f"{case.currency or 'mixed currencies'} {case.amount_blocked:,.2f}")
    if case.hours_blocked:
        impact.append(f"{case.hours_blocked:,.2f} hours")
    blocked = f" ({', '.join(impact)})" if impact else ""
    about = f" for {subject}" if subject else ""
    return f"{count} {noun}{about} cannot be sent{blocked}: {reason}"


@dataclass
class _Parking:
    """One failed row's case: who must act, why, and what it holds up."""

    fingerprint: str
    case: dict[str, Any]  # exception_case_open_or_join's arguments, but the records
    record: dict[str, Any]


def park_with_cases(outcomes: Sequence[Outcome]) -> None:
    """Park failed rows, each on the open case of its root cause: one case write per root cause
    (however many rows it holds up) and one update of those rows, in one transaction each."""
    groups: dict[str, list[tuple[Outcome, _Parking]]] = defaultdict(list)
    for outcome in outcomes:
        parking = _parking(outcome, exhausted=outcome.error_class == "transient")
        groups[parking.fingerprint].append((outcome, parking))
    for fingerprint, group in groups.items():
        with transaction.atomic():
            case = exception_case_open_or_join(
                fingerprint=fingerprint,
                records=[parking.record for _, parking in group],
                **group[0][1].case,
            )
            for outcome, _ in group:
                OutboxMessage.objects.filter(pk=outcome.message.pk).update(
                    state=OutboxMessage.State.PARKED,
                    last_error=(outcome.vendor_message or outcome.error)[:2000],
                    error_class=outcome.error_class,
                    exception_case=case,
                )


def _parking(outcome: Outcome, *, exhausted: bool) -> _Parking:
    message = outcome.message
    context = message.context or {}
    vendor = message.connection.get_vendor_display()
    if outcome.error_class == "business":
        case_type = "vendor_validation"
        queue = context.get("queue", Queue.FINANCE)
        reason = f"{vendor} says: {outcome.vendor_message or outcome.error}"
        # Same vendor complaint about the same subject (e.g. the same customer) = one root cause.
        root = (context.get("subject", ""), outcome.vendor_message or outcome.error)
        priority = ExceptionCase.Priority.P2
    else:
        case_type = "retries_exhausted" if exhausted else "permanent_error"
        queue = Queue.INTEGRATION_ADMIN
        reason = (
            f"{vendor} kept failing after {message.attempts} attempts (last: {outcome.error})"
            if exhausted
            else f"{vendor} refused the call: {outcome.error}"
        )
        root = (message.connection_id, outcome.error.split(":")[0])
        priority = ExceptionCase.Priority.P1 if exhausted else ExceptionCase.Priority.P2

    model = message.content_type.model
    what = context.get("what", model)
    subject = context.get("subject", "")
    return _Parking(
        fingerprint=case_fingerprint(message.process, message.step, case_type, *root),
        case={
            "process": message.process,
            "step": message.step,
            "case_type": case_type,
            "queue": queue,
            "priority": priority,
            "message": lambda c: _describe(c, what=what, subject=subject, reason=reason),
            "vendor_message": outcome.vendor_message or outcome.error,
            "connection_id": message.connection_id,
        },
        record=blocked_record(
            record_type=model,
            record_id=message.object_id,
            label=context.get("label", f"{model} {message.object_id}"),
            amount=Decimal(context.get("amount", "0")),
            currency=context.get("currency", ""),
            hours=Decimal(context.get("hours", "0")),
        ),
    )


def close_cases_for(delivered: Sequence[OutboxMessage]) -> None:
    """A record that went through takes itself off the open case that held it."""
    records = Q()
    for message in delivered:
        records |= Q(content_type_id=message.content_type_id, object_id=message.object_id)
    held = (
        OutboxMessage.objects.filter(records, exception_case__status=ExceptionCase.Status.OPEN)
        .values_list("exception_case_id", "content_type__model", "object_id")
        .distinct()
    )
    by_case: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for case_id, model, object_id in held:
        if case_id is not None:
            by_case[case_id].append({"type": model, "id": object_id})
    for case_id, taken in by_case.items():  # one locked write per case
        exception_case_drop_records(
            case_id=case_id,
            records=taken,
            note="Closed automatically: every record it held has since been delivered.",
        )
