"""Reads behind the REST API: one function per list, returning the rows with what they show
loaded up front (the API's filter backend, ordering and paging apply on top of them)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    CharField,
    Count,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from exceptions.models import BlockedRecord
from integrations import models as m
from integrations.services.schedules import (
    POLL_INTERVAL_S,
    STALE_AFTER_INTERVALS,
    PollStaleness,
    poll_staleness,
)


def record_list(*, model: type[m.CanonicalRecord]) -> QuerySet[m.CanonicalRecord]:
    return model._default_manager.order_by("pk")


def connection_list() -> QuerySet[m.Connection]:
    """With what their health shows (``poll_health``): the breaker's row and the cursors."""
    return m.Connection.objects.select_related("health").prefetch_related("cursors").order_by("pk")


def _per_connection(rows: QuerySet[Any]) -> Coalesce:
    """How many of ``rows`` belong to the outer query's connection (a subquery; 0 if none)."""
    counted = (
        rows.filter(connection=OuterRef("pk"))
        .order_by()
        .values("connection")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def connection_console_list(*, now: datetime | None = None) -> QuerySet[m.Connection]:
    """Connections with what the console's list shows: the breaker's row, the cursors, the last
    hour's calls by outcome (subqueries through the ``(connection, -started_at)`` index, so rows
    never multiply) and the last test (through the audit trail's ``(object_type, object_id,
    -at)`` index)."""
    hour_ago = (now or timezone.now()) - timedelta(hours=1)
    recent = m.SyncAttempt.objects.filter(started_at__gte=hour_ago)
    tests = m.AuditEvent.objects.filter(
        object_type="connection",
        object_id=Cast(OuterRef("pk"), output_field=CharField()),
        action=m.AuditEvent.Action.TEST,
    ).order_by("-at", "-id")
    return (
        m.Connection.objects.select_related("health")
        .prefetch_related("cursors")
        .annotate(
            calls_ok=_per_connection(recent.filter(outcome=m.SyncAttempt.Outcome.SUCCESS)),
            calls_failed=_per_connection(recent.exclude(outcome=m.SyncAttempt.Outcome.SUCCESS)),
            calls_throttled=_per_connection(recent.filter(status_code=429)),
            last_test_at=Subquery(tests.values("at")[:1]),
            last_test_outcome=Subquery(
                tests.annotate(outcome=KT("changes__outcome")).values("outcome")[:1]
            ),
        )
    )


def connection_tests(*, connection_id: int, limit: int = 5) -> list[m.AuditEvent]:
    """The connection's latest tests from the console, newest first."""
    return list(
        m.AuditEvent.objects.filter(
            object_type="connection",
            object_id=str(connection_id),
            action=m.AuditEvent.Action.TEST,
        ).order_by("-at", "-id")[:limit]
    )


def audit_trail(
    *, object_type: str, object_ids: Iterable[Any] | None = None, limit: int = 10
) -> list[m.AuditEvent]:
    """Who changed rows of one kind (or these rows of it), newest first."""
    events = m.AuditEvent.objects.filter(object_type=object_type)
    if object_ids is not None:
        events = events.filter(object_id__in=[str(pk) for pk in object_ids])
    return list(events.order_by("-at", "-id")[:limit])


def routing_rule_list() -> QuerySet[m.RoutingRule]:
    """The ERP routes per legal entity, each with a sort value for the entity (the default
    rule, with none, sorts first)."""
    return (
        m.RoutingRule.objects.filter(role=m.SystemRole.ERP)
        .select_related("legal_entity", "connection")
        .annotate(
            entity_code=Coalesce("legal_entity__code", Value("")),
            connection_name=F("connection__name"),
        )
    )


# --- Routing: which connection serves a legal entity for a role -----------------------------------


def routing_rule_serving(
    *, role: str, legal_entity_id: int | None, enabled_only: bool = True, lock: bool = False
) -> m.RoutingRule | None:
    """The rule that serves the legal entity for `role`: its own, else the role's default
    (None: neither). One query, with its connection: the entity's rule sorts before the
    default one. `enabled_only` passes over rules whose connection is disabled (where work is
    sent); `lock` locks the rule found, for a change of the route (route_switches.py)."""
    rules = m.RoutingRule.objects.filter(role=role).filter(
        Q(legal_entity_id=legal_entity_id) | Q(legal_entity__isnull=True)
    )
    if enabled_only:
        rules = rules.filter(connection__enabled=True)
    if lock:
        rules = rules.select_for_update(of=("self",))
    return (
        rules.select_related("connection")
        .order_by(F("legal_entity_id").asc(nulls_last=True), "pk")
        .first()
    )


def routing_connection(*, role: str, legal_entity_id: int | None) -> m.Connection | None:
    """The connection of `role` that serves the legal entity: its routing rule, else the
    role's default rule (an enabled connection's), else the one enabled connection of the role
    (none, or several without a rule: None). One query in the usual case: every step of every
    run asks (within ``routes_remembered``, once per batch)."""
    memo = _routes_memo.get()
    if memo is not None and (role, legal_entity_id) in memo:
        return memo[(role, legal_entity_id)]
    rule = routing_rule_serving(role=role, legal_entity_id=legal_entity_id)
    if rule is not None:
        found: m.Connection | None = rule.connection
    else:
        enabled = list(m.Connection.objects.filter(role=role, enabled=True).order_by("pk")[:2])
        found = enabled[0] if len(enabled) == 1 else None
    if memo is not None:
        memo[(role, legal_entity_id)] = found
    return found


_routes_memo: ContextVar[dict[tuple[str, int | None], m.Connection | None] | None] = ContextVar(
    "routes_memo", default=None
)


@contextmanager
def routes_remembered() -> Iterator[None]:
    """Within it, `routing_connection` answers each role and legal entity from its first
    look-up: for a batch of work whose runs each ask several times (an inbound batch of 50
    messages: 150 look-ups, one per route). A route changed meanwhile applies from the next
    batch, a second or so later; a run pins the route it started on anyway (RUN_PIN)."""
    token = _routes_memo.set({})
    try:
        yield
    finally:
        _routes_memo.reset(token)


@dataclass(frozen=True)
class SwitchHistory:
    """The applied switches of a role (RouteSwitch), per legal entity, oldest first: which
    connection served an entity at a moment. Read once per billing run (a handful of rows)."""

    by_entity: dict[int | None, list[tuple[datetime, int | None, int]]]

    @classmethod
    def load(cls, role: str = m.SystemRole.ERP) -> SwitchHistory:
        by_entity: dict[int | None, list[tuple[datetime, int | None, int]]] = {}
        for entity_id, when, source, target in (
            m.RouteSwitch.objects.filter(role=role, applied_at__isnull=False)
            .order_by("effective_at", "pk")
            .values_list(
                "legal_entity_id", "effective_at", "from_connection_id", "to_connection_id"
            )
        ):
            by_entity.setdefault(entity_id, []).append((when, source, target))
        return cls(by_entity)

    def connection_at(self, entity_id: int | None, when: datetime) -> int | None:
        """The connection id the entity's switches say served it at `when`; None when no switch
        of it took effect after `when` (the current route serves it)."""
        for effective, source, _ in self.by_entity.get(entity_id, ()):
            if effective > when:
                return source
        return None


@dataclass(frozen=True)
class RouteTable:
    """Every route of a role at once, for work that asks for many legal entities (a billing
    run: two queries, not one per entity): the enabled connection each entity's rule names
    (key None: the role's default), and the switch history."""

    by_entity: dict[int | None, m.Connection]
    history: SwitchHistory

    def serving(self, legal_entity_id: int | None) -> m.Connection | None:
        """What `routing_rule_serving` answers for the entity: its rule's connection, else the
        default's."""
        return self.by_entity.get(legal_entity_id) or self.by_entity.get(None)


def route_table_load(*, role: str) -> RouteTable:
    rules = m.RoutingRule.objects.filter(role=role, connection__enabled=True)
    return RouteTable(
        {r.legal_entity_id: r.connection for r in rules.select_related("connection")},
        SwitchHistory.load(role),
    )


def cross_reference_list() -> QuerySet[m.CrossReference]:
    return m.CrossReference.objects.select_related("content_type").order_by("pk")


def audit_event_list() -> QuerySet[m.AuditEvent]:
    """Newest first."""
    return m.AuditEvent.objects.select_related("actor").order_by("-at", "-id")


def ownership_rule_list() -> QuerySet[m.OwnershipRule]:
    return m.OwnershipRule.objects.order_by("object_type", "field")


def periodic_task_list() -> QuerySet[PeriodicTask]:
    """Beat's periodic tasks with their schedules loaded."""
    return PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked")


def outbox_message_list() -> QuerySet[m.OutboxMessage]:
    """Newest first."""
    return m.OutboxMessage.objects.select_related("content_type").order_by("-id")


def inbound_message_list() -> QuerySet[m.InboundMessage]:
    """Newest first."""
    return m.InboundMessage.objects.order_by("-id")


def sync_attempt_list() -> QuerySet[m.SyncAttempt]:
    """Newest first."""
    return m.SyncAttempt.objects.order_by("-started_at", "-id")


def reconciliation_run_list() -> QuerySet[m.ReconciliationRun]:
    """Newest first, with their connection."""
    return m.ReconciliationRun.objects.select_related("connection").order_by("-started_at", "-id")


def reconciliation_gap_list() -> QuerySet[m.ReconciliationGap]:
    """Newest run first, then by kind and month; with the project, invoice and case shown."""
    return m.ReconciliationGap.objects.select_related(
        "run", "project", "invoice", "exception_case"
    ).order_by("-run_id", "kind", "period", "id")


def outbox_parked(
    *, ids: list[int] | None = None, exception_case_id: int | None = None, limit: int
) -> list[m.OutboxMessage]:
    """Parked outbox rows among `ids`, or parked by one exception case; oldest first."""
    rows = m.OutboxMessage.objects.filter(state=m.OutboxMessage.State.PARKED)
    if ids:
        rows = rows.filter(pk__in=ids)
    if exception_case_id:
        rows = rows.filter(exception_case_id=exception_case_id)
    return list(rows.order_by("id")[:limit])


def inbound_held(
    *, ids: list[int] | None = None, exception_case_id: int | None = None, limit: int
) -> list[m.InboundMessage]:
    """Inbound messages by id, or those an exception case holds up (a mapping case names the
    raw messages it could not map); oldest first."""
    rows = m.InboundMessage.objects.all()
    if ids:
        rows = rows.filter(pk__in=ids)
    if exception_case_id:
        held = BlockedRecord.objects.filter(
            case_id=exception_case_id, record_type="inboundmessage"
        ).values("record_id")
        rows = rows.filter(pk__in=held)
    return list(rows.order_by("id")[:limit])


# -- poll health ---------------------------------------------------------------------------------

# Polling runs every 120 s by default (beat's ``poll-all`` and each connection's own row, which
# a person may change: integrations/services/schedules.py).


def poll_stale_after_s() -> float:
    """How old a poll cursor's last success may get before it is a case, at the default
    polling interval: three intervals (one failed poll is noise, three in a row a broken
    connection); ``CONCORD_POLL_STALE_AFTER_S`` overrides it. A connection polled on another
    interval has its own (``poll_staleness``)."""
    return float(
        getattr(settings, "CONCORD_POLL_STALE_AFTER_S", STALE_AFTER_INTERVALS * POLL_INTERVAL_S)
    )


def _older_than(limit: datetime) -> Q:
    return Q(last_success_at__lt=limit) | Q(last_success_at__isnull=True, last_polled_at__lt=limit)


def poll_stale_q(now: datetime | None = None) -> Q:
    """The cursors past their SLA: three of their connection's polling intervals (its own
    schedule's, else poll-all's). One that never succeeded is as old as its first poll. A
    connection whose polling is paused is not polled, so never stale. One query (the
    schedules), then a condition per distinct interval."""
    now = now or timezone.now()
    staleness = poll_staleness()
    by_after: dict[float, list[int]] = {}
    for connection_id, after in staleness.by_connection.items():
        if after is not None:
            by_after.setdefault(after, []).append(connection_id)
    stale = Q(pk__in=[])
    if staleness.default_after_s is not None:
        stale |= ~Q(connection_id__in=list(staleness.by_connection)) & _older_than(
            now - timedelta(seconds=staleness.default_after_s)
        )
    for after, ids in sorted(by_after.items()):
        stale |= Q(connection_id__in=ids) & _older_than(now - timedelta(seconds=after))
    return stale


@dataclass(frozen=True)
class PollObjectHealth:
    object_type: str
    last_success_at: datetime | None
    failing_since: datetime | None
    last_error: str
    cursor_age_s: int | None  # since the last success (or the first poll, if none yet)
    stale: bool


@dataclass(frozen=True)
class PollHealth:
    """A connection's polls at a glance: ``state`` is "ok", "failing" (a poll raised since
    the last success), "stale" (failing or not, some cursor is past its SLA) or "not polled"."""

    state: str
    failing_since: datetime | None = None
    last_error: str = ""
    cursor_age_s: int | None = None  # of the oldest cursor
    objects: list[PollObjectHealth] = field(default_factory=list)


def poll_health(
    cursors: Iterable[m.PollCursor],
    *,
    now: datetime | None = None,
    staleness: PollStaleness | None = None,
) -> PollHealth:
    """From a connection's cursors (prefetched: no query here). ``staleness``: the
    connections' own polling intervals (``poll_staleness()``, read once for a list), else the
    default interval's."""
    now = now or timezone.now()
    cursors = list(cursors)
    after: float | None = poll_stale_after_s()
    if staleness is not None and cursors:
        after = staleness.after_s(cursors[0].connection_id)  # None: not scheduled, never stale
    limit = timedelta(seconds=after) if after is not None else None
    objects = []
    for c in sorted(cursors, key=lambda c: c.object_type):
        since = c.last_success_at or c.last_polled_at
        age = int((now - since).total_seconds()) if since else None
        objects.append(
            PollObjectHealth(
                object_type=c.object_type,
                last_success_at=c.last_success_at,
                failing_since=c.failing_since,
                last_error=c.last_error,
                cursor_age_s=age,
                stale=since is not None and limit is not None and now - since > limit,
            )
        )
    if not objects:
        return PollHealth(state="not polled")
    failing = [o for o in objects if o.failing_since is not None]
    latest = max(
        (c for c in cursors if c.failing_since is not None and c.last_failure_at),
        key=lambda c: c.last_failure_at or now,
        default=None,
    )
    ages = [o.cursor_age_s for o in objects if o.cursor_age_s is not None]
    state = "stale" if any(o.stale for o in objects) else "failing" if failing else "ok"
    return PollHealth(
        state=state,
        failing_since=min((o.failing_since for o in failing if o.failing_since), default=None),
        last_error=f"{latest.object_type}: {latest.last_error}" if latest is not None else "",
        cursor_age_s=max(ages) if ages else None,
        objects=objects,
    )
