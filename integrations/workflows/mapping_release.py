"""What a mapping version means for the work Concord holds, where the mapping layer cannot see
it (integrations/mapping/ sits below the workflows and the exception actions):

- `outbound_samples`: recent canonical records of what a connection writes, as the workflow
  hands them to the sync layer (an invoice as the billing run builds it), each with the payload
  last sent for it, so an outbound draft can be rendered beside what the vendor received;
- `mapping_fixed_cases_retry`: the open mapping cases a published version now reads, retried
  through exceptions' group retry (one per root-cause group, audited on each case and on the
  version).

The configuration console (integrations/console/mappings.py) calls these.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import models, transaction

from exceptions.actions import GroupRetry, case_retry_group
from exceptions.models import BlockedRecord, ExceptionCase
from integrations.mapping.apply import EXTERNAL_ID_SUFFIX
from integrations.mapping.canonical import canonical_models
from integrations.mapping.preview import INBOUND_CASE, OUTBOUND_CASE
from integrations.mapping.selectors import field_specs
from integrations.mapping.services import Actor
from integrations.models import (
    AuditEvent,
    BillingEvent,
    Connection,
    CrossReference,
    Invoice,
    MappingSet,
    OutboxMessage,
)
from integrations.services.audit import audit_record
from integrations.vendors import VENDORS
from integrations.workflows.time_to_erp import invoice_canonical, invoice_contact_ids

# Records an outbound preview renders: enough to see a pattern on a page (an invoice of 100
# lines renders in about 0.2 ms; reading it and its lines is two queries).
SAMPLES = 3


@dataclass(frozen=True)
class OutboundSample:
    label: str
    canonical: Mapping[str, Any]
    sent: Mapping[str, Any] | None


def outbound_samples(
    *, connection: Connection, object_type: str, limit: int = SAMPLES
) -> list[OutboundSample]:
    """The newest records this connection was sent (or was to be sent: records held on an
    open outbound mapping case) of the vendor object, as canonical dicts."""
    entry = VENDORS.get(str(connection.vendor))
    operations = [
        (model, op)
        for (model, _), op in (entry.operations.items() if entry else ())
        if op.object_type == object_type
    ]
    if not operations:
        return []
    canonical_model = operations[0][0]
    model = canonical_models().get(canonical_model)
    if model is None:
        return []
    content_type = ContentType.objects.get_for_model(model)
    sent: dict[int, Mapping[str, Any]] = {}
    for message in OutboxMessage.objects.filter(
        connection=connection,
        content_type=content_type,
        operation__in=[op.name for _, op in operations],
    ).order_by("-id")[: limit * 4]:
        sent.setdefault(message.object_id, message.payload)
    ids = list(sent)[:limit]
    if len(ids) < limit:
        held = (
            BlockedRecord.objects.filter(
                case__status=ExceptionCase.Status.OPEN,
                case__case_type=OUTBOUND_CASE,
                case__connection=connection,
                record_type=canonical_model,
            )
            .order_by("-record_id")
            .values_list("record_id", flat=True)[:limit]
        )
        ids += [pk for pk in held if pk not in ids][: limit - len(ids)]
    if model is Invoice:
        canonicals = _invoices(ids, connection)
    else:
        canonicals = _records(model, ids, connection, object_type)
    return [
        OutboundSample(label=label, canonical=canonical, sent=sent.get(pk))
        for pk, (label, canonical) in canonicals.items()
    ]


def _invoices(ids: list[int], connection: Connection) -> dict[int, tuple[str, dict[str, Any]]]:
    """Invoices as the billing run hands them over (integrations/workflows/time_to_erp.py)."""
    invoices = list(
        Invoice.objects.select_related("customer", "contract__tax_rate", "legal_entity")
        .filter(pk__in=ids)
        .order_by("-pk")
    )
    lines: dict[int, list[BillingEvent]] = defaultdict(list)
    for event in BillingEvent.objects.filter(invoice__in=invoices).order_by("pk"):
        lines[event.invoice_id].append(event)  # type: ignore[index]
    contacts = invoice_contact_ids([(i, lines[i.pk]) for i in invoices])
    return {
        invoice.pk: (
            f"Invoice {invoice.number or invoice.pk} ({invoice.customer.name}, "
            f"{invoice.legal_entity.code})",
            invoice_canonical(
                invoice, lines[invoice.pk], contacts.get((connection.pk, invoice.customer_id))
            ),
        )
        for invoice in invoices
    }


def _records(
    model: type[models.Model], ids: list[int], connection: Connection, object_type: str
) -> dict[int, tuple[str, dict[str, Any]]]:
    """Any other record: the canonical fields the published version writes, read from it
    (a relation by its id in this connection, or by the related record's attribute)."""
    published = MappingSet.objects.filter(
        connection=connection, object_type=object_type, status=MappingSet.Status.PUBLISHED
    ).first()
    names = (
        [s.canonical_field for s in field_specs(published.fields.all()) if s.outbound]
        if published
        else []
    )
    records = {r.pk: r for r in model._default_manager.filter(pk__in=ids)}
    found: dict[int, tuple[str, dict[str, Any]]] = {}
    for pk in ids:
        record = records.get(pk)
        if record is None:
            continue
        canonical: dict[str, Any] = {}
        for name in names:
            relation, _, attr = name.partition("__")
            value = getattr(record, relation, None)
            if attr and value is not None:
                if name.endswith(EXTERNAL_ID_SUFFIX):
                    value = (
                        CrossReference.objects.filter(
                            connection=connection,
                            content_type=ContentType.objects.get_for_model(value),
                            object_id=value.pk,
                        )
                        .values_list("external_id", flat=True)
                        .first()
                    )
                else:
                    value = getattr(value, attr, None)
            if value is not None:
                canonical[name] = value
        found[pk] = (f"{model._meta.verbose_name} {record}", canonical)
    return found


@transaction.atomic
def mapping_fixed_cases_retry(
    *, actor: Actor, mapping_set: MappingSet, revisions: Mapping[int, int]
) -> list[GroupRetry]:
    """Retry the open mapping cases a published version fixes (`revisions`: each case the
    admin saw as fixed, with the revision seen): one exceptions group retry per root-cause
    group, which checks every revision first and leaves the group's other cases alone."""
    if mapping_set.status != MappingSet.Status.PUBLISHED:
        raise ValidationError(
            f"v{mapping_set.version} is not the published version: publish it before retrying."
        )
    cases = list(
        ExceptionCase.objects.filter(
            pk__in=list(revisions),
            case_type=INBOUND_CASE,
            connection_id=mapping_set.connection_id,
            subject__object_type=mapping_set.object_type,
        ).order_by("pk")
    )
    strangers = sorted(set(revisions) - {case.pk for case in cases})
    if strangers:
        raise ValidationError(
            f"Cases {', '.join(f'#{pk}' for pk in strangers)} are not mapping cases of "
            f"{mapping_set.object_type} on this connection; nothing was retried."
        )
    if not cases:
        raise ValidationError("No case to retry.")
    groups: dict[str, list[ExceptionCase]] = defaultdict(list)
    for case in cases:
        groups[case.group_key or f"case-{case.pk}"].append(case)
    outcomes = [
        case_retry_group(
            actor=actor,
            case_id=members[0].pk,
            revisions={case.pk: revisions[case.pk] for case in members},
        )
        for _, members in sorted(groups.items())
    ]
    audit_record(
        actor=actor,
        action=AuditEvent.Action.UPDATE,
        instance=mapping_set,
        changes={
            "cases retried": [
                None,
                sorted(outcome.case_id for group in outcomes for outcome in group.retried),
            ]
        },
    )
    return outcomes
