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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db import connection as db_connection

from integrations.models import Connection, InboundMessage, Vendor

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
    if connection.vendor == Vendor.XERO:
        _verify_xero(secret, body, lowered)
        payload = _json(body)
        events = payload.get("events")
        if not isinstance(events, list):
            raise WebhookRefused(400, "Body must be a JSON object with an 'events' list.")
        rows = [_xero_row(connection, event) for event in events]
    else:
        delivery_id = _verify_feed(secret, body, lowered)
        payload = _json(body)
        events = payload.get("events")
        if not isinstance(events, list):
            raise WebhookRefused(400, "Body must be a JSON object with an 'events' list.")
        rows = [_feed_row(connection, delivery_id, event) for event in events]
    return _store(rows)


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


def _xero_row(connection: Connection, event: Any) -> InboundMessage:
    if not isinstance(event, dict) or not event.get("resourceId"):
        raise WebhookRefused(400, "Each Xero event needs a resourceId.")
    category = str(event.get("eventCategory", "")).upper()
    object_type = {"INVOICE": "Invoices", "CONTACT": "Contacts"}.get(category, category)
    return InboundMessage(
        connection=connection,
        source=InboundMessage.Source.WEBHOOK,
        object_type=object_type,
        external_id=str(event["resourceId"]),
        dedupe_key=f"xero:{_content_hash(event)}",
        payload=event,
    )


def _feed_row(connection: Connection, delivery_id: str, event: Any) -> InboundMessage:
    if not isinstance(event, dict) or not event.get("record_id") or not event.get("object"):
        raise WebhookRefused(400, "Each change-feed event needs an object and a record_id.")
    event_id = event.get("id") or f"{delivery_id}:{_content_hash(event)}"
    version = event.get("version")
    return InboundMessage(
        connection=connection,
        source=InboundMessage.Source.WEBHOOK,
        object_type=str(event["object"]),
        external_id=str(event["record_id"]),
        dedupe_key=f"event:{event_id}"[:128],
        source_version=int(version) if isinstance(version, int) else 0,
        payload=event,
    )


def _store(rows: list[InboundMessage]) -> Receipt:
    """Insert each event once, each in its own autocommitted INSERT (one round trip): events are
    independent, and a sender whose delivery half failed sends it again, when the stored half
    comes back as duplicates. Concurrent deliveries of one event race on the unique key; the
    loser sees a duplicate, never a second row."""
    created: list[int] = []
    duplicates = 0
    # Inside a caller's transaction (a test, a batch import) a savepoint keeps a duplicate from
    # spoiling it; on the webhook path (autocommit) the INSERT alone is the transaction.
    guard = transaction.atomic if db_connection.in_atomic_block else nullcontext
    for row in rows:
        try:
            with guard():
                row.save(force_insert=True)
        except IntegrityError:
            duplicates += 1
        else:
            created.append(row.pk)
    if created:
        ring_inbound(rows[0].connection_id)
    return Receipt(accepted=len(created), duplicates=duplicates, message_ids=created)


def ring_inbound(connection_id: int, *, force: bool = False) -> None:
    """Ask a worker to process this connection's received messages. While one such request
    waits in the queue, more add nothing (it will see every committed row), so a burst of
    webhooks costs one broker message, not one each. A broker outage loses nothing: the rows are
    committed and the inbound sweeper rings again."""
    from integrations.tasks import process_inbound_batch

    try:
        if force or cache.add(f"inbound:queued:{connection_id}", 1, timeout=30):
            process_inbound_batch.apply_async(args=(connection_id,), expires=60)
    except Exception:
        logger.exception("could not ring for inbound messages of connection %s", connection_id)
