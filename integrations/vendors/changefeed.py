"""The signed change feed that Salesforce and Harvest deliver through (neither vendor signs its
own webhooks; the sandbox, or a relay in front of the real service, sends this feed).

Headers: ``X-Sandbox-Timestamp`` (unix seconds), ``X-Sandbox-Event-Id`` and
``X-Sandbox-Signature: v1=hex(HMAC-SHA256(secret, "<timestamp>.<raw body>"))``. Deliveries older
than the tolerance are refused, so a captured request cannot be replayed later. Each event
names its ``object``, ``record_id`` and, where the source has one, its ``id`` and ``version``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from integrations.vendors.webhook import Row, WebhookRefused, WebhookScheme, content_hash

# Five minutes, as Stripe and Slack use: covers clock skew and the sender's quick retries.
TIMESTAMP_TOLERANCE_S = 300


def verify_change_feed(secret: str, body: bytes, headers: Mapping[str, str]) -> str:
    """The delivery id of a correctly signed, fresh delivery; WebhookRefused otherwise."""
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


def change_feed_row(connection_id: int, delivery_id: str, event: Any) -> Row:
    if not isinstance(event, dict) or not event.get("record_id") or not event.get("object"):
        raise WebhookRefused(400, "Each change-feed event needs an object and a record_id.")
    event_id = event.get("id") or f"{delivery_id}:{content_hash(event)}"
    version = event.get("version")
    return {
        "connection_id": connection_id,
        "object_type": str(event["object"]),
        "external_id": str(event["record_id"]),
        "dedupe_key": f"event:{event_id}"[:128],
        "source_version": int(version) if isinstance(version, int) else 0,
        "payload": event,
    }


CHANGE_FEED = WebhookScheme(verify=verify_change_feed, row=change_feed_row)
