"""Fix in place: a person corrects the data a case names, and the blocked work goes again.

One path for every fix form the catalogue names (exceptions/catalogue.py `fix_form`):

1. the case is locked and checked as every action checks it (the person works in its queue,
   holds the case type's `fix_permission`, the case is open and still at the revision they saw);
2. the canonical record is changed through `integrations.sync.records.record_update` (the one
   write path: validated, stamped as the person's, audited with before and after);
3. for each changed field a SYSTEM owns (the ownership rules: customer's tax number -> ERP), the
   change is written to that system through the outbox, rendered by the connection's published
   mapping with the vendor's update operation, for every connection of that role that holds the
   record (its cross-reference). Never only in Concord: when the system has no update operation,
   or its mapping carries none of the fields, the result says "changed in Concord only";
4. the case's audit trail gets a "fixed" event (who, what changed, where it was written);
5. the held work is retried. Where it is the owning system's refusal of this very data (an
   invoice the ERP refused for the customer's missing tax number) and a write there is on its
   way, the retry waits for it: it runs from that row's after-delivery step (`fix_delivered`),
   so the invoice is not sent again before the ERP has the tax number. Otherwise (Concord's own
   billing checks) it runs at once, in the same transaction. A record a system sent invalid is
   not replayed (its message still holds the bad value): that system's corrected version,
   once read, clears the case.

What each fix form does is one entry of `FIXERS`: what it works on (`target`: the customer an
ERP refused an invoice for, the project, the contract of a missing rate...) and how its values
are applied (`apply`): an edit of the record (`record_fix`), a record added (`record_add`: an
exchange rate, a rate card; a routing rule through the audited config service), a merge
(identity.record_merge), an ownership decision. Workflows never build a vendor payload or name
a vendor field: an update's payload comes from the published mapping, the record's id in the
vendor goes where the mapping's own external-id path says.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import F

from exceptions.access import case_access
from exceptions.actions import case_retry
from exceptions.catalogue import CATALOGUE, CaseType
from exceptions.errors import CaseConflict, CaseForbidden, CaseNotFound, CaseRefused
from exceptions.models import CaseEvent, ExceptionCase
from exceptions.retry import retry_handler_for
from exceptions.services import Actor, case_event, case_resolve
from integrations.mapping.apply import map_inbound
from integrations.mapping.canonical import BOOKKEEPING, canonical_models
from integrations.mapping.ownership import load_ownership_rules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import (
    Connection,
    Contract,
    CrossReference,
    Customer,
    ExchangeRate,
    InboundMessage,
    Invoice,
    LegalEntity,
    MappingSet,
    OutboxMessage,
    Project,
    RateCard,
    RoutingRule,
    SystemRole,
)
from integrations.selectors import routing_rule_serving
from integrations.services.config_rows import config_row_create
from integrations.sync.errors import MergeRefused
from integrations.sync.identity import record_merge
from integrations.sync.outbound import partial_update_message
from integrations.sync.outbox import outbox_enqueue
from integrations.sync.records import record_create, record_update
from integrations.sync.steps import delivered_step_register
from integrations.vendors import vendor_operation

logger = logging.getLogger(__name__)

# The outbox rows a fix writes to an owning system: their process and step (Concord's names).
PROCESS = "fix_in_place"
UPDATE_STEP = "owner_update"
# The case event of a fix. Written through exceptions.services.case_event like every action's.
FIXED = CaseEvent.Action.FIXED


# --- What a fix did ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerWrite:
    """One owning system's part of a fix: where it goes and whether it was queued there."""

    system: str  # "Xero (Demo UK)", or the role ("the ERP") when no connection is known
    fields: tuple[str, ...]  # the canonical fields it concerns
    queued: bool  # an outbox row was written
    note: str  # in words: "written to Xero (Demo UK) through the outbox"


@dataclass(frozen=True)
class RecordFix:
    record: models.Model
    changed: dict[str, tuple[Any, Any]]  # field -> (before, after)
    writes: tuple[OwnerWrite, ...] = ()

    @property
    def queued(self) -> list[OwnerWrite]:
        return [w for w in self.writes if w.queued]


@dataclass(frozen=True)
class FixResult:
    case_id: int
    status: str
    revision: int
    summary: str  # the result in words, shown to the person as it is
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)


# --- The one entry point -------------------------------------------------------------------------


@dataclass(frozen=True)
class FixTarget:
    """What a case's fix form works on: the record it edits (None for a form that adds one:
    an exchange rate, a rate card, a route) and how the page names it."""

    record: models.Model | None
    label: str
    initial: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """What a form's applier did: the record changed or added, its fields before and after,
    and the owning systems' part."""

    record: models.Model
    changed: dict[str, tuple[Any, Any]]
    writes: tuple[OwnerWrite, ...] = ()
    added: bool = False
    words: str = ""  # what was done, when neither "X set on" nor "added" says it

    @property
    def queued(self) -> list[OwnerWrite]:
        return [w for w in self.writes if w.queued]


@dataclass(frozen=True)
class FixSpec:
    """One fix form: what it works on (`target`) and how its values are applied (`apply`).
    `wait_for_owner`: the held work is the owning system's refusal of this data (an invoice the
    ERP refused for the customer's tax number), so it goes again only once that system has
    the change; otherwise (Concord's own billing checks) it goes again at once."""

    target: Callable[[ExceptionCase], FixTarget | None]
    apply: Callable[[ExceptionCase, FixTarget, Mapping[str, Any], Actor], Applied]
    wait_for_owner: bool = False
    # Instead of a retry (None: retry): what closes the case. A record the system sent
    # invalid is not replayed (its message still holds the bad value): the system's next
    # version of it, corrected, clears the case (integrations/sync/inbound.py).
    instead_of_retry: str | None = None


def fix_case_get(*, actor: Actor, case_id: int) -> tuple[ExceptionCase, CaseType, str]:
    """The case, its type, and why the actor may not apply its fix ("" when they may), once
    the actor may see it (CaseNotFound, CaseForbidden otherwise: not their queue). Someone who
    sees the case without the type's fix permission (an integration admin on a finance case)
    is told whose it is rather than refused the case. A read: nothing is locked."""
    case = ExceptionCase.objects.filter(pk=case_id).first()
    if case is None:
        raise CaseNotFound(f"There is no case #{case_id}.")
    try:
        return case, _allowed(actor, case), ""
    except CaseForbidden as refused:
        if not case_access(actor).allows(case.queue):
            raise
        return case, CATALOGUE[case.case_type], str(refused)


def fix_target(*, case: ExceptionCase) -> FixTarget | None:
    """What the case's fix form works on (None: the case names nothing it could fix, or the
    form is not built)."""
    kind = CATALOGUE.get(case.case_type)
    spec = FIXERS.get(kind.fix_form) if kind is not None else None
    return spec.target(case) if spec is not None else None


@transaction.atomic
def fix_apply(
    *, actor: Actor, case_id: int, revision: int | None, values: Mapping[str, Any]
) -> FixResult:
    """Apply the case's fix form: change or add the record (through the write path and the
    ownership rules, written to the owning system through the outbox), audit the fix on the
    case, then retry the held work (at once, or once the owning system has the change). Raises
    the exceptions/errors.py errors, or Django's ValidationError naming the fields."""
    case = ExceptionCase.objects.select_for_update().filter(pk=case_id).first()
    if case is None:
        raise CaseNotFound(f"There is no case #{case_id}.")
    kind = _allowed(actor, case)
    if revision is not None and case.revision != revision:
        raise CaseConflict(
            f"Case #{case.pk} changed since you opened it (revision {revision}, now "
            f"{case.revision}); nothing was changed. Reload it."
        )
    if case.status != ExceptionCase.Status.OPEN:
        raise CaseConflict(f"Case #{case.pk} is {case.status} already; nothing was changed.")
    spec = FIXERS.get(kind.fix_form)
    if spec is None:
        raise CaseRefused(
            f"The {kind.fix_form.replace('_', ' ')} form is not built yet; nothing was changed."
        )
    target = spec.target(case)
    if target is None:
        raise CaseRefused(f"Case #{case.pk} names nothing this form can fix; nothing was changed.")
    done = spec.apply(case, target, values, actor)
    if not done.changed:
        raise CaseRefused(f"Nothing was changed: {done.record} already has these values.")

    # The applier may have moved the case (a merge resolves it): bump what stands now.
    case.refresh_from_db(fields=["revision", "status"])
    case.revision += 1
    case.save(update_fields=["revision"])
    case_event(
        case=case,
        action=FIXED,
        actor=actor,
        before={k: _plain(b) for k, (b, _) in done.changed.items()},
        after={
            "form": kind.fix_form,
            "record": f"{done.record._meta.model_name} {done.record.pk}",
            **{k: _plain(a) for k, (_, a) in done.changed.items()},
            "written": [w.note for w in done.writes],
        },
    ).save()

    if done.words:
        parts = [done.words]
    elif done.added:
        parts = [f"added {done.record._meta.verbose_name} {done.record}"]
    else:
        parts = [f"{_field_list(done.changed)} set on {done.record}"]
    parts += [w.note for w in done.writes]
    if case.status != ExceptionCase.Status.OPEN:
        parts.append(f"the case is {case.status}")
    elif spec.instead_of_retry is not None or _holds_inbound(case):
        parts.append(
            (spec.instead_of_retry or INBOUND_CLEARS).format(system=case.subject.get("system"))
        )
    elif spec.wait_for_owner and done.queued:
        # The held work goes again once the owning system has the change (fix_delivered).
        parts.append(f"the {_held_noun(case)} will be sent again once it is there")
    else:
        parts.append(_retry_now(actor, case))
    case.refresh_from_db(fields=["status", "revision"])
    summary = "; ".join(parts) + "."
    return FixResult(
        case_id=case.pk,
        status=case.status,
        revision=case.revision,
        summary=_first_up(summary),
        changed=done.changed,
    )


# What closes a case holding messages a system sent invalid, instead of a replay of them.
INBOUND_CLEARS = "the case closes itself when {system} sends the record again, corrected"


def _holds_inbound(case: ExceptionCase) -> bool:
    """Whether the case holds inbound messages (a record a system sent that could not be
    stored): replaying them would send the same bad values again."""
    return case.blocked_records.filter(record_type="inboundmessage").exists()


def _allowed(actor: Actor, case: ExceptionCase) -> CaseType:
    if not case_access(actor).allows(case.queue):
        raise CaseForbidden(f"Case #{case.pk} is in a queue you do not work in; you cannot fix it.")
    kind = CATALOGUE.get(case.case_type)
    if kind is None:
        raise CaseRefused(f"Case #{case.pk} has a type the catalogue does not know.")
    has_perm = getattr(actor, "has_perm", None)
    if has_perm is None or not has_perm(kind.fix_permission):
        raise CaseForbidden(
            f"Fixing a {case.case_type.replace('_', ' ')} case needs the permission "
            f"{kind.fix_permission}, which you do not have."
        )
    return kind


def _retry_now(actor: Actor, case: ExceptionCase) -> str:
    if retry_handler_for(case) is None:
        return "nothing held to send again"
    try:
        outcome = case_retry(actor=actor, case_id=case.pk, revision=case.revision)
    except CaseConflict:
        return "nothing held was left to send again"
    return outcome.summary


# --- The record and its owners -------------------------------------------------------------------


def record_fix(
    *,
    record: models.Model,
    data: Mapping[str, Any],
    actor: Actor,
    retry_cases: Sequence[int] = (),
    absent: str = "",
) -> RecordFix:
    """Change `record` through the write path and write each changed field a system owns to
    that system through the outbox (one row per connection holding the record). The rows name
    `retry_cases`, whose held work their delivery retries (fix_delivered). `absent`: what
    happens instead where no connection of the owning role holds the record yet."""
    names = list(data)
    before = {name: getattr(record, name) for name in names}
    updated = record_update(record=record, data=dict(data), actor=actor)  # type: ignore[type-var]
    changed = {
        name: (before[name], getattr(updated, name))
        for name in names
        if before[name] != getattr(updated, name)
    }
    if not changed:
        return RecordFix(record=updated, changed={})
    object_type = str(record._meta.model_name)
    rules = load_ownership_rules()
    by_role: dict[str, list[str]] = defaultdict(list)
    for name in changed:
        owner = rules.owner_of(object_type, name)
        if owner:
            by_role[owner].append(name)
    writes: list[OwnerWrite] = []
    content_type = ContentType.objects.get_for_model(record)
    for role, fields in sorted(by_role.items()):
        held = list(
            CrossReference.objects.filter(
                content_type=content_type,
                object_id=record.pk,
                connection__role=role,
                connection__enabled=True,
            )
            .select_related("connection")
            .order_by("connection_id")
        )
        values = {name: changed[name][1] for name in fields}
        if not held:
            writes.append(_not_there(updated, role, tuple(fields), absent))
            continue
        for xref in held:
            writes.append(
                _owner_write(
                    retry_cases=retry_cases,
                    record=updated,
                    connection=xref.connection,
                    external_id=xref.external_id,
                    values=values,
                )
            )
    return RecordFix(record=updated, changed=changed, writes=tuple(writes))


def _owner_write(
    *,
    retry_cases: Sequence[int],
    record: models.Model,
    connection: Connection,
    external_id: str,
    values: Mapping[str, Any],
) -> OwnerWrite:
    """One outbox row updating `values` on the connection's copy of the record, or why not."""
    system = _system(connection)
    fields = tuple(values)
    object_type = str(record._meta.model_name)
    if vendor_operation(connection.vendor, object_type, "update") is None:
        return OwnerWrite(
            system,
            fields,
            False,
            f"{system} cannot be updated by Concord ({connection.get_vendor_display()} has no "
            f"{object_type} update); changed in Concord only",
        )
    update = partial_update_message(
        connection=connection,
        canonical_model=object_type,
        external_id=external_id,
        values=values,
        process=PROCESS,
        step=UPDATE_STEP,
        record=record,
        version=_next_version(record, connection),
        context={
            "what": str(record._meta.verbose_name),
            "subject": f"{record._meta.verbose_name} {record}",
            "label": f"{_names(list(fields)).capitalize()} of {record}",
            # Whose held work goes again once this is delivered (fix_delivered).
            "retry_cases": list(retry_cases),
        },
    )
    if update.message is None:
        return OwnerWrite(system, fields, False, f"{update.reason}; changed in Concord only")
    if update.sent != fields:  # the label names what is sent
        update.message.context["label"] = f"{_names(list(update.sent)).capitalize()} of {record}"
    outbox_enqueue(messages=[update.message])
    unsent = [name for name in fields if name not in update.sent]
    note = f"written to {system} through the outbox"
    if unsent:
        note += f" ({_names(unsent)}: no field there, changed in Concord only)"
    return OwnerWrite(system, update.sent, True, note)


def _not_there(record: models.Model, role: str, fields: tuple[str, ...], absent: str) -> OwnerWrite:
    """No connection of the owning role holds the record yet: nothing to update there."""
    rule = _route(role, getattr(record, "legal_entity_id", None))
    system = _system(rule.connection) if rule is not None else f"the {role.upper()}"
    then = absent.format(fields=_names(list(fields))) if absent else "changed in Concord only"
    return OwnerWrite(
        system,
        fields,
        False,
        f"{record} is not in {system} yet, so nothing is written there: {then}",
    )


def _next_version(record: models.Model, connection: Connection) -> int:
    """One more than the fixes written for this record to this connection so far (the record
    row is locked by record_update, so two fixes cannot take the same number)."""
    latest = (
        OutboxMessage.objects.filter(
            connection=connection,
            content_type=ContentType.objects.get_for_model(record),
            object_id=record.pk,
            process=PROCESS,
            step=UPDATE_STEP,
        )
        .order_by("-record_version")
        .values_list("record_version", flat=True)
        .first()
    )
    return (latest or 0) + 1


# --- After the owning system took the change -----------------------------------------------------


def fix_delivered(messages: Sequence[OutboxMessage]) -> None:
    """The owning system has the fixed values: retry the held work of the cases the fixes
    named, as Concord (the person's fix is on the case already). Runs in the transaction that
    marks the rows done; one case's failing retry is logged and leaves the others alone."""
    case_ids = sorted(
        {int(pk) for m in messages for pk in (m.context or {}).get("retry_cases", [])}
    )
    for case_id in case_ids:
        try:
            with transaction.atomic():
                _retry_as_concord(case_id)
        except Exception:
            logger.exception("retrying case %s after its fix was delivered failed", case_id)


def _retry_as_concord(case_id: int) -> None:
    case = (
        ExceptionCase.objects.select_for_update()
        .filter(pk=case_id, status=ExceptionCase.Status.OPEN)
        .first()
    )
    if case is None or _holds_inbound(case):
        return
    handler = retry_handler_for(case)
    if handler is None:
        return
    before = {"status": case.status, "record_count": case.record_count}
    result = handler(case)
    if result.count == 0:
        return
    ExceptionCase.objects.filter(pk=case.pk).update(revision=F("revision") + 1)
    case.refresh_from_db(fields=["revision", "status", "record_count", "resolved_at"])
    case_event(
        case=case,
        action=CaseEvent.Action.RETRIED,
        before=before,
        after={
            "count": result.count,
            "summary": result.summary,
            "why": "the fix reached the owning system",
            "status": case.status,
            "record_count": case.record_count,
        },
    ).save()


delivered_step_register(process=PROCESS, step=UPDATE_STEP, handler=fix_delivered)


# --- Records added by a fix ---------------------------------------------------------------------


def record_add(*, model: type[models.Model], data: Mapping[str, Any], actor: Actor) -> Applied:
    """Add a record through the write path (validated, stamped as the person's, audited) and
    say what its owning system (the ownership rules: exchange rates the ERP, the firm's default
    rate cards the PSA, a contract's rate cards the CRM) is told: nothing, when it has nowhere
    Concord can write one."""
    record = record_create(model=model, data=dict(data), actor=actor)  # type: ignore[type-var]
    object_type = str(model._meta.model_name)
    noun = str(model._meta.verbose_name)
    # A record tied to a contract is the contract's commercial terms: the owner of that field
    # (a rate card's `contract` rule) owns it; otherwise the object's owner.
    rules = load_ownership_rules()
    role = rules.owner_of(object_type, "contract" if data.get("contract") else "")
    changed = {name: (None, getattr(record, name)) for name in data}
    if not role:
        return Applied(record=record, changed=changed, added=True)
    rule = _route(role, getattr(record, "legal_entity_id", None))
    system = _system(rule.connection) if rule is not None else f"the {role.upper()}"
    vendor = rule.connection.vendor if rule is not None else ""
    if vendor and vendor_operation(vendor, object_type, "create") is not None:
        note = (
            f"{system} takes new {noun}s, but this form does not send one there yet; added "
            "in Concord only"
        )
    else:
        note = f"{system} has no {noun} Concord can write; added in Concord only"
    write = OwnerWrite(system, tuple(data), False, note)
    return Applied(record=record, changed=changed, writes=(write,), added=True)


def _route(role: str, legal_entity_id: int | None) -> RoutingRule | None:
    """The connection of `role` serving the legal entity (its routing rule, else the role's
    default rule), enabled or not: a fix names where the value lives."""
    return routing_rule_serving(role=role, legal_entity_id=legal_entity_id, enabled_only=False)


# --- The fix forms -------------------------------------------------------------------------------


def _case_customer(case: ExceptionCase) -> Customer | None:
    """The customer a case is about: its own, else that of an invoice it holds up."""
    if case.customer_id is not None:
        return Customer.objects.filter(pk=case.customer_id).first()
    invoice_ids = case.blocked_records.filter(record_type="invoice").values("record_id")
    invoice = (
        Invoice.objects.filter(pk__in=invoice_ids).select_related("customer").order_by("pk").first()
    )
    return invoice.customer if invoice is not None else None


def _customer_target(case: ExceptionCase) -> FixTarget | None:
    customer: models.Model | None = _case_customer(case)
    if customer is None:
        # A contact the ERP sent that could not be stored (erp_record_invalid): its customer.
        sent = _inbound_record_target(case)
        customer = sent.record if sent is not None else None
    if not isinstance(customer, Customer):
        return None
    return FixTarget(customer, f"the customer {customer}")


def _case_project(case: ExceptionCase) -> Project | None:
    project_id = case.project_id or case.subject.get("project_id")
    if not isinstance(project_id, int):
        return None
    return Project.objects.select_related("customer").filter(pk=project_id).first()


def _project_target(case: ExceptionCase) -> FixTarget | None:
    project = _case_project(case)
    if project is None:
        return None
    return FixTarget(project, f"the project {project.code} {project.name}")


def _editing(fields: tuple[str, ...], *, wait_for_owner: bool = False, absent: str = "") -> Any:
    """The applier of a form that edits its target record's `fields` (`absent`: see
    record_fix)."""

    def apply(
        case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
    ) -> Applied:
        assert target.record is not None  # noqa: S101 - an editing form's target has one
        fix = record_fix(
            record=target.record,
            data={name: values[name] for name in fields if name in values},
            actor=actor,
            retry_cases=[case.pk] if wait_for_owner else (),
            absent=absent,
        )
        return Applied(record=fix.record, changed=fix.changed, writes=fix.writes)

    return apply


def _exchange_rate_target(case: ExceptionCase) -> FixTarget | None:
    currency, base = case.subject.get("currency"), case.subject.get("base")
    if not currency or not base:
        return None
    return FixTarget(
        None,
        f"an exchange rate: what 1 {currency} is in {base}",
        {"date": date.today(), "currency": currency, "base": base},
    )


def _exchange_rate_add(
    case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
) -> Applied:
    # One unit of base_currency is worth `rate` units of quote_currency (ExchangeRate): 1 of
    # the project's currency in the legal entity's base currency.
    return record_add(
        model=ExchangeRate,
        data={
            "base_currency": target.initial["currency"],
            "quote_currency": target.initial["base"],
            "date": values["date"],
            "rate": values["rate"],
        },
        actor=actor,
    )


def _rate_card_target(case: ExceptionCase) -> FixTarget | None:
    subject = case.subject
    contract = Contract.objects.filter(pk=subject.get("contract_id")).first()
    if contract is None or not subject.get("role") or not subject.get("currency"):
        return None
    return FixTarget(
        None,
        f"a bill rate for the role {subject['role']} in {subject['currency']} on contract "
        f"{contract.number}",
        {"contract": contract, "role": subject["role"], "currency": subject["currency"]},
    )


def _rate_card_add(
    case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
) -> Applied:
    return record_add(
        model=RateCard,
        data={
            "contract": target.initial["contract"],
            "role": target.initial["role"],
            "currency": target.initial["currency"],
            "bill_rate": values["bill_rate"],
        },
        actor=actor,
    )


def _routing_rule_target(case: ExceptionCase) -> FixTarget | None:
    entity = LegalEntity.objects.filter(pk=case.subject.get("legal_entity_id")).first()
    if entity is None:
        return None
    return FixTarget(
        None, f"the ERP route for legal entity {entity.code}", {"legal_entity": entity}
    )


def _routing_rule_add(
    case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
) -> Applied:
    """A route is Concord's own configuration (no system owns it): the audited config service."""
    connection = values["connection"]
    rule = config_row_create(
        model=RoutingRule,
        data={
            "role": SystemRole.ERP,
            "legal_entity": target.initial["legal_entity"],
            "connection": connection,
        },
        actor=actor,
    )
    return Applied(record=rule, changed={"connection": (None, connection)}, added=True)


def _inbound_record_target(case: ExceptionCase) -> FixTarget | None:
    """The canonical record a system sent invalid (the latest message the case holds), with
    the fields the case names; None when Concord does not hold the record (its first version
    was the invalid one: it is fixed in that system)."""
    held = (
        case.blocked_records.filter(record_type="inboundmessage")
        .order_by("-record_id")
        .values_list("record_id", flat=True)
        .first()
    )
    if held is None:
        return None
    message = InboundMessage.objects.filter(pk=held).select_related("connection").first()
    if message is None or not message.external_id:
        return None
    mapping = mapping_load_published(
        connection_id=message.connection_id, object_type=message.object_type
    )
    model = canonical_models().get(mapping.canonical_model) if mapping is not None else None
    if model is None:
        return None
    xref = CrossReference.objects.filter(
        connection_id=message.connection_id,
        content_type=ContentType.objects.get_for_model(model),
        external_id=message.external_id,
    ).first()
    record = model._default_manager.filter(pk=xref.object_id).first() if xref else None
    if record is None:
        return None
    editable = {
        f.name for f in model._meta.concrete_fields if f.editable and f.name not in BOOKKEEPING
    }
    named = [n.strip() for n in str(case.subject.get("fields", "")).split(",")]
    fields = [n for n in named if n in editable]
    if not fields:
        return None
    label = f"the {model._meta.verbose_name} {record}"
    return FixTarget(record, label, {"fields": fields})


def _inbound_record_edit(
    case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
) -> Applied:
    return _editing(tuple(target.initial["fields"]))(case, target, values, actor)


def _ownership_target(case: ExceptionCase) -> FixTarget | None:
    """The record a system tried to change, and the values it sent for the fields another
    system owns: read from its latest withheld message through the published mapping."""
    subject = case.subject
    model = canonical_models().get(str(subject.get("model")))
    connection_id = subject.get("connection_id")
    if model is None or not isinstance(connection_id, int):
        return None
    record = model._default_manager.filter(pk=subject.get("record_id")).first()
    xref = CrossReference.objects.filter(
        connection_id=connection_id,
        content_type=ContentType.objects.get_for_model(model),
        object_id=subject.get("record_id"),
    ).first()
    if record is None or xref is None:
        return None
    message = (
        InboundMessage.objects.filter(
            connection_id=connection_id,
            external_id=xref.external_id,
            state=InboundMessage.State.CONFLICT,
        )
        .order_by("-pk")
        .first()
    )
    mapping = (
        mapping_load_published(connection_id=connection_id, object_type=message.object_type)
        if message is not None
        else None
    )
    if message is None or mapping is None:
        return None
    sent = map_inbound(mapping, message.payload).fields
    incoming = {n: sent[n] for n in subject.get("fields", []) if n in sent}
    if not incoming:
        return None
    return FixTarget(
        record,
        f"the {model._meta.verbose_name} {record}",
        {"incoming": incoming, "system": str(subject.get("connection", ""))},
    )


def _ownership_decide(
    case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
) -> Applied:
    """Accept the incoming values (written through the write path, and to the owning system
    through the outbox like any fix), or keep the owner's: either way the case is resolved
    with the decision as its note (an ownership conflict never closes by itself)."""
    assert target.record is not None  # noqa: S101 - the target names its record
    incoming = target.initial["incoming"]
    note = str(values.get("note") or "").strip()
    if values.get("decision") == "accept":
        fix = record_fix(record=target.record, data=incoming, actor=actor)
        words = f"accepted {target.initial['system']}'s {_names(list(incoming))}"
        case_resolve(case_id=case.pk, note=note or f"{_first_up(words)}.", actor=actor)
        return Applied(record=fix.record, changed=fix.changed, writes=fix.writes, words=words)
    words = f"kept the owning system's {_names(list(incoming))} on {target.record}"
    case_resolve(case_id=case.pk, note=note or f"{_first_up(words)}.", actor=actor)
    kept = {name: (value, getattr(target.record, name)) for name, value in incoming.items()}
    return Applied(record=target.record, changed=kept, words=words)


def _merge_target(case: ExceptionCase) -> FixTarget | None:
    subject = case.subject
    if not isinstance(subject.get("record_id"), int) or not isinstance(
        subject.get("match_id"), int
    ):
        return None
    return FixTarget(
        None,
        f"the merge of {subject.get('record')} (#{subject['record_id']}) and "
        f"{subject.get('match')} (#{subject['match_id']})",
        {
            "choices": [
                (subject["match_id"], f"{subject.get('match')} (#{subject['match_id']})"),
                (
                    subject["record_id"],
                    f"{subject.get('record')} (#{subject['record_id']}, new from "
                    f"{subject.get('connection')})",
                ),
            ],
        },
    )


def _merge_apply(
    case: ExceptionCase, target: FixTarget, values: Mapping[str, Any], actor: Actor
) -> Applied:
    """Merge the two records into the one kept (integrations.sync.identity.record_merge: the
    references, keys and related rows move to it; audited; the case resolved by it)."""
    subject = case.subject
    ids = {subject["record_id"], subject["match_id"]}
    winner_id = int(values["keep"])
    if winner_id not in ids:
        raise CaseRefused("Keep one of the two records the case names.")
    (loser_id,) = ids - {winner_id}
    try:
        merge = record_merge(
            object_type=str(subject["model"]),
            winner_id=winner_id,
            loser_id=loser_id,
            actor=actor,
            case_id=case.pk,
            note=str(values.get("note") or ""),
        )
    except MergeRefused as refused:
        raise CaseRefused(f"{refused} Nothing was merged.") from refused
    winner = canonical_models()[str(subject["model"])]._default_manager.get(pk=winner_id)
    return Applied(
        record=winner,
        changed={"merged": (loser_id, winner_id), "merge": (None, merge.pk)},
        words=f"merged {merge.loser_repr} (#{loser_id}) into {winner} (#{winner_id})",
    )


@dataclass(frozen=True)
class FixActions:
    """For the forms that are a way elsewhere plus Retry (replays, connection settings, the
    mapping): whether the case has work Concord can re-run, and what to link to."""

    retry: bool
    connection_id: int | None
    mapping_set_id: int | None


def fix_actions(*, case: ExceptionCase) -> FixActions:
    connection_id = case.connection_id or case.subject.get("connection_id")
    mapping_set_id = None
    object_type = case.subject.get("object_type")
    if isinstance(connection_id, int) and object_type:
        versions = MappingSet.objects.filter(
            connection_id=connection_id, object_type=object_type
        ).order_by("-version")
        # The published version, else the newest (a draft being written).
        mapping_set_id = (
            versions.filter(status=MappingSet.Status.PUBLISHED).values_list("pk", flat=True).first()
            or versions.values_list("pk", flat=True).first()
        )
    return FixActions(
        retry=retry_handler_for(case) is not None,
        connection_id=connection_id if isinstance(connection_id, int) else None,
        mapping_set_id=mapping_set_id,
    )


FIXERS: dict[str, FixSpec] = {
    # An ERP refused the invoice for the customer's billing profile: the ERP must have the fix
    # before the invoice goes again.
    "customer_billing_profile": FixSpec(
        target=_customer_target,
        apply=_editing(
            ("tax_number", "billing_address", "billing_email", "country"),
            wait_for_owner=True,
            # An invoice names its customer by value when the ERP does not know it: the ERP
            # makes the contact from it (integrations/vendors/xero/mappings.py).
            absent="the invoice sent again creates it there, carrying the new {fields}",
        ),
        wait_for_owner=True,
    ),
    # Concord's own billing checks: the entries are billed again at once.
    "project_legal_entity": FixSpec(target=_project_target, apply=_editing(("legal_entity",))),
    "project_contract": FixSpec(target=_project_target, apply=_editing(("contract",))),
    "project_status": FixSpec(target=_project_target, apply=_editing(("status",))),
    "exchange_rate": FixSpec(target=_exchange_rate_target, apply=_exchange_rate_add),
    "rate_card": FixSpec(target=_rate_card_target, apply=_rate_card_add),
    "routing_rule": FixSpec(target=_routing_rule_target, apply=_routing_rule_add),
    "record_merge": FixSpec(target=_merge_target, apply=_merge_apply),
    "ownership_decision": FixSpec(target=_ownership_target, apply=_ownership_decide),
    # A record the CRM (contract) or the PSA (project) sent that could not be stored: fixed in
    # Concord and written to that system, whose corrected version then clears the case.
    **{
        form: FixSpec(
            target=_inbound_record_target,
            apply=_inbound_record_edit,
            instead_of_retry=INBOUND_CLEARS,
        )
        for form in ("contract", "project")
    },
}


# --- Words ---------------------------------------------------------------------------------------


def _system(connection: Connection) -> str:
    return f"{connection.get_vendor_display()} ({connection.name})"


def _names(fields: Sequence[str]) -> str:
    words = [f.replace("_", " ") for f in fields]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _first_up(text: str) -> str:
    return text[:1].upper() + text[1:]


def _field_list(changed: Mapping[str, Any]) -> str:
    return _names(list(changed)).capitalize()


def _held_noun(case: ExceptionCase) -> str:
    kind = CATALOGUE.get(case.case_type)
    noun = str(case.subject.get("noun") or (kind.noun if kind else "record"))
    return noun if case.record_count == 1 else f"{case.record_count} {noun}s"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, models.Model):
        return value.pk
    return str(value)
