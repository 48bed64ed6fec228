"""Opening, joining and resolving exception cases. One open case per root cause (fingerprint).

A case lists the records it blocks, each with the amount and hours it holds up; the case's
`amount_blocked` and `hours_blocked` are the sums over that list, recomputed on every change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from exceptions.models import ExceptionCase

# Time to resolve, by priority, from the first sighting (P1 within 4 hours ... P4 two weeks).
SLA_BY_PRIORITY = {
    1: timedelta(hours=4),
    2: timedelta(days=1),
    3: timedelta(days=3),
    4: timedelta(days=14),
}


def case_fingerprint(*parts: object) -> str:
    """A stable hash of what makes two failures the same root cause."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def blocked_record(
    *,
    record_type: str,
    record_id: int,
    label: str,
    amount: Decimal = Decimal("0"),
    currency: str = "",
    hours: Decimal = Decimal("0"),
) -> dict[str, Any]:
    return {
        "type": record_type,
        "id": record_id,
        "label": label,
        "amount": str(amount),
        "currency": currency,
        "hours": str(hours),
    }


def _key(record: dict[str, Any]) -> tuple[Any, Any]:
    return (record.get("type"), record.get("id"))


def _set_records(case: ExceptionCase, records: list[dict[str, Any]]) -> None:
    case.records = records
    case.amount_blocked = sum((Decimal(r.get("amount") or 0) for r in records), Decimal("0"))
    case.hours_blocked = sum((Decimal(r.get("hours") or 0) for r in records), Decimal("0"))
    currencies = {str(r["currency"]) for r in records if r.get("currency")}
    case.currency = currencies.pop() if len(currencies) == 1 else ""


def exception_case_open_or_join(
    *,
    fingerprint: str,
    process: str,
    step: str,
    case_type: str,
    queue: str,
    message: str | Callable[[ExceptionCase], str],
    vendor_message: str = "",
    connection_id: int | None = None,
    record: dict[str, Any] | None = None,
    records: Sequence[dict[str, Any]] = (),
    priority: int = ExceptionCase.Priority.P3,
) -> ExceptionCase:
    """Open a case for this root cause, or count these occurrences on the open one: `record`
    for one blocked record, `records` for all of a batch's at once (one locked write per root
    cause, however many records it holds up).

    `message` may be a function of the case, so the wording can carry the totals after these
    occurrences are added ("3 invoices for EUR 48,200 cannot be created").
    """
    added = [*([record] if record is not None else []), *records]
    now = timezone.now()
    for _ in range(2):  # a concurrent opener may win the unique constraint; then we join theirs
        try:
            with transaction.atomic():
                case = (
                    ExceptionCase.objects.select_for_update()
                    .filter(fingerprint=fingerprint, status=ExceptionCase.Status.OPEN)
                    .first()
                )
                if case is None:
                    case = ExceptionCase(
                        fingerprint=fingerprint,
                        process=process,
                        step=step,
                        case_type=case_type,
                        queue=queue,
                        priority=priority,
                        first_seen_at=now,
                        occurrences=0,
                        sla_due_at=now + SLA_BY_PRIORITY[priority],
                        connection_id=connection_id,
                    )
                    _set_records(case, [])
                held = {_key(r) for r in case.records}
                new = []
                for blocked in added:
                    if _key(blocked) not in held:
                        held.add(_key(blocked))
                        new.append(blocked)
                if new:
                    _set_records(case, [*case.records, *new])
                case.message = message(case) if callable(message) else message
                case.vendor_message = vendor_message[:4000] or case.vendor_message
                case.last_seen_at = now
                case.occurrences += max(1, len(added))
                case.save()
                return case
        except IntegrityError:
            continue
    raise RuntimeError(f"could not open or join the case for fingerprint {fingerprint}")


def exception_case_resolve(*, case: ExceptionCase, note: str) -> ExceptionCase:
    if case.status != ExceptionCase.Status.OPEN:
        return case
    case.status = ExceptionCase.Status.RESOLVED
    case.resolved_at = timezone.now()
    case.resolution_note = note
    case.save(update_fields=["status", "resolved_at", "resolution_note"])
    return case


def exception_case_drop_record(*, case_id: int, record: dict[str, Any], note: str) -> None:
    """A record of the case synced after all: take it off; the case closes when none is left."""
    exception_case_drop_records(case_id=case_id, records=[record], note=note)


@transaction.atomic
def exception_case_drop_records(
    *, case_id: int, records: Sequence[dict[str, Any]], note: str
) -> None:
    """Records of the case that synced after all, taken off in one locked write; the case
    closes when none is left."""
    case = ExceptionCase.objects.select_for_update().filter(pk=case_id).first()
    if case is None or case.status != ExceptionCase.Status.OPEN:
        return
    gone = {_key(r) for r in records}
    remaining = [r for r in case.records if _key(r) not in gone]
    if len(remaining) == len(case.records):
        return
    _set_records(case, remaining)
    case.save(update_fields=["records", "amount_blocked", "hours_blocked", "currency"])
    if not remaining:
        exception_case_resolve(case=case, note=note)
