"""Opening, joining, clearing and resolving exception cases: the one path every caller takes.

One open case per root cause (fingerprint). A case's blocked records are rows of BlockedRecord;
its totals (count, hours, amount per currency) live on the case and move by what each change adds
or takes away, so joining or clearing N records costs work in proportion to N and a fixed number
of queries, whatever the case already holds (5 entries or 50,000). The message is re-rendered
from those totals on every change, by the case type's template in the catalogue.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, Group
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from exceptions import tally_sql
from exceptions.catalogue import (
    AUTO_CLOSING,
    CATALOGUE,
    QUEUE_ROLES,
    SLA_BY_PRIORITY,
    Totals,
    case_type_get,
)
from exceptions.models import (
    AlertThreshold,
    BlockedRecord,
    CaseEvent,
    CaseRoute,
    ExceptionCase,
    Queue,
    SlaPolicy,
    WorkQueue,
)
from integrations import models as records

# Who acted: a person, or None for Concord itself (a sync, a billing run, a sweep).
Actor = AbstractBaseUser | AnonymousUser | None
SYSTEM = "Concord"

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
    legal_entity_id: int | None = None,
    region: str = "",
) -> ExceptionCase:
    """Open the case for this root cause, or count these occurrences on the open one: one locked
    write however many records it holds up. A record the case already holds is not added twice.
    The wording comes from the catalogue; the queue and priority from the most specific routing
    rule (CaseRoute) matching the case type, process, legal entity and region, else from the
    catalogue; the SLA from the SlaPolicy table. The legal entity and region are the caller's,
    else what the subject (a project, a contract) or the first record names. Every open and
    join is in the case's audit trail. Joining an open case is two statements on PostgreSQL:
    one locks it and inserts the records it does not hold yet, one updates its totals and
    message (rendered here from the totals the locked row had) and appends the audit row."""
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
                # The open case, locked, with the records it did not hold yet added to it.
                joined = _join_locked(fingerprint, unique)
                opened = joined is None
                before: dict[str, Any] = {}
                if joined is None:
                    scope = _scope(subject, unique, legal_entity_id, region)
                    route = _route(case_type, process, scope.legal_entity_id, scope.region)
                    queue = (route.queue_id if route else None) or kind.queue
                    priority = (route.priority if route else None) or kind.priority
                    case = ExceptionCase(
                        fingerprint=fingerprint,
                        process=process,
                        step=step,
                        case_type=case_type,
                        queue=queue,
                        priority=priority,
                        first_seen_at=now,
                        occurrences=0,
                        sla_due_at=now + _sla(priority, kind.sla),
                        group_key=case_group_key(
                            case_type=case_type, process=process, step=step, subject=subject
                        ),
                        legal_entity_id=scope.legal_entity_id,
                        region=scope.region,
                        project_id=scope.project_id,
                        customer_id=scope.customer_id,
                    )
                    new = unique
                    routed_by = route.pk if route else None
                else:
                    case, added = joined
                    before = {"record_count": case.record_count, "occurrences": case.occurrences}
                    # Only the records the case did not hold yet count (ON CONFLICT skipped the
                    # rest), and the case's totals move by just those.
                    new = [first_of[key] for key in added]
                _apply(case, _totals_of(new), sign=1)
                # The latest occurrence's wording stands (the fingerprint's keys are equal).
                case.subject = dict(subject)
                case.message = _message(case)
                case.vendor_message = vendor_message[:4000] or case.vendor_message
                case.connection_id = case.connection_id or connection_id
                case.last_seen_at = now
                case.occurrences += max(1, len(records))
                after: dict[str, Any] = {
                    "record_count": case.record_count,
                    "occurrences": case.occurrences,
                    "records": len(new),
                }
                writes: list[_Statement] = []
                if opened:
                    case.save(force_insert=True)
                    _insert(case.pk, new)
                    after.update(
                        queue=case.queue,
                        priority=case.priority,
                        sla_due_at=case.sla_due_at.isoformat() if case.sla_due_at else None,
                        routed_by=routed_by,
                        legal_entity_id=case.legal_entity_id,
                        region=case.region,
                    )
                    action = CaseEvent.Action.OPENED
                else:
                    writes.append(_case_update(case, _JOIN_FIELDS))
                    action = CaseEvent.Action.JOINED
                event = case_event(case=case, action=action, before=before, after=after, at=now)
                _write([*writes, _events_insert([event])])
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
    left resolves itself with `note`. One statement finds and locks the cases (through
    BlockedRecord's record index) and takes the records off them, one moves the totals of every
    case touched and appends their audit rows (on SQLite these run one by one). Returns the ids
    of the cases it resolved."""
    holding, params = _records_where(records)
    if not holding:
        return set()
    types = sorted(AUTO_CLOSING if case_types is None else set(case_types) & AUTO_CLOSING)
    if not types:
        return set()
    where = (
        f"id IN (SELECT case_id FROM {_TABLE} WHERE {holding}) AND status = %s "  # noqa: S608
        f"AND case_type IN ({', '.join(['%s'] * len(types))})"
    )
    params += [OPEN, *types]
    if process is not None:
        where += " AND process = %s"
        params.append(process)
    with transaction.atomic():
        # The cases, locked, with the records taken off them (case id, amount, currency, hours).
        by_id, gone_rows = _clear_locked(where, params, records)
        if not by_id:
            return set()
        taken: dict[int, list[Blocked]] = defaultdict(list)
        for case_id, amount, currency, hours in gone_rows:
            taken[case_id].append(Blocked("", 0, "", _cents(amount), currency, _cents(hours)))
        resolved = set()
        now = timezone.now()
        events: list[CaseEvent] = []
        writes: list[_Statement] = []
        for case_id, gone in taken.items():
            case = by_id[case_id]
            count_before = case.record_count
            _apply(case, _totals_of(gone), sign=-1)
            fields = [*_TOTAL_FIELDS, "message"]
            events.append(
                case_event(
                    case=case,
                    action=CaseEvent.Action.CLEARED,
                    before={"record_count": count_before},
                    after={"record_count": case.record_count, "records": len(gone)},
                    at=now,
                )
            )
            if case.record_count == 0:
                case.status = ExceptionCase.Status.RESOLVED
                case.resolved_at = now
                case.resolution_note = note
                case.revision += 1
                fields += ["status", "resolved_at", "resolution_note", "revision"]
                resolved.add(case_id)
                events.append(
                    case_event(
                        case=case,
                        action=CaseEvent.Action.RESOLVED,
                        before={"status": OPEN},
                        after={"status": case.status, "note": note, "automatic": True},
                        at=now,
                    )
                )
            case.message = _message(case)
            writes.append(_case_update(case, fields))
        if events:  # the audit rows of every case touched, in one INSERT
            writes.append(_events_insert(events))
        _write(writes)
    return resolved


@transaction.atomic
def case_resolve(
    *,
    case_id: int,
    note: str,
    status: str = ExceptionCase.Status.RESOLVED,
    actor: Actor = None,
) -> ExceptionCase | None:
    """Close a case (`status` resolved, or waived with the reason in `note`), by `actor` or by
    Concord when None. Its blocked records stay on it as the record of what it held up. None if
    there is no such case; a case already closed is returned as it is."""
    case = ExceptionCase.objects.select_for_update().filter(pk=case_id).first()
    if case is None or case.status != OPEN:
        return case
    if status not in (ExceptionCase.Status.RESOLVED, ExceptionCase.Status.WAIVED):
        raise ValueError(f"a case is closed as resolved or waived, not {status}")
    case.status = status
    case.resolved_at = timezone.now()
    case.resolution_note = note
    case.message = _message(case)
    case.revision += 1
    case.save(update_fields=["status", "resolved_at", "resolution_note", "message", "revision"])
    case_event(
        case=case,
        action=CaseEvent.Action.WAIVED if status == "waived" else CaseEvent.Action.RESOLVED,
        actor=actor,
        before={"status": OPEN},
        after={"status": status, "note": note},
        at=case.resolved_at,
    ).save()
    return case


# --- Audit trail, groups, scope, routing, SLA ---------------------------------------------------


def case_event(
    *,
    case: ExceptionCase,
    action: str,
    actor: Actor = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> CaseEvent:
    """An audit row for `case` at its current revision (not saved: the caller inserts it, alone
    or with others in one INSERT)."""
    person: Any = actor if isinstance(actor, AbstractBaseUser) else None
    return CaseEvent(
        case=case,
        at=at or timezone.now(),
        actor=person,
        actor_label=person.get_username() if person is not None else SYSTEM,
        action=action,
        revision=case.revision,
        before=dict(before or {}),
        after=dict(after or {}),
    )


def case_group_key(*, case_type: str, process: str, step: str, subject: Mapping[str, Any]) -> str:
    """The root-cause group's hash: the case type, process, step and the subject values of the
    type's group keys (the catalogue's `group_keys`: its fingerprint but the most specific
    key). Cases sharing it are one group; the group actions also keep to one queue."""
    kind = case_type_get(case_type)
    parts = [case_type, process, step, *(f"{k}={subject.get(k)}" for k in kind.group_keys)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Scope:
    legal_entity_id: int | None = None
    region: str = ""
    project_id: int | None = None
    customer_id: int | None = None


# Where a case's subject or first blocked record names its scope: record type -> the model and
# its columns holding the project, customer, legal entity and region ("" where it has none).
_SCOPE_COLUMNS: dict[str, tuple[type[Any], tuple[str, str, str, str]]] = {
    "project": (records.Project, ("id", "customer_id", "legal_entity_id", "region")),
    "contract": (records.Contract, ("", "customer_id", "legal_entity_id", "")),
    "timeentry": (
        records.TimeEntry,
        ("project_id", "project__customer_id", "project__legal_entity_id", "project__region"),
    ),
    "billingevent": (
        records.BillingEvent,
        ("project_id", "project__customer_id", "legal_entity_id", "project__region"),
    ),
    "invoice": (records.Invoice, ("", "customer_id", "legal_entity_id", "")),
    "customer": (records.Customer, ("", "id", "legal_entity_id", "")),
}


def _scope(
    subject: Mapping[str, Any],
    held: Sequence[Blocked],
    legal_entity_id: int | None,
    region: str,
) -> _Scope:
    """Where a new case belongs: the caller's legal entity and region, else those of the
    project or contract its subject names, else of its first blocked record (a time entry's
    project, an invoice, a customer). One small query at most, and only when a case opens."""
    named: tuple[str, Any] | None = None
    if isinstance(subject.get("project_id"), int):
        named = ("project", subject["project_id"])
    elif isinstance(subject.get("contract_id"), int):
        named = ("contract", subject["contract_id"])
    elif held and held[0].record_type in _SCOPE_COLUMNS:
        named = (held[0].record_type, held[0].record_id)
    found: dict[str, Any] = {}
    if named is not None:
        model, columns = _SCOPE_COLUMNS[named[0]]
        wanted = {key: column for key, column in zip(_SCOPE_KEYS, columns, strict=True) if column}
        row = model._default_manager.filter(pk=named[1]).values(*wanted.values()).first()
        if row is not None:
            found = {key: row[column] for key, column in wanted.items()}
    entity = subject.get("legal_entity_id")
    return _Scope(
        legal_entity_id=legal_entity_id
        or (entity if isinstance(entity, int) else None)
        or found.get("legal_entity"),
        region=region or found.get("region") or "",
        project_id=found.get("project"),
        customer_id=found.get("customer"),
    )


_SCOPE_KEYS = ("project", "customer", "legal_entity", "region")


def _route(
    case_type: str, process: str, legal_entity_id: int | None, region: str
) -> CaseRoute | None:
    """The most specific routing rule matching the case: the most conditions set, then case
    type before process before legal entity before region, then the oldest rule."""
    entity = Q(legal_entity__isnull=True)
    if legal_entity_id is not None:
        entity |= Q(legal_entity_id=legal_entity_id)
    rules = CaseRoute.objects.filter(
        Q(case_type="") | Q(case_type=case_type),
        Q(process="") | Q(process=process),
        Q(region="") | Q(region=region),
        entity,
    )

    def rank(rule: CaseRoute) -> tuple[int, tuple[bool, ...], int]:
        conditions = (
            bool(rule.case_type),
            bool(rule.process),
            rule.legal_entity_id is not None,
            bool(rule.region),
        )
        return (sum(conditions), conditions, -rule.pk)

    return max(rules, key=rank, default=None)


def _sla(priority: int, default: timedelta) -> timedelta:
    """Time to resolve at this priority: the SlaPolicy table, else the catalogue's default."""
    within = SlaPolicy.objects.filter(priority=priority).values_list("resolve_within", flat=True)
    return next(iter(within), None) or default


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


def _records_where(records: Iterable[RecordKey]) -> tuple[str, list[Any]]:
    """A WHERE clause over BlockedRecord naming these records (through its record index),
    IDS_PER_QUERY ids per IN list, and its parameters; "" when there are none."""
    by_type: dict[str, list[int]] = defaultdict(list)
    for record_type, record_id in records:
        by_type[record_type].append(record_id)
    clauses: list[str] = []
    params: list[Any] = []
    for record_type, ids in by_type.items():
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[start : start + IDS_PER_QUERY]
            clauses.append(
                f"(record_type = %s AND record_id IN ({', '.join(['%s'] * len(chunk))}))"
            )
            params += [record_type, *chunk]
    return " OR ".join(clauses), params


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


_CASES = ExceptionCase._meta.db_table
_CASE_FIELDS = {f.name: f for f in ExceptionCase._meta.concrete_fields}
# One SQL statement and its parameters.
_Statement = tuple[str, list[Any]]


def _cases_locked(where: str, params: Sequence[Any]) -> list[ExceptionCase]:
    """The cases matching `where`, whole, locked until the transaction ends (FOR UPDATE where
    the database has row locks), in id order. Raw SQL: building the ORM's query cost as much as
    running it on the join's path."""
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    sql = f"SELECT * FROM {_CASES} WHERE {where} ORDER BY id{lock}"  # noqa: S608
    return list(ExceptionCase.objects.raw(sql, params))


def _one_statement() -> bool:
    """PostgreSQL runs a lock, a read and writes as one statement (data-modifying WITH): one
    round trip instead of one each. SQLite has no row locks to take (its writer holds the
    whole database) and no WITH ... INSERT; there the statements run one by one."""
    return connection.vendor == "postgresql"


def _join_locked(
    fingerprint: str, records: Sequence[Blocked]
) -> tuple[ExceptionCase, list[RecordKey]] | None:
    """Lock the open case of this fingerprint and add these records to it: the case as it was
    before, and the records it did not hold yet (those it held are skipped by its unique
    index, so a join reads nothing of what the case holds). None when no case is open.

    On PostgreSQL one statement: the rows are inserted for the case its first part locked, so
    no record joins a case another transaction is changing."""
    if not _one_statement() or not records or len(records) > INSERT_BATCH:
        found = _cases_locked("fingerprint = %s AND status = %s", [fingerprint, OPEN])
        return (found[0], _insert(found[0].pk, records)) if found else None
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(records))
    sql = (
        f"WITH c AS (SELECT * FROM {_CASES} WHERE fingerprint = %s AND status = %s "  # noqa: S608
        "FOR UPDATE), "
        f"added AS (INSERT INTO {_TABLE} "
        "(case_id, record_type, record_id, label, amount, currency, hours) "
        f"SELECT c.id, v.* FROM c, (VALUES {values}) AS v "
        "ON CONFLICT (case_id, record_type, record_id) DO NOTHING "
        "RETURNING record_type, record_id) "
        "SELECT c.*, (SELECT json_agg(json_build_array(record_type, record_id)) FROM added)::text "
        "AS added_json FROM c"
    )
    params: list[Any] = [fingerprint, OPEN]
    for r in records:
        params += [r.record_type, r.record_id, r.label[:255], r.amount, r.currency, r.hours]
    found = list(ExceptionCase.objects.raw(sql, params))
    if not found:
        return None
    added = json.loads(getattr(found[0], "added_json", None) or "[]")
    return found[0], [(str(t), int(i)) for t, i in added]


def _clear_locked(
    where: str, params: list[Any], records: Collection[RecordKey]
) -> tuple[dict[int, ExceptionCase], list[tuple[Any, ...]]]:
    """Lock the open cases matching `where` (in id order: two clears sharing cases never wait
    for each other in a circle) and take these records off them: the cases as they were before,
    by id, and (case id, amount, currency, hours) of each row taken off.

    On PostgreSQL one statement for up to IDS_PER_QUERY records: the rows deleted are those of
    the cases its first part locked."""
    if not _one_statement() or len(records) > IDS_PER_QUERY:
        by_id = {case.pk: case for case in _cases_locked(where, params)}
        return by_id, (_delete(list(by_id), records) if by_id else [])
    holding, holding_params = _records_where(records)
    sql = (
        f"WITH c AS (SELECT * FROM {_CASES} WHERE {where} ORDER BY id FOR UPDATE), "  # noqa: S608
        f"gone AS (DELETE FROM {_TABLE} b USING c WHERE b.case_id = c.id AND ({holding}) "
        "RETURNING b.case_id, b.amount, b.currency, b.hours) "
        "SELECT c.*, (SELECT json_agg(json_build_array(gone.amount, gone.currency, gone.hours)) "
        "FROM gone WHERE gone.case_id = c.id)::text AS gone_json FROM c ORDER BY c.id"
    )
    by_id, rows = {}, []
    for case in ExceptionCase.objects.raw(sql, [*params, *holding_params]):
        by_id[case.pk] = case
        gone = json.loads(getattr(case, "gone_json", None) or "[]", parse_float=Decimal)
        rows += [(case.pk, amount, currency, hours) for amount, currency, hours in gone]
    return by_id, rows


def _case_update(case: ExceptionCase, fields: Sequence[str]) -> _Statement:
    """The UPDATE of these fields of the case's row: what save(update_fields=...) writes,
    without compiling a query."""
    columns, params = [], []
    for name in fields:
        field = _CASE_FIELDS[name]
        columns.append(f"{field.column} = %s")
        params.append(field.get_db_prep_save(getattr(case, field.attname), connection))
    sql = f"UPDATE {_CASES} SET {', '.join(columns)} WHERE id = %s"  # noqa: S608
    return sql, [*params, case.pk]


_EVENT_FIELDS = [f for f in CaseEvent._meta.concrete_fields if not f.primary_key]
_EVENT_INSERT = (
    f"INSERT INTO {CaseEvent._meta.db_table} "  # noqa: S608
    f"({', '.join(str(f.column) for f in _EVENT_FIELDS)}) VALUES {{values}}"
)


def _events_insert(events: Sequence[CaseEvent]) -> _Statement:
    """The INSERT of these audit rows, one statement for all (what bulk_create writes, without
    compiling a query). Inserts only: the trail stays append-only."""
    row = f"({', '.join(['%s'] * len(_EVENT_FIELDS))})"
    params = [
        field.get_db_prep_save(getattr(event, field.attname), connection)
        for event in events
        for field in _EVENT_FIELDS
    ]
    return _EVENT_INSERT.format(values=", ".join([row] * len(events))), params


def _write(statements: Sequence[_Statement]) -> None:
    """Run these writes (none returns rows): on PostgreSQL as one statement, every one but the
    last a data-modifying WITH of the last (each runs once and to completion, whatever the
    last reads); elsewhere one by one. Nothing to run: nothing is sent."""
    with connection.cursor() as cursor:
        if _one_statement() and len(statements) > 1:
            *first, (last, last_params) = statements
            parts = ", ".join(f"w{i} AS ({sql})" for i, (sql, _) in enumerate(first))
            params = [p for _, ps in first for p in ps]
            cursor.execute(f"WITH {parts} {last}", [*params, *last_params])
        else:
            for sql, params in statements:
                cursor.execute(sql, params)


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


# --- The standard queues ------------------------------------------------------------------------

# When a case counts as due soon, per priority: about a quarter of its SLA (P1 4 h -> 1 h, P2 a
# day -> 4 h, P3 three days -> 12 h, P4 two weeks -> 2 days).
DUE_SOON_BY_PRIORITY: dict[int, timedelta] = {
    ExceptionCase.Priority.P1: timedelta(hours=1),
    ExceptionCase.Priority.P2: timedelta(hours=4),
    ExceptionCase.Priority.P3: timedelta(hours=12),
    ExceptionCase.Priority.P4: timedelta(days=2),
}
# A new case blocking this much in its currency is announced to its queue (exceptions/alerts.py)
# unless a row for its process or currency says otherwise.
DEFAULT_ALERT_THRESHOLD = Decimal("10000.00")


@transaction.atomic
def work_queues_ensure() -> None:
    """The standard queues (one per Queue code, its role groups as members), the SLA per
    priority and the default alert threshold, where missing. Rows that exist are left as the
    admins set them. Runs after every migrate (exceptions/apps.py), like the role groups."""
    for code, name in Queue.choices:
        queue, created = WorkQueue.objects.get_or_create(code=code, defaults={"name": name})
        if created:
            for role in QUEUE_ROLES.get(code, ()):
                queue.groups.add(Group.objects.get_or_create(name=role)[0])
    for priority, within in SLA_BY_PRIORITY.items():
        SlaPolicy.objects.get_or_create(
            priority=priority,
            defaults={"resolve_within": within, "due_soon_within": DUE_SOON_BY_PRIORITY[priority]},
        )
    AlertThreshold.objects.get_or_create(
        process="", currency="", defaults={"amount": DEFAULT_ALERT_THRESHOLD}
    )


# --- The open cases' tally (CaseTally) ------------------------------------------------------------


def case_tally_compact() -> int:
    """Fold CaseTally's deltas into it (exceptions/tally_sql.py); the number of deltas folded.
    Cheap when there are none; beat runs it every few seconds so a read sums few deltas."""
    if connection.vendor != "postgresql":
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [tally_sql.COMPACT_LOCK])
        if not cursor.fetchone()[0]:
            return 0  # another compaction is folding them
        cursor.execute(tally_sql.COMPACT)
        folded = cursor.rowcount
        cursor.execute(tally_sql.PRUNE)
    return max(folded, 0)


def case_tally_rebuild() -> None:
    """Count every open case afresh into CaseTally (after a restore or a bulk load)."""
    if connection.vendor != "postgresql":
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [tally_sql.COMPACT_LOCK])
        cursor.execute(tally_sql.REBUILD)
