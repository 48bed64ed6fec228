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
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from exceptions.services import Blocked, case_fingerprint, case_open_or_join, case_records_clear
from integrations.classification import ErrorClass
from integrations.models import OutboxMessage
from integrations.sync.bulk import update_rows
from integrations.sync.outcome import Outcome

# The case types a parked row goes on (below); their retry replays the parked rows
# (outbox.py registers it: outbox_replay lives there).
PARKING_CASE_TYPES = (
    "vendor_validation",
    "vendor_answer_mismatch",
    "retries_exhausted",
    "permanent_error",
)


@dataclass
class _Parking:
    """One failed row's case: which type, about what, and what it holds up."""

    case_type: str
    subject: dict[str, Any]
    record: Blocked

    def fingerprint(self, message: OutboxMessage) -> str:
        return case_fingerprint(
            case_type=self.case_type,
            process=message.process,
            step=message.step,
            subject=self.subject,
        )


def park_with_cases(outcomes: Sequence[Outcome]) -> None:
    """Park failed rows, each on the open case of its root cause: one case write per root cause
    (however many rows it holds up) and one update of those rows, in one transaction each."""
    groups: dict[str, list[tuple[Outcome, _Parking]]] = defaultdict(list)
    for outcome in outcomes:
        parking = _parking(outcome, exhausted=outcome.error_class == ErrorClass.TRANSIENT)
        groups[parking.fingerprint(outcome.message)].append((outcome, parking))
    for group in groups.values():
        first, parking = group[0]
        with transaction.atomic():
            case = case_open_or_join(
                case_type=parking.case_type,
                subject=parking.subject,
                records=[p.record for _, p in group],
                process=first.message.process,
                step=first.message.step,
                connection_id=first.message.connection_id,
                vendor_message=first.vendor_message or first.error,
            )
            parked = []
            for outcome, _ in group:
                message = outcome.message
                message.state = OutboxMessage.State.PARKED
                message.last_error = (outcome.vendor_message or outcome.error)[:2000]
                message.error_class = outcome.error_class
                message.exception_case = case
                parked.append(message)
            # One UPDATE for the group, not one per row: a batch of 50 refused invoices of one
            # root cause was 50 round trips.
            update_rows(
                OutboxMessage,
                parked,
                ["state", "last_error", "error_class", "exception_case"],
            )


def _parking(outcome: Outcome, *, exhausted: bool) -> _Parking:
    """Which case a failed row belongs on. The catalogue (exceptions/catalogue.py) gives each
    type its queue, priority, wording and what makes one root cause."""
    message = outcome.message
    context = message.context or {}
    model = ContentType.objects.get_for_id(message.content_type_id).model
    subject: dict[str, Any] = {
        "vendor": message.connection.get_vendor_display(),
        "noun": context.get("what", model),
        # What the row is for ("customer Acme GmbH"); else the connection it was sent to.
        "about": context.get("subject") or f"the {message.connection.name} connection",
    }
    if outcome.error_class == ErrorClass.BUSINESS:
        case_type = "vendor_validation"
        # Same vendor complaint about the same subject (e.g. the same customer) = one root cause.
        subject["complaint"] = outcome.vendor_message or outcome.error
    elif outcome.mismatch:
        # The vendor answered with another record: one root cause per connection (a misrouted
        # tenant, a proxy, a stand-in), whichever records it was sent; the latest answer shows.
        case_type = "vendor_answer_mismatch"
        subject.update(connection_id=message.connection_id, answer=outcome.vendor_message)
    else:
        case_type = "retries_exhausted" if exhausted else "permanent_error"
        subject.update(
            connection_id=message.connection_id,
            error_kind=outcome.error.split(":")[0],
            error=outcome.error,
            attempts=message.attempts,
        )
    return _Parking(
        case_type=case_type,
        subject=subject,
        record=Blocked(
            record_type=model,
            record_id=message.object_id,
            label=context.get("label", f"{model} {message.object_id}"),
            amount=Decimal(context.get("amount", "0")),
            currency=context.get("currency", ""),
            hours=Decimal(context.get("hours", "0")),
        ),
    )


def close_cases_for(delivered: Sequence[OutboxMessage]) -> None:
    """Records that went through take themselves off the open cases of their process that held
    them; a case with none left closes itself."""
    by_process: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for message in delivered:
        model = ContentType.objects.get_for_id(message.content_type_id).model
        by_process[message.process].add((model, message.object_id))
    for process, records in by_process.items():
        case_records_clear(
            records=records,
            process=process,
            note="Closed automatically: every record it held has since been delivered.",
        )
