"""Processing inbound messages: read the record if the message only names it, map it through
the published mapping, apply ownership and the version check, upsert the canonical record."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from exceptions.models import Queue
from exceptions.services import blocked_record, case_fingerprint, exception_case_open_or_join
from integrations.connectors.base import Connector, connector_for
from integrations.connectors.errors import ConnectorError, TransientError
from integrations.mapping.apply import map_inbound
from integrations.mapping.ownership import load_ownership_rules
from integrations.mapping.selectors import mapping_load_published
from integrations.models import Connection, InboundMessage
from integrations.sync.upsert import canonical_upsert, message_state

logger = logging.getLogger(__name__)

State = InboundMessage.State


class InboundRetry(Exception):
    """The record could not be read for a transient reason: it stays RECEIVED and the inbound
    sweeper rings for it again."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
    return str(state)


def mapping_case_open(messages: Sequence[InboundMessage], errors: str) -> None:
    """Open (or join) the integration admin's case for payloads the mapping cannot read, all
    for the same reason: one case write however many messages it holds up."""
    first = messages[0]
    exception_case_open_or_join(
        fingerprint=case_fingerprint(
            "inbound", "mapping", first.connection_id, first.object_type, errors[:200]
        ),
        process="inbound",
        step="mapping",
        case_type="mapping_error",
        queue=Queue.INTEGRATION_ADMIN,
        message=(
            f"{first.object_type} records from {first.connection.name} cannot be mapped: "
            f"{errors}. Fix the mapping (or the value map) and replay the messages."
        ),
        connection_id=first.connection_id,
        records=[
            blocked_record(
                record_type="inboundmessage",
                record_id=message.pk,
                label=f"{message.object_type} {message.external_id}",
            )
            for message in messages
        ],
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
        from integrations.sync.webhooks import ring_inbound

        ring_inbound(connection_id, force=True)
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
        transaction.on_commit(lambda: _ring(connection_ids), robust=True)
    return replays


def inbound_sweep() -> int:
    """Ring again for connections with messages received but not processed for 30 s (a lost
    broker message, or retries that ran out)."""
    stuck = set(
        InboundMessage.objects.filter(
            state=State.RECEIVED, received_at__lt=timezone.now() - timedelta(seconds=30)
        ).values_list("connection_id", flat=True)
    )
    _ring(stuck, force=True)
    return len(stuck)


def _ring(connection_ids: set[int], *, force: bool = False) -> None:
    from integrations.sync.webhooks import ring_inbound

    for connection_id in connection_ids:
        ring_inbound(connection_id, force=force)
