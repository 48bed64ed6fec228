"""Switching a legal entity from one ERP to another (a legacy ERP to the new one), as one
audited action with an effective time.

Routing by legal entity (RoutingRule) says where new work goes. A migration between ERPs needs
more than editing that rule: the work already under way must finish where it started, or an
invoice queued for the legacy ERP would be re-rendered for the new one, a milestone run would
post its invoice to one ERP and look for it in the other, and reconciliation would stop looking
at the legacy ERP's postings. So a switch is recorded (RouteSwitch): from which connection, to
which, from when. The route changes when it takes effect (at once when that time is past, else
when it comes: `route_switches_apply_due`, called by the billing run and the console before
they read the routes); the workflows pin the connection on each invoice (its outbox row) and
run (``run.context["erp_connection_id"]``) when they decide it, and keep it, so:

- an invoice rendered, queued, parked or posted for the old ERP stays there (its outbox row
  names the connection; a resend of it uses that row's connection, not the route);
- a draft not rendered yet (its mapping refused it) goes where the route pointed when it was
  made (`SwitchHistory.connection_at` in integrations/selectors.py, with the routes' other
  reads);
- new work (billing events not yet on an invoice, runs not yet past their route decision) goes
  to the new one;
- the page shows, per switch, what is still in flight on each side until it drains
  (`route_switch_in_flight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from integrations.models import (
    AuditEvent,
    Connection,
    Invoice,
    LegalEntity,
    OutboxMessage,
    RouteSwitch,
    RoutingRule,
    RunState,
    SystemRole,
    WorkflowRun,
)
from integrations.selectors import routing_rule_serving
from integrations.services.audit import audit_record

Actor = AbstractBaseUser | AnonymousUser | None

# Where a run keeps the ERP connection it decided on (milestones.py, provisioning.py).
RUN_PIN = "erp_connection_id"
# Outbox rows not yet settled: what "in flight" means on a side.
UNSETTLED = (
    OutboxMessage.State.PENDING,
    OutboxMessage.State.IN_FLIGHT,
    OutboxMessage.State.PARKED,
)


@transaction.atomic
def route_switch_create(
    *,
    legal_entity: LegalEntity | None,
    to_connection: Connection,
    effective_at: datetime | None = None,
    note: str = "",
    actor: Actor,
    role: str = SystemRole.ERP,
) -> RouteSwitch:
    """Record that the entity's `role` work moves to `to_connection` from `effective_at` (now
    when not given), and move its route at once when that time is past. Audited. Refused (a
    ValidationError in words) for a connection of another role or disabled, one that serves
    the entity already, or while another switch of the entity waits for its time."""
    now = timezone.now()
    when = effective_at or now
    where = legal_entity.code if legal_entity is not None else "the default route"
    if to_connection.role != role:
        raise ValidationError(
            {"to_connection": f"{to_connection.name} is no {SystemRole(role).label} connection."}
        )
    if not to_connection.enabled:
        raise ValidationError(
            {"to_connection": f"{to_connection.name} is disabled: enable it before moving work."}
        )
    waiting = RouteSwitch.objects.filter(
        role=role, legal_entity=legal_entity, applied_at__isnull=True
    ).first()
    if waiting is not None:
        raise ValidationError(
            f"A switch of {where} to {waiting.to_connection.name} already waits for "
            f"{waiting.effective_at:%Y-%m-%d %H:%M}; let it take effect first."
        )
    rule = routing_rule_serving(
        role=role,
        legal_entity_id=legal_entity.pk if legal_entity is not None else None,
        # The route as it stands, even to a disabled connection: what the switch moves from.
        enabled_only=False,
        lock=True,
    )
    source = rule.connection if rule is not None else None
    if source is not None and source.pk == to_connection.pk:
        raise ValidationError(
            {"to_connection": f"{to_connection.name} serves {where} already: nothing to switch."}
        )
    switch = RouteSwitch.objects.create(
        role=role,
        legal_entity=legal_entity,
        from_connection=source,
        to_connection=to_connection,
        effective_at=when,
        note=note[:200],
    )
    audit_record(
        actor=actor,
        action=AuditEvent.Action.CREATE,
        instance=switch,
        changes={
            "legal_entity": [None, legal_entity.code if legal_entity is not None else "default"],
            "from_connection": [None, source.name if source is not None else None],
            "to_connection": [None, to_connection.name],
            "effective_at": [None, when.isoformat()],
            "note": [None, note[:200]],
        },
    )
    if when <= now:
        _apply(switch, actor=actor, now=now)
    return switch


def route_switches_apply_due(*, now: datetime | None = None) -> int:
    """Move the routes of the switches whose time has come (one indexed query when none is:
    the usual state). Returns how many were applied."""
    now = now or timezone.now()
    if not RouteSwitch.objects.filter(applied_at__isnull=True, effective_at__lte=now).exists():
        return 0
    applied = 0
    with transaction.atomic():
        due = (
            RouteSwitch.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(applied_at__isnull=True, effective_at__lte=now)
            .select_related("legal_entity", "to_connection")
            .order_by("effective_at", "pk")
        )
        for switch in due:
            _apply(switch, actor=None, now=now)
            applied += 1
    return applied


def _apply(switch: RouteSwitch, *, actor: Actor, now: datetime) -> None:
    """The entity's own route now points at the new connection (made when it had none: the
    default route stays for the others). Audited as a change of the route."""
    rule = (
        RoutingRule.objects.select_for_update(of=("self",))
        .filter(role=switch.role, legal_entity=switch.legal_entity)
        .select_related("connection")
        .first()
    )
    if rule is None:
        rule = RoutingRule.objects.create(
            role=switch.role, legal_entity=switch.legal_entity, connection=switch.to_connection
        )
        audit_record(
            actor=actor,
            action=AuditEvent.Action.CREATE,
            instance=rule,
            changes={"connection": [None, switch.to_connection_id], "switch": [None, switch.pk]},
        )
    elif rule.connection_id != switch.to_connection_id:
        before = rule.connection_id
        rule.connection = switch.to_connection
        rule.save(update_fields=["connection"])
        audit_record(
            actor=actor,
            action=AuditEvent.Action.UPDATE,
            instance=rule,
            changes={"connection": [before, switch.to_connection_id], "switch": [None, switch.pk]},
        )
    switch.applied_at = now
    switch.save(update_fields=["applied_at"])
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=switch,
        changes={"applied_at": [None, now.isoformat()]},
    )


# --- Where a piece of work belongs ----------------------------------------------------------------


def route_switch_latest(*, legal_entity_id: int | None, role: str = SystemRole.ERP) -> Any:
    """The entity's latest applied switch, for the words a run says (None: never switched)."""
    return (
        RouteSwitch.objects.filter(
            role=role, legal_entity_id=legal_entity_id, applied_at__isnull=False
        )
        .select_related("from_connection", "to_connection", "legal_entity")
        .order_by("-effective_at", "-pk")
        .first()
    )


# --- What is still in flight on each side --------------------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """Work of one legal entity still under way on one connection: invoices whose outbox rows
    have not settled (pending, in flight, parked) and runs pinned to it that are not done."""

    invoices: int = 0
    runs: int = 0

    @property
    def total(self) -> int:
        return self.invoices + self.runs


def route_switch_in_flight(switches: list[RouteSwitch]) -> dict[int, dict[str, InFlight]]:
    """For each switch, {"old": ..., "new": ...}: what is under way for its legal entity on the
    connection it left and on the one it moved to. Two grouped queries for all of them."""
    if not switches:
        return {}
    wanted = {
        (s.legal_entity_id, c)
        for s in switches
        for c in (s.from_connection_id, s.to_connection_id)
        if c is not None
    }
    entities = {e for e, _ in wanted}
    connections = {c for _, c in wanted}
    on_entity = Q(legal_entity_id__in=[e for e in entities if e is not None])
    if None in entities:
        on_entity |= Q(legal_entity__isnull=True)
    invoice_type = ContentType.objects.get_for_model(Invoice)
    invoice_entity = dict(
        Invoice.objects.filter(
            on_entity,
            pk__in=OutboxMessage.objects.filter(
                content_type=invoice_type, connection_id__in=connections, state__in=UNSETTLED
            ).values("object_id"),
        ).values_list("pk", "legal_entity_id")
    )
    invoices: dict[tuple[int | None, int], set[int]] = {}
    for invoice_id, connection_id in (
        OutboxMessage.objects.filter(
            content_type=invoice_type,
            object_id__in=list(invoice_entity),
            connection_id__in=connections,
            state__in=UNSETTLED,
        )
        .order_by()
        .values_list("object_id", "connection_id")
        .distinct()
    ):
        key = (invoice_entity[invoice_id], connection_id)
        invoices.setdefault(key, set()).add(invoice_id)
    runs: dict[tuple[int | None, int], int] = {
        (row["legal_entity_id"], int(row["pin"])): row["n"]
        for row in WorkflowRun.objects.filter(on_entity)
        .exclude(state=RunState.DONE)
        .filter(**{f"context__{RUN_PIN}__in": sorted(connections)})
        .values("legal_entity_id", pin=_pin())
        .annotate(n=Count("pk"))
        .order_by()
    }

    def side(entity_id: int | None, connection_id: int | None) -> InFlight:
        if connection_id is None:
            return InFlight()
        key = (entity_id, connection_id)
        return InFlight(invoices=len(invoices.get(key, ())), runs=runs.get(key, 0))

    return {
        s.pk: {
            "old": side(s.legal_entity_id, s.from_connection_id),
            "new": side(s.legal_entity_id, s.to_connection_id),
        }
        for s in switches
    }


def _pin() -> KeyTextTransform:
    return KeyTextTransform(RUN_PIN, "context")


def route_switch_list(*, limit: int = 20) -> list[RouteSwitch]:
    """The latest switches, newest effective time first, with what they name."""
    return list(
        RouteSwitch.objects.select_related(
            "legal_entity", "from_connection", "to_connection"
        ).order_by("-effective_at", "-pk")[:limit]
    )
