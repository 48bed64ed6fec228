"""Opening, joining, clearing and resolving exception cases: the one path every caller takes.

One open case per root cause (fingerprint). A case's blocked records are rows of BlockedRecord;
its totals (count, hours, amount per currency) live on the case and move by what each change adds
or takes away, so joining or clearing N records costs work in proportion to N and a fixed number
of queries, whatever the case already holds (5 entries or 50,000). The message is re-rendered
from those totals on every change, by the case type's template in the catalogue.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from exceptions.catalogue import AUTO_CLOSING, CATALOGUE, Totals, case_type_get
from exceptions.models import BlockedRecord, ExceptionCase

# (record type, record id): how a caller names a record that went through.
RecordKey = tuple[str, int]

# Ids per IN list: 5,000 is a billing chunk (one query for a whole chunk) and stays far below
# SQLite's 32,766 bound variables and PostgreSQL's 65,535 parameters.
IDS_PER_QUERY = 5_000
# Rows per INSERT when a join brings many records (a first billing run: thousands).
INSERT_BATCH = 2_000

OPEN = ExceptionCase.Status.OPEN
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Blocked:
    """A record a case holds up, and what it blocks."""

    record_type: str  # the model name: "timeentry", "invoice", "inboundmessage"
    record_id: int
    label: str = ""
    amount: Decimal = Decimal("0")
    currency: str = ""
    hours: Decimal = Decimal("0")

    def __post_init__(self) -> None:
        # Stored to the cent (BlockedRecord's columns): the case totals add the same figures.
        object.__setattr__(self, "amount", Decimal(self.amount).quantize(CENT, ROUND_HALF_UP))
        object.__setattr__(self, "hours", Decimal(self.hours).quantize(CENT, ROUND_HALF_UP))

    @property
    def key(self) -> RecordKey:
        return (self.record_type, self.record_id)


def case_fingerprint(*, case_type: str, process: str, step: str, subject: Mapping[str, Any]) -> str:
    """The root cause's hash: the case type, process, step and the subject values the catalogue
    names for this type (a project's id, a connection and an error kind, ...)."""
    kind = case_type_get(case_type)
    missing = [key for key in kind.fingerprint if key not in subject]
    if missing:
        raise ValueError(f"a {case_type} case needs {', '.join(missing)} in its subject")
    parts = [case_type, process, step, *(f"{key}={subject[key]}" for key in kind.fingerprint)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def case_open_or_join(
    *,
    case_type: str,
    subject: Mapping[str, Any],
    records: Sequence[Blocked],
    process: str,
    step: str,
    connection_id: int | None = None,
    vendor_message: str = "",
) -> ExceptionCase:
    """Open the case for this root cause, or count these occurrences on the open one: one locked
    write however many records it holds up. A record the case already holds is not added twice.
    The queue, priority, SLA and wording come from the catalogue."""
    kind = case_type_get(case_type)
    missing = kind.subject_keys - set(subject)
    if missing:
        raise ValueError(f"a {case_type} case needs {', '.join(sorted(missing))} in its subject")
    fingerprint = case_fingerprint(case_type=case_type, process=process, step=step, subject=subject)
    first_of: dict[RecordKey, Blocked] = {}
    for record in records:  # the first mention of a record stands
        first_of.setdefault(record.key, record)
    unique = list(first_of.values())
    for _ in range(2):  # a concurrent opener may win the unique constraint; then we join theirs
        try:
            with transaction.atomic():
                now = timezone.now()
                case = (
                    ExceptionCase.objects.select_for_update()
                    .filter(fingerprint=fingerprint, status=OPEN)
                    .first()
                )
                opened = case is None
                if case is None:
                    case = ExceptionCase(
                        fingerprint=fingerprint,
                        process=process,
                        step=step,
                        case_type=case_type,
                        queue=kind.queue,
                        priority=kind.priority,
                        first_seen_at=now,
                        occurrences=0,
                        sla_due_at=now + kind.sla,
                    )
                    new = unique
                else:
                    # Only the records the case does not hold yet count (ON CONFLICT skips the
                    # rest), and the case's totals move by just those.
                    new = [first_of[key] for key in _insert(case.pk, unique)]
                _apply(case, _totals_of(new), sign=1)
                # The latest occurrence's wording stands (the fingerprint's keys are equal).
                case.subject = dict(subject)
                case.message = _message(case)
                case.vendor_message = vendor_message[:4000] or case.vendor_message
                case.connection_id = case.connection_id or connection_id
                case.last_seen_at = now
                case.occurrences += max(1, len(records))
                if opened:
                    case.save(force_insert=True)
                    _insert(case.pk, new)
                else:
                    case.save(update_fields=_JOIN_FIELDS)
                return case
        except IntegrityError:
            continue
    raise RuntimeError(f"could not open or join the {case_type} case {fingerprint}")


def case_records_clear(
    *,
    records: Collection[RecordKey],
    note: str,
    process: str | None = None,
    case_types: Collection[str] | None = None,
) -> set[int]:
    """Records that went through take themselves off every open case holding them (of a type
    that closes by itself; only of `process` and of `case_types`, when given); a case with none
    left resolves itself with `note`. One query finds and locks the cases (through
    BlockedRecord's record index), one takes the records off them, one per case moves its
    totals. Returns the ids of the cases it resolved."""
    qs = _records_qs(records)
    if not qs:
        return set()
    holding = Q()
    for q in qs:
        holding |= Q(pk__in=BlockedRecord.objects.filter(q).values("case_id"))
    with transaction.atomic():
        cases = ExceptionCase.objects.select_for_update().filter(
            holding, status=OPEN, case_type__in=AUTO_CLOSING
        )
        if process is not None:
            cases = cases.filter(process=process)
        if case_types is not None:
            cases = cases.filter(case_type__in=list(case_types))
        # Locked in id order: two clears that share cases never wait for each other in a circle.
        by_id = {case.pk: case for case in cases.order_by("pk")}
        if not by_id:
            return set()
        taken: dict[int, list[Blocked]] = defaultdict(list)
        for case_id, amount, currency, hours in _delete(list(by_id), records):
            taken[case_id].append(Blocked("", 0, "", _cents(amount), currency, _cents(hours)))
        resolved = set()
        now = timezone.now()
        for case_id, gone in taken.items():
            case = by_id[case_id]
            _apply(case, _totals_of(gone), sign=-1)
            fields = [*_TOTAL_FIELDS, "message"]
            if case.record_count == 0:
                case.status = ExceptionCase.Status.RESOLVED
                case.resolved_at = now
                case.resolution_note = note
                fields += ["status", "resolved_at", "resolution_note"]
                resolved.add(case_id)
            case.message = _message(case)
            case.save(update_fields=fields)
    return resolved


@transaction.atomic
def case_resolve(
    *, case_id: int, note: str, status: str = ExceptionCase.Status.RESOLVED
) -> ExceptionCase | None:
    """Close a case by hand (`status` resolved, or waived with the reason in `note`). Its blocked
    records stay on it as the record of what it held up. None if there is no such case."""
    case = ExceptionCase.objects.select_for_update().filter(pk=case_id).first()
    if case is None or case.status != OPEN:
        return case
    if status not in (ExceptionCase.Status.RESOLVED, ExceptionCase.Status.WAIVED):
        raise ValueError(f"a case is closed as resolved or waived, not {status}")
    case.status = status
    case.resolved_at = timezone.now()
    case.resolution_note = note
    case.message = _message(case)
    case.save(update_fields=["status", "resolved_at", "resolution_note", "message"])
    return case


# --- Totals -------------------------------------------------------------------------------------

_TOTAL_FIELDS = ["record_count", "hours_blocked", "amounts", "amount_blocked", "currency"]
_JOIN_FIELDS = [
    *_TOTAL_FIELDS,
    "subject",
    "message",
    "vendor_message",
    "connection",
    "last_seen_at",
    "occurrences",
]


def _message(case: ExceptionCase) -> str:
    kind = CATALOGUE.get(case.case_type)
    if kind is None or not kind.subject_keys <= case.subject.keys():
        return case.message  # a case from before the catalogue: its subject was not kept
    return kind.render(totals=_totals(case), subject=case.subject)


def _totals(case: ExceptionCase) -> Totals:
    return Totals(
        count=case.record_count,
        hours=case.hours_blocked,
        amounts={cur: Decimal(amount) for cur, amount in case.amounts.items()},
    )


def _totals_of(records: Iterable[Blocked]) -> Totals:
    count, hours = 0, Decimal("0")
    amounts: dict[str, Decimal] = defaultdict(Decimal)
    for record in records:
        count += 1
        hours += record.hours
        if record.amount and record.currency:
            amounts[record.currency] += record.amount
    return Totals(count=count, hours=hours, amounts=amounts)


def _apply(case: ExceptionCase, change: Totals, *, sign: int) -> None:
    """Move the case's totals by `change` (sign 1: records joined, -1: records taken off)."""
    case.record_count = (case.record_count or 0) + sign * change.count
    case.hours_blocked = (case.hours_blocked or Decimal("0")) + sign * change.hours
    amounts = {cur: Decimal(amount) for cur, amount in (case.amounts or {}).items()}
    for cur, amount in change.amounts.items():
        amounts[cur] = amounts.get(cur, Decimal("0")) + sign * amount
    amounts = {cur: amount for cur, amount in amounts.items() if amount}
    case.amounts = {cur: str(amount) for cur, amount in sorted(amounts.items())}
    if len(amounts) == 1:
        ((case.currency, case.amount_blocked),) = amounts.items()
    else:
        case.currency, case.amount_blocked = "", Decimal("0")


# --- Blocked records ----------------------------------------------------------------------------


def _records_qs(records: Iterable[RecordKey]) -> list[Q]:
    """Filters naming these records, IDS_PER_QUERY ids each (one for up to 5,000 records)."""
    by_type: dict[str, list[int]] = defaultdict(list)
    for record_type, record_id in records:
        by_type[record_type].append(record_id)
    return [
        Q(record_type=record_type, record_id__in=ids[start : start + IDS_PER_QUERY])
        for record_type, ids in by_type.items()
        for start in range(0, len(ids), IDS_PER_QUERY)
    ]


def _cents(value: object) -> Decimal:
    # SQLite hands decimals back as floats; their shortest repr is the stored two-place value.
    return Decimal(str(value)).quantize(CENT, ROUND_HALF_UP)


# Raw statements for the two hot writes, one round trip each (a join and a clear at 50,000 held
# records stay within 5 ms). ON CONFLICT and RETURNING work on PostgreSQL and on SQLite from 3.35
# (the embedded default; Debian 12 ships 3.40). Only placeholders are formatted in.
_TABLE = BlockedRecord._meta.db_table
# The rows a case already holds are skipped by its unique index and only the new ones come back,
# so a join needs no read of what the case holds.
_INSERT = (
    f"INSERT INTO {_TABLE} (case_id, record_type, record_id, label, amount, currency, hours) "  # noqa: S608
    "VALUES {values} ON CONFLICT (case_id, record_type, record_id) DO NOTHING "
    "RETURNING record_type, record_id"
)
_DELETE = (
    f"DELETE FROM {_TABLE} WHERE case_id IN ({{cases}}) AND record_type = %s "  # noqa: S608
    "AND record_id IN ({ids}) RETURNING case_id, amount, currency, hours"
)


def _insert(case_id: int, records: Sequence[Blocked]) -> list[RecordKey]:
    """Add these records to the case; returns the ones it did not hold yet."""
    added: list[RecordKey] = []
    with connection.cursor() as cursor:
        for start in range(0, len(records), INSERT_BATCH):
            batch = records[start : start + INSERT_BATCH]
            params: list[Any] = []
            for r in batch:
                params += [case_id, r.record_type, r.record_id, r.label[:255], r.amount,
                           r.currency, r.hours]  # fmt: skip
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(batch))
            cursor.execute(_INSERT.format(values=values), params)
            added += [(str(t), int(i)) for t, i in cursor.fetchall()]
    return added


def _delete(case_ids: list[int], records: Iterable[RecordKey]) -> list[tuple[Any, ...]]:
    """Take these records off these cases; returns (case id, amount, currency, hours) of each
    row taken off (DELETE ... RETURNING: one statement, no read before it)."""
    rows: list[tuple[Any, ...]] = []
    by_type: dict[str, list[int]] = defaultdict(list)
    for record_type, record_id in records:
        by_type[record_type].append(record_id)
    cases = ", ".join(["%s"] * len(case_ids))
    with connection.cursor() as cursor:
        for record_type, ids in by_type.items():
            for start in range(0, len(ids), IDS_PER_QUERY):
                chunk = ids[start : start + IDS_PER_QUERY]
                ids_sql = ", ".join(["%s"] * len(chunk))
                cursor.execute(
                    _DELETE.format(cases=cases, ids=ids_sql), [*case_ids, record_type, *chunk]
                )
                rows += cursor.fetchall()
    return rows
