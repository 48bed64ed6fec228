"""Receiving signed webhooks: verify, keep the raw events, deduplicate, answer after the commit.

Each vendor's signature scheme and event parser live in its folder and are found through the
vendor registry: Xero's (integrations/vendors/xero/webhook.py) and the signed change feed that
Salesforce and Harvest share (integrations/vendors/changefeed.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import IntegrityError, transaction
from django.db import connection as db_connection
from django.utils import timezone

from integrations.models import Connection, InboundMessage
from integrations.sync.bulk import json_text
from integrations.sync.ring import ring_inbound
from integrations.vendors import vendor_entry
from integrations.vendors.webhook import Row, WebhookRefused

logger = logging.getLogger(__name__)

# Xero sends at most a few hundred events per delivery; 1 MB is far above any real payload.
MAX_BODY_BYTES = 1_000_000


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
    answer: dict[str, Any] = {"accepted": receipt.accepted, "duplicates": receipt.duplicates}
    if receipt.ignored:
        answer["ignored"] = receipt.ignored
    return 200, answer


@dataclass
class Receipt:
    accepted: int
    duplicates: int
    message_ids: list[int]
    # Events about an organisation no enabled connection serves: not stored (logged).
    ignored: int = 0


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
    scheme = vendor_entry(connection.vendor).webhook
    # The signature first: nothing of an unverified body is parsed.
    delivery_id = scheme.verify(secret, body, lowered)
    events = _json(body).get("events")
    if not isinstance(events, list):
        raise WebhookRefused(400, "Body must be a JSON object with an 'events' list.")
    rows = [scheme.row(connection.pk, delivery_id, event) for event in events]
    if scheme.tenant is None:
        return _store(rows)
    kept, ignored = _rows_by_tenant(connection, scheme.tenant, events, rows)
    receipt = _store(kept)
    receipt.ignored = ignored
    return receipt


def _rows_by_tenant(
    connection: Connection, tenant_of: Callable[[Any], str], events: list[Any], rows: list[Row]
) -> tuple[list[Row], int]:
    """Each event under the connection that serves its organisation. One Xero app's webhook
    carries the events of every organisation it is connected to, whichever connection's address
    it reaches: this connection's own stay; another organisation's go to the enabled connection
    of the same vendor whose tenant it is; one that none serves is not stored (it is no record
    of this firm's), counted in the answer and logged. A connection whose tenant is not in its
    credentials (discovered from the vendor) keeps every event, as before."""
    own = str(connection.credentials.get("tenant_id") or "")
    kept: list[Row] = []
    ignored = 0
    for event, row in zip(events, rows, strict=True):
        tenant = tenant_of(event)
        if not own or not tenant or tenant == own:
            kept.append(row)
            continue
        other = tenant_connection_id(connection.vendor, tenant)
        if other is None:
            ignored += 1
            logger.warning(
                "webhook event for %s organisation %s, which no enabled connection serves, "
                "was not stored (delivered to connection %s)",
                connection.get_vendor_display(),
                tenant,
                connection.pk,
            )
            continue
        kept.append({**row, "connection_id": other})
    return kept, ignored


# vendor -> (when loaded, tenant id -> the enabled connection serving it), per process.
_tenants: dict[str, tuple[float, dict[str, int]]] = {}


def tenant_connection_id(vendor: str, tenant: str) -> int | None:
    """The enabled connection of `vendor` whose credentials name organisation `tenant`."""
    now = time.monotonic()
    cached = _tenants.get(vendor)
    if cached is None or now - cached[0] >= CONNECTION_CACHE_S:
        served = {
            str(c.credentials["tenant_id"]): c.pk
            for c in Connection.objects.filter(vendor=vendor, enabled=True).order_by("pk")
            if c.credentials.get("tenant_id")
        }
        cached = _tenants[vendor] = (now, served)
    return cached[1].get(tenant)


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookRefused(400, f"Body is not valid JSON: {exc}.") from exc
    if not isinstance(payload, dict):
        raise WebhookRefused(400, "Body must be a JSON object.")
    return payload


def _store(rows: list[Row]) -> Receipt:
    """Insert each event once. Concurrent deliveries of one event race on the unique key; the
    loser sees a duplicate, never a second row. A sender whose delivery failed sends it again,
    and what was stored comes back as duplicates."""
    if not rows:
        return Receipt(accepted=0, duplicates=0, message_ids=[])
    store = _store_postgresql if db_connection.vendor == "postgresql" else _store_each
    receipt = store(rows)
    if receipt.accepted:
        # Soon rather than now: a burst of deliveries shares one ring (integrations/sync/ring.py).
        ring_inbound(sorted({row["connection_id"] for row in rows}), soon=True)
    return receipt


# One statement, one round trip, whatever the number of events: duplicates are skipped by the
# database (ON CONFLICT on the delivery key), not raised and caught. Outside a transaction it
# is its own commit, so the 200 that follows it means the events are durable. Sent with its
# parameters bound by the server (psycopg's plain cursor) rather than quoted into the text in
# Python by Django's client-side cursor and its wrapper: about 60 us less CPU per webhook
# (measured). Not prepared, so a pooler in transaction mode is no concern.
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
    db_connection.ensure_connection()
    # Errors are translated as Django's own cursor would (the receiver reconnects on an
    # OperationalError or InterfaceError and tries once more).
    with db_connection.wrap_database_errors, psycopg.Cursor(db_connection.connection) as cursor:
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
