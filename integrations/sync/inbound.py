"""Processing inbound messages: read the record if the message only names it, map it through
the published mapping, apply ownership and the version check, upsert the canonical record."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from exceptions.services import Blocked, case_open_or_join, case_records_clear
from integrations.connectors.base import Connector
from integrations.connectors.errors import ConnectorError, TransientError
from integrations.mapping.apply import map_inbound
from integrations.mapping.ownership import load_ownership_rules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, InboundMessage
from integrations.sync.errors import InboundRetry
from integrations.sync.ring import ring_inbound
from integrations.sync.upsert import canonical_upsert, message_state
from integrations.vendors import connector_for

logger = logging.getLogger(__name__)

State = InboundMessage.State


def inbound_process(*, message_id: int) -> str:
    """Apply one inbound message. Returns its final state; raises InboundRetry on a transient
    failure to read the record (the message stays RECEIVED, so nothing is lost)."""
    message = InboundMessage.objects.select_related("connection").filter(pk=message_id).first()
    if message is None:
        return "gone"
    with _Context(message.connection) as context:
        return _process(message, context)


class _Context:
    """What every message of one connection needs, built once per batch: the ownership rules
    and the vendor client (one HTTP client and its kept-alive connection for all the reads)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.rules = load_ownership_rules()
        self._connector: Connector | None = None

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            self._connector = connector_for(self.connection)
        return self._connector

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connector is not None:
            self._connector.close()


def _process(message: InboundMessage, context: _Context) -> str:
    if message.state != State.RECEIVED:
        return str(message.state)
    connection = context.connection
    mapping = mapping_load_published(connection_id=connection.pk, object_type=message.object_type)
    if mapping is None:
        return _finish(
            message,
            State.FAILED,
            f"No published mapping for {message.object_type} on this "
            "connection: publish one, then replay the message.",
        )

    record = message.payload
    if message.source != InboundMessage.Source.POLL:
        # Webhooks name what changed; the record itself is read now, so the newest state wins.
        try:
            fetched = context.connector.fetch(message.object_type, message.external_id)
        except TransientError as exc:
            raise InboundRetry(str(exc), exc.retry_after) from exc
        except ConnectorError as exc:
            return _finish(message, State.FAILED, f"Reading the record failed: {exc}")
        if fetched is None:
            return _finish(message, State.FAILED, "The record no longer exists at the vendor.")
        record = fetched

    mapped = map_inbound(mapping, record)
    if not mapped.ok:
        errors = "; ".join(str(e) for e in mapped.errors)
        mapping_case_open([message], errors)
        return _finish(message, State.FAILED, f"Mapping failed: {errors}")
    if mapped.source_version and message.source_version < mapped.source_version:
        message.source_version = mapped.source_version

    result = canonical_upsert(connection=connection, mapped=mapped, rules=context.rules)
    return _finish(message, *message_state(result))


def _finish(message: InboundMessage, state: str, error: str) -> str:
    # Only from RECEIVED: when two workers process one message, the first outcome stands.
    with transaction.atomic():
        InboundMessage.objects.filter(pk=message.pk, state=State.RECEIVED).update(
            state=state,
            error=error[:4000],
            source_version=message.source_version,
            processed_at=timezone.now(),
        )
    if state == State.FAILED:
        logger.warning("inbound message %s failed: %s", message.pk, error)
    elif state == State.APPLIED and message.replay_of_id is not None:
        # A replay that went through: the original it stands for is off the case that held it
        # (cases hold the raw message they could not read, which a replay never becomes).
        case_records_clear(
            records=[("inboundmessage", message.replay_of_id)],
            note="Closed automatically: every message it held went through on replay.",
        )
    return str(state)


def mapping_case_open(messages: Sequence[InboundMessage], errors: str) -> None:
    """Open (or join) the integration admin's case for payloads the mapping cannot read, all
    for the same reason: one case write however many messages it holds up."""
    first = messages[0]
    case_open_or_join(
        case_type="mapping_error",
        subject={
            "connection_id": first.connection_id,
            "connection": first.connection.name,
            "object_type": first.object_type,
            "reason": errors,
        },
        records=[
            Blocked(
                record_type="inboundmessage",
                record_id=message.pk,
                label=f"{message.object_type} {message.external_id}",
            )
            for message in messages
        ],
        process="inbound",
        step="mapping",
        connection_id=first.connection_id,
    )


# Messages processed per batch task: a task ends within seconds and rings again for the rest.
BATCH = 200


def inbound_process_batch(*, connection_id: int) -> dict[str, int]:
    """Process this connection's received messages, oldest first."""
    messages = list(
        InboundMessage.objects.filter(connection_id=connection_id, state=State.RECEIVED)
        .select_related("connection")
        .order_by("id")[:BATCH]
    )
    outcomes: dict[str, int] = {}
    if not messages:
        return outcomes
    with _Context(messages[0].connection) as context:
        for message in messages:
            try:
                state = _process(message, context)
            except InboundRetry:
                state = "retry"  # stays RECEIVED; the sweeper rings for it again
            outcomes[state] = outcomes.get(state, 0) + 1
    if len(messages) == BATCH:
        ring_inbound([connection_id], force=True)
    return outcomes


def inbound_replay(*, messages: list[InboundMessage]) -> list[InboundMessage]:
    """Process stored messages again as new rows linked to the originals."""
    replays = [
        InboundMessage(
            connection_id=m.connection_id,
            source=InboundMessage.Source.REPLAY,
            object_type=m.object_type,
            external_id=m.external_id,
            dedupe_key=m.dedupe_key,
            source_version=m.source_version,
            payload=m.payload,
            replay_of=m,
        )
        for m in messages
    ]
    with transaction.atomic():
        InboundMessage.objects.bulk_create(replays)
        connection_ids = {r.connection_id for r in replays}
        ring_inbound(connection_ids)
    return replays


def inbound_sweep() -> int:
    """Ring again for connections with messages received but not processed for 30 s (a lost
    broker message, or retries that ran out)."""
    stuck = set(
        InboundMessage.objects.filter(
            state=State.RECEIVED, received_at__lt=timezone.now() - timedelta(seconds=30)
        )
        .order_by()
        .values_list("connection_id", flat=True)
        .distinct()
    )
    ring_inbound(stuck, force=True)
    return len(stuck)
