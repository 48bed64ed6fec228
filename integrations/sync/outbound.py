"""Outbound rendering: a workflow's canonical record -> the vendor's payload and operation.

Workflows never build a vendor payload. They hand over a canonical dict (the record's fields,
its lines as canonical dicts, related records by value or by their external id in the target,
...) and an action ("create"); this module picks the vendor's operation from the vendor
registry (integrations/vendors/) and renders the payload with the connection's PUBLISHED
mapping for the object that operation writes. An admin who publishes a new version of that
mapping changes the next payload sent.

Cost: the compiled mapping comes from `mapping_load_published`, cached per worker process and
compiled once per published version, so rendering is pure Python per record (an invoice of 100
lines: about 0.2 ms), with no query per record or line.

A record the mapping cannot render (no published mapping, a required vendor field unmapped, a
value-map gap) is not lost and not sent half-built: it gets no outbox row and goes on an
integration admin's case, one per root cause; the workflow sends it again once the mapping is
fixed (for invoices, the next billing run) and the case clears itself.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import models

from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.mapping.apply import map_inbound, map_outbound
from integrations.mapping.errors import MappingError, OutboundMappingError
from integrations.mapping.paths import MISSING, compile_path
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, OutboxMessage
from integrations.sync.bulk import cyclic_gc_paused
from integrations.sync.outbox import outbox_message
from integrations.vendors import VENDORS, vendor_operation

RENDER_CASE = "outbound_mapping_error"
# Distinct field errors named in a case's reason; more are counted, not listed (a 100-line
# invoice with the same gap on every line is one reason, not a hundred).
REASONS_SHOWN = 3


@dataclass(frozen=True)
class OutboundItem:
    """One record a workflow wants written to a target system.

    `context` is what an exception case about it says (and what the outbox row keeps): ``what``
    (the noun, "invoice"), ``subject``, ``label``, ``amount``, ``currency``, ``hours``, ``queue``.
    """

    connection: Connection
    record: models.Model
    canonical: Mapping[str, Any]
    context: dict[str, Any]


class OutboundRenderError(Exception):
    """The record cannot be rendered for this connection; `reason` says why, in an admin's
    words, the same for every record with the same root cause."""

    def __init__(self, reason: str, *, object_type: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.object_type = object_type


def outbound_render(
    *, connection: Connection, canonical_model: str, action: str, canonical: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """(operation, payload) for one canonical record, or OutboundRenderError."""
    operation = vendor_operation(connection.vendor, canonical_model, action)
    if operation is None:
        raise OutboundRenderError(
            f"{connection.get_vendor_display()} has no operation to {action} a {canonical_model}"
        )
    object_type = operation.object_type
    mapping = mapping_load_published(connection_id=connection.pk, object_type=object_type)
    if mapping is None:
        raise OutboundRenderError(f"no published {object_type} mapping", object_type=object_type)
    if mapping.canonical_model != canonical_model:
        raise OutboundRenderError(
            f"the published {object_type} mapping maps {mapping.canonical_model}, "
            f"not {canonical_model}",
            object_type=object_type,
        )
    try:
        payload = map_outbound(mapping, canonical)
    except OutboundMappingError as exc:
        raise OutboundRenderError(_reason(exc.errors), object_type=object_type) from exc
    unmapped = [path for path in operation.requires if compile_path(path).get(payload) is MISSING]
    if unmapped:
        raise OutboundRenderError(
            f"the published {object_type} mapping writes no {', '.join(unmapped)}, which "
            f"{operation.name} needs",
            object_type=object_type,
        )
    return operation.name, payload


def _reason(errors: Sequence[MappingError]) -> str:
    # "lines[7].quantity" and "lines[8].quantity" are one root cause: the index is dropped.
    seen = list(dict.fromkeys(re.sub(r"\[\d+\]", "[]", str(e)) for e in errors))
    more = len(seen) - REASONS_SHOWN
    return "; ".join(seen[:REASONS_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def outbound_messages(
    *,
    items: Sequence[OutboundItem],
    canonical_model: str,
    action: str,
    process: str,
    step: str,
    version: int,
    retried: bool = False,
) -> list[OutboxMessage]:
    """Unsaved outbox rows for the items that render (pass them to `outbox_enqueue` in the same
    transaction); each item that does not goes on its root cause's case instead. `retried`:
    the items were refused before, so those that render now clear themselves off their case."""
    messages: list[OutboxMessage] = []
    failed: list[tuple[OutboundItem, OutboundRenderError]] = []
    with cyclic_gc_paused():
        for item in items:
            try:
                operation, payload = outbound_render(
                    connection=item.connection,
                    canonical_model=canonical_model,
                    action=action,
                    canonical=item.canonical,
                )
            except OutboundRenderError as exc:
                failed.append((item, exc))
                continue
            messages.append(
                outbox_message(
                    connection=item.connection,
                    process=process,
                    step=step,
                    operation=operation,
                    record=item.record,
                    version=version,
                    payload=payload,
                    context=item.context,
                )
            )
    if failed:
        _render_cases_open(failed, process=process, step=step)
    if retried and messages:
        _render_cases_clear(messages, process=process)
    return messages


@dataclass(frozen=True)
class PartialUpdate:
    """A partial update of a record a connection holds: the unsaved outbox row, or `reason`
    (why the published mapping cannot render it, in an admin's words). `object_type` is the
    vendor object whose mapping renders it (empty when the vendor has no such update), the one
    a case about the refusal names for its editor link."""

    message: OutboxMessage | None = None
    reason: str = ""
    object_type: str = ""
    # The fields of `values` the row carries (the others: no field in the mapping).
    sent: tuple[str, ...] = ()


def partial_update_message(
    *,
    connection: Connection,
    canonical_model: str,
    external_id: str,
    values: Mapping[str, Any],
    process: str,
    step: str,
    record: models.Model,
    version: int,
    context: dict[str, Any],
    required: Collection[str] = (),
    words: Mapping[str, str] | None = None,
) -> PartialUpdate:
    """The outbox row updating `values` on the connection's copy of a record (`external_id`),
    rendered by its PUBLISHED mapping for the vendor's update: only the fields sent, with the
    record's id where the mapping reads it. The fields the mapping does not write are left
    out, unless `required` names them (the update means nothing without them); nothing at all
    to send is refused too. `words` names fields in a reason ("end date" for end_date)."""
    system = f"{connection.get_vendor_display()} ({connection.name})"
    operation = vendor_operation(connection.vendor, canonical_model, "update")
    if operation is None:
        return PartialUpdate(reason=f"{system} has no operation to update a {canonical_model}")
    object_type = operation.object_type
    mapping = mapping_load_published(connection_id=connection.pk, object_type=object_type)
    if mapping is None or mapping.canonical_model != canonical_model:
        return PartialUpdate(
            reason=f"{system} has no published {object_type} mapping", object_type=object_type
        )
    words = words or {}
    carried = {f.name for f in mapping.outbound}
    missing = [words.get(name, name) for name in required if name not in carried]
    if missing:
        return PartialUpdate(
            reason=f"the published {object_type} mapping of {system} writes no "
            f"{', '.join(missing)}",
            object_type=object_type,
        )
    sent = {name: value for name, value in values.items() if name in carried}
    if not sent:
        named = [words.get(name, name) for name in values]
        return PartialUpdate(
            reason=f"the published {object_type} mapping of {system} writes "
            f"{'no' if len(named) == 1 else 'none of'} {', '.join(named)}",
            object_type=object_type,
        )
    try:
        payload = map_outbound(mapping, sent, partial=True)
    except OutboundMappingError as exc:
        return PartialUpdate(
            reason=f"the published {object_type} mapping cannot render it: {exc}",
            object_type=object_type,
        )
    mapping.external_id_path.set(payload, external_id)
    unmapped = [p for p in operation.requires if compile_path(p).get(payload) is MISSING]
    if unmapped:
        return PartialUpdate(
            reason=f"the published {object_type} mapping writes no {', '.join(unmapped)}",
            object_type=object_type,
        )
    message = outbox_message(
        connection=connection,
        process=process,
        step=step,
        operation=operation.name,
        record=record,
        version=version,
        payload=payload,
        context=context,
    )
    return PartialUpdate(message=message, object_type=object_type, sent=tuple(sent))


def outbound_answer(message: OutboxMessage) -> dict[str, Any]:
    """The canonical fields in a delivered row's answer (the vendor's record as it stored it:
    its number, status...), read through the inbound side of the same published mapping, so the
    workflow's next step never reads a vendor field name. Fields the answer does not carry are
    left out; an answer that misses a required field still gives the fields it has."""
    object_type = _object_type_of(message.connection.vendor, message.operation)
    mapping = (
        mapping_load_published(connection_id=message.connection_id, object_type=object_type)
        if object_type
        else None
    )
    if mapping is None:
        return {}
    return map_inbound(mapping, message.result or {}).fields


def _object_type_of(vendor: str, operation: str) -> str:
    entry = VENDORS.get(str(vendor))
    for op in entry.operations.values() if entry else ():
        if op.name == operation:
            return op.object_type
    return ""


# --- Cases (the only code here that knows about exception cases) ------------------------------


def _render_cases_open(
    failed: Sequence[tuple[OutboundItem, OutboundRenderError]], *, process: str, step: str
) -> None:
    """One integration-admin case per root cause (connection, object, reason), holding the
    records it stops, with the amounts and hours they carry."""
    groups: dict[tuple[int, str, str], list[tuple[OutboundItem, OutboundRenderError]]]
    groups = defaultdict(list)
    for item, error in failed:
        groups[(item.connection.pk, error.object_type, error.reason)].append((item, error))
    # Sorted: two runs lock the cases they share in the same order.
    for (connection_id, object_type, reason), group in sorted(groups.items(), key=lambda g: g[0]):
        item = group[0][0]
        case_open_or_join(
            case_type=RENDER_CASE,
            subject={
                "connection_id": connection_id,
                "connection": item.connection.name,
                "object_type": object_type or "outbound",
                "reason": reason,
                "noun": item.context.get("what", item.record._meta.model_name),
            },
            records=[_blocked(i) for i, _ in group],
            process=process,
            step=step,
            connection_id=connection_id,
        )


def _blocked(item: OutboundItem) -> Blocked:
    context = item.context
    return Blocked(
        record_type=str(item.record._meta.model_name),
        record_id=int(item.record.pk),
        label=str(context.get("label", item.record)),
        amount=Decimal(str(context.get("amount", "0"))),
        currency=str(context.get("currency", "")),
        hours=Decimal(str(context.get("hours", "0"))),
    )


def _render_cases_clear(rendered: Sequence[OutboxMessage], *, process: str) -> None:
    case_records_clear(
        records=[(m.content_type.model, m.object_id) for m in rendered],
        process=process,
        note="Closed automatically: every record it held has since been rendered and queued.",
    )
