"""Xero's webhooks: ``x-xero-signature`` = base64(HMAC-SHA256(webhook key, raw body)).

Xero sends no event id, so an event is identified by a hash of its content; Xero's own retries
carry the same content. Events name a resource (``INVOICE``, ``CONTACT``) and its id, not its
data: the inbound worker fetches the record.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from integrations.vendors.webhook import Row, WebhookRefused, WebhookScheme, content_hash

OBJECT_TYPES = {"INVOICE": "Invoices", "CONTACT": "Contacts"}


def verify_xero(secret: str, body: bytes, headers: Mapping[str, str]) -> str:
    given = headers.get("x-xero-signature")
    if not given:
        raise WebhookRefused(401, "Missing x-xero-signature header: the delivery is unsigned.")
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, given.strip()):
        raise WebhookRefused(401, "x-xero-signature does not match the body: refused.")
    return ""  # Xero deliveries carry no id of their own


def xero_row(connection_id: int, delivery_id: str, event: Any) -> Row:
    if not isinstance(event, dict) or not event.get("resourceId"):
        raise WebhookRefused(400, "Each Xero event needs a resourceId.")
    category = str(event.get("eventCategory", "")).upper()
    return {
        "connection_id": connection_id,
        "object_type": OBJECT_TYPES.get(category, category),
        "external_id": str(event["resourceId"]),
        "dedupe_key": f"xero:{content_hash(event)}",
        "source_version": 0,
        "payload": event,
    }


def xero_tenant(event: Any) -> str:
    """The organisation an event is about: one Xero app's webhook carries every connected
    organisation's events, whichever connection's address it was sent to."""
    return str(event.get("tenantId") or "") if isinstance(event, dict) else ""


XERO_WEBHOOK = WebhookScheme(verify=verify_xero, row=xero_row, tenant=xero_tenant)
