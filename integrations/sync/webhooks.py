"""Receiving signed webhooks: verify, keep the raw events, deduplicate, answer after the commit.

Two signature schemes:
- Xero: `x-xero-signature` = base64(HMAC-SHA256(webhook key, raw body)). Xero has no event id, so
  an event is identified by a hash of its content; Xero's own retries carry the same content.
- Salesforce and Harvest (the sandbox's signed change feed; neither vendor signs its own):
  `X-Sandbox-Timestamp` (unix seconds), `X-Sandbox-Event-Id`, and `X-Sandbox-Signature:
  v1=hex(HMAC-SHA256(secret, "<timestamp>.<raw body>"))`. Deliveries older than the tolerance
  are refused, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction
from django.db import connection as db_connection
from django.utils import timezone

from integrations.flags import flag_set
from integrations.models import Connection, InboundMessage, Vendor
from integrations.sync.bulk import json_text

logger = logging.getLogger(__name__)

# Five minutes, as Stripe and Slack use: covers clock skew and the sender's quick retries.
TIMESTAMP_TOLERANCE_S = 300
# Xero sends at most a few hundred events per delivery; 1 MB is far above any real payload.
MAX_BODY_BYTES = 1_000_000


class WebhookRefused(Exception):
    """The delivery is not accepted; `status` and the message go back to the sender."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Connections seen by this process, for a few seconds: a burst of webhooks then costs no query
# (and no decryption) per delivery. A changed secret or a disabled connection takes effect
# within this many seconds.
CONNECTION_CACHE_S = 10.0
_connections: dict[int, tuple[float, Connection | None]] = {}


def webhook_connection(connection_id: int) -> Connection | None:
    now = time.monotonic()
    cached = _connections.get(connection_id)
    if cached is not None and now - cached[0] < CONNECTION_CACHE_S:
        return cached[1]
    # Loading decrypts the credentials: once per process and interval, not per delivery.
    connection = Connection.objects.filter(pk=connection_id, enabled=True).first()
    _connections[connection_id] = (now, connection)
    return connection


def webhook_answer(
    connection_id: int, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """One delivery, start to finish: the HTTP status and JSON body to answer with. A 2xx is
    only ever given after the events are committed, so a 2xx means nothing can be lost."""
    connection = webhook_connection(connection_id)
    if connection is None:
        return 404, {"error": "No enabled connection with this id."}
    try:
        receipt = webhook_receive(connection=connection, body=body, headers=headers)
    except WebhookRefused as refused:
        return refused.status, {"error": refused.message}
    return 200, {"accepted": receipt.accepted, "duplicates": receipt.duplicates}


@dataclass
class Receipt:
    accepted: int
    duplicates: int
    message_ids: list[int]


def webhook_receive(*, connection: Connection, body: bytes, headers: dict[str, str]) -> Receipt:
    """Verify a delivery and store its events; returns once they are committed."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRefused(413, f"Body of {len(body)} bytes is over the {MAX_BODY_BYTES} limit.")
    secret = connection.credentials.get("webhook_secret")
    if not secret:
        raise WebhookRefused(
            403, "This connection has no webhook secret configured, so nothing can be verified."
        )
    lowered = {k.lower(): v for k, v in headers.items()}
    # The signature first: nothing of an unverified body is parsed.
    row: Callable[[Any], Row]
    if connection.vendor == Vendor.XERO:
        _verify_xero(secret, body, lowered)
        row = partial(_xero_row, connection)
    else:
        row = partial(_feed_row, connection, _verify_feed(secret, body, lowered))
    events = _json(body).get("events")
    if not isinstance(events, list):
        raise WebhookRefused(400, "Body must be a JSON object with an 'events' list.")
    return _store([row(event) for event in events])


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookRefused(400, f"Body is not valid JSON: {exc}.") from exc
    if not isinstance(payload, dict):
        raise WebhookRefused(400, "Body must be a JSON object.")
    return payload


def _verify_xero(secret: str, body: bytes, headers: dict[str, str]) -> None:
    given = headers.get("x-xero-signature")
    if not given:
        raise WebhookRefused(401, "Missing x-xero-signature header: the delivery is unsigned.")
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, given.strip()):
        raise WebhookRefused(401, "x-xero-signature does not match the body: refused.")


def _verify_feed(secret: str, body: bytes, headers: dict[str, str]) -> str:
    timestamp = headers.get("x-sandbox-timestamp", "")
    signature = headers.get("x-sandbox-signature", "")
    delivery_id = headers.get("x-sandbox-event-id", "")
    if not signature or not timestamp:
        raise WebhookRefused(
            401, "Missing X-Sandbox-Signature or X-Sandbox-Timestamp: the delivery is unsigned."
        )
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise WebhookRefused(400, "X-Sandbox-Timestamp must be unix seconds.") from exc
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    given = signature.strip().removeprefix("v1=")
    if not hmac.compare_digest(expected, given):
        raise WebhookRefused(401, "X-Sandbox-Signature does not match the body: refused.")
    # Checked after the signature, so the age of an unsigned request tells an attacker nothing.
    age = time.time() - sent_at
    if age > TIMESTAMP_TOLERANCE_S or age < -60:
        raise WebhookRefused(
            400,
            f"Delivery timestamp is {int(age)} s old; more than {TIMESTAMP_TOLERANCE_S} s "
            "is refused as stale (a replayed request).",
        )
    if not delivery_id:
        raise WebhookRefused(400, "Missing X-Sandbox-Event-Id header.")
    return delivery_id


def _content_hash(event: Any) -> str:
    return hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest()


# An event to store: InboundMessage's fields by attname (no model instance on the hot path).
Row = dict[str, Any]


def _xero_row(connection: Connection, event: Any) -> Row:
    if not isinstance(event, dict) or not event.get("resourceId"):
        raise WebhookRefused(400, "Each Xero event needs a resourceId.")
    category = str(event.get("eventCategory", "")).upper()
    object_type = {"INVOICE": "Invoices", "CONTACT": "Contacts"}.get(category, category)
    return {
        "connection_id": connection.pk,
        "object_type": object_type,
        "external_id": str(event["resourceId"]),
        "dedupe_key": f"xero:{_content_hash(event)}",
        "source_version": 0,
        "payload": event,
    }


def _feed_row(connection: Connection, delivery_id: str, event: Any) -> Row:
    if not isinstance(event, dict) or not event.get("record_id") or not event.get("object"):
        raise WebhookRefused(400, "Each change-feed event needs an object and a record_id.")
    event_id = event.get("id") or f"{delivery_id}:{_content_hash(event)}"
    version = event.get("version")
    return {
        "connection_id": connection.pk,
        "object_type": str(event["object"]),
        "external_id": str(event["record_id"]),
        "dedupe_key": f"event:{event_id}"[:128],
        "source_version": int(version) if isinstance(version, int) else 0,
        "payload": event,
    }


def _store(rows: list[Row]) -> Receipt:
    """Insert each event once. Concurrent deliveries of one event race on the unique key; the
    loser sees a duplicate, never a second row. A sender whose delivery failed sends it again,
    and what was stored comes back as duplicates."""
    if not rows:
        return Receipt(accepted=0, duplicates=0, message_ids=[])
    store = _store_postgresql if db_connection.vendor == "postgresql" else _store_each
    receipt = store(rows)
    if receipt.accepted:
        ring_inbound(rows[0]["connection_id"])
    return receipt


# One statement, one round trip, whatever the number of events: duplicates are skipped by the
# database (ON CONFLICT on the delivery key), not raised and caught. Outside a transaction it
# is its own commit, so the 200 that follows it means the events are durable.
_INSERT = (
    "INSERT INTO integrations_inboundmessage (connection_id, source, object_type, external_id, "
    "dedupe_key, source_version, payload, state, error, received_at) VALUES {values} "
    "ON CONFLICT (connection_id, dedupe_key) WHERE replay_of_id IS NULL DO NOTHING RETURNING id"
)


def _store_postgresql(rows: list[Row]) -> Receipt:
    now = timezone.now()
    params: list[Any] = []
    for row in rows:
        params += [
            row["connection_id"],
            InboundMessage.Source.WEBHOOK,
            row["object_type"],
            row["external_id"],
            row["dedupe_key"],
            row["source_version"],
            json_text(row["payload"]),
            InboundMessage.State.RECEIVED,
            "",
            now,
        ]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"] * len(rows))
    with db_connection.cursor() as cursor:
        cursor.execute(_INSERT.format(values=values), params)
        created = [pk for (pk,) in cursor.fetchall()]
    return Receipt(accepted=len(created), duplicates=len(rows) - len(created), message_ids=created)


def _store_each(rows: list[Row]) -> Receipt:
    """Each event in its own INSERT; a duplicate is the unique key's IntegrityError."""
    created: list[int] = []
    duplicates = 0
    # Inside a caller's transaction (a test, a batch import) a savepoint keeps a duplicate from
    # spoiling it; on the webhook path (autocommit) the INSERT alone is the transaction.
    guard = transaction.atomic if db_connection.in_atomic_block else nullcontext
    for row in rows:
        message = InboundMessage(source=InboundMessage.Source.WEBHOOK, **row)
        try:
            with guard():
                message.save(force_insert=True)
        except IntegrityError:
            duplicates += 1
        else:
            created.append(message.pk)
    return Receipt(accepted=len(created), duplicates=duplicates, message_ids=created)


def ring_inbound(connection_id: int, *, force: bool = False) -> None:
    """Ask a worker to process this connection's received messages. While one such request
    waits in the queue, more add nothing (it will see every committed row), so a burst of
    webhooks costs one broker message, not one each. A broker outage loses nothing: the rows are
    committed and the inbound sweeper rings again."""
    from integrations.tasks import process_inbound_batch

    try:
        if force or flag_set(f"inbound:queued:{connection_id}", 30):
            process_inbound_batch.apply_async(args=(connection_id,), expires=60)
    except Exception:
        logger.exception("could not ring for inbound messages of connection %s", connection_id)
