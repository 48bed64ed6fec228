"""Signed webhooks out of the sandbox, delivered by a background asyncio task.

Two formats (both documented in README.md):

* **Xero** (``system == "xero"``): Xero's own payload (``events[]``, ``firstEventSequence``,
  ``lastEventSequence``, ``entropy``) with header ``x-xero-signature`` = base64 of
  HMAC-SHA256(webhook key, raw body). Like Xero, only CONTACT and INVOICE events exist.
* **Signed change feed** (Salesforce and Harvest, which have nothing of that shape):
  ``{"system", "delivery_id", "events": [...]}`` with headers ``X-Sandbox-Event-Id`` (the
  delivery id, the same on every retry so receivers can deduplicate),
  ``X-Sandbox-Timestamp`` (unix seconds) and ``X-Sandbox-Signature: v1=<hex>`` where hex is
  HMAC-SHA256(secret, f"{timestamp}.{raw body}").

Changes are collected for ``BATCH_WINDOW_S`` and sent as one delivery per subscription, the
way Xero batches events. A failed delivery is retried after 0.5, 1 and 2 seconds (4 attempts
in all), each with a 5-second timeout, in its own task, so a slow receiver never delays the
vendor APIs or other deliveries.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import string
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from .store import Change

log = logging.getLogger("sandbox.webhooks")

BATCH_WINDOW_S = 0.2  # Xero batches events; 200 ms keeps tests fast and payloads grouped
RETRY_DELAYS_S = (0.5, 1.0, 2.0)
DELIVERY_TIMEOUT_S = 5.0
MAX_EVENTS_PER_DELIVERY = 500  # keeps one payload well under a typical 1 MB body limit
DELIVERY_LOG_SIZE = 500

EventBuilder = Callable[[Change], "dict[str, Any] | None"]


@dataclass
class Subscription:
    id: str
    system: str
    url: str
    secret: str
    # Xero only: the one organisation whose events this subscription hears (as an app
    # connected to that organisation alone would); None hears every connected organisation.
    tenant: str | None = None
    next_sequence: int = 1  # Xero's event sequence numbers, per subscription

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "system": self.system, "url": self.url}
        if self.tenant is not None:
            out["tenant"] = self.tenant
        return out


@dataclass
class Delivery:
    id: str
    subscription_id: str
    system: str
    url: str
    events: int
    attempts: int = 0
    status: int | None = None
    delivered: bool = False
    last_error: str | None = None
    created_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def xero_signature(key: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def feed_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


class WebhookDispatcher:
    def __init__(self) -> None:
        self.builders: dict[str, EventBuilder] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: deque[Delivery] = deque(maxlen=DELIVERY_LOG_SIZE)
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    # -- configuration -----------------------------------------------------------------------

    def subscribe(
        self, system: str, url: str, secret: str, tenant: str | None = None
    ) -> Subscription:
        sub = Subscription(
            id=uuid.uuid4().hex, system=system, url=url, secret=secret, tenant=tenant
        )
        self.subscriptions[sub.id] = sub
        return sub

    def unsubscribe(self, sub_id: str) -> bool:
        return self.subscriptions.pop(sub_id, None) is not None

    def reset(self) -> None:
        self.subscriptions.clear()
        self.deliveries.clear()
        self._pending.clear()

    # -- producing ---------------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        """Store listener: queue an event if anyone subscribed to this system. Never blocks."""
        if not any(s.system == change.system for s in self.subscriptions.values()):
            return
        builder = self.builders.get(change.system)
        event = builder(change) if builder else None
        if event is not None:
            self._pending.setdefault(change.system, []).append(event)
            self._wakeup.set()

    # -- delivering --------------------------------------------------------------------------

    async def run(self) -> None:
        """Background loop started by the app's lifespan."""
        self._client = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S)
        try:
            while True:
                await self._wakeup.wait()
                await asyncio.sleep(BATCH_WINDOW_S)
                self._wakeup.clear()
                pending, self._pending = self._pending, {}
                for system, events in pending.items():
                    for start in range(0, len(events), MAX_EVENTS_PER_DELIVERY):
                        self._fan_out(system, events[start : start + MAX_EVENTS_PER_DELIVERY])
        finally:
            for task in list(self._tasks):
                task.cancel()
            await self._client.aclose()

    def _fan_out(self, system: str, events: list[dict[str, Any]]) -> None:
        for sub in [s for s in self.subscriptions.values() if s.system == system]:
            heard = (
                events
                if sub.tenant is None
                else [e for e in events if e.get("tenantId") == sub.tenant]
            )
            if not heard:
                continue
            body, headers = self._render(sub, heard)
            delivery = Delivery(
                id=uuid.uuid4().hex,
                subscription_id=sub.id,
                system=system,
                url=sub.url,
                events=len(heard),
            )
            if system != "xero":
                headers["X-Sandbox-Event-Id"] = delivery.id
            self.deliveries.append(delivery)
            task = asyncio.create_task(self._deliver(delivery, body, headers))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _render(
        self, sub: Subscription, events: list[dict[str, Any]]
    ) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "application/json", "User-Agent": "Concord-Sandbox-Webhooks/1.0"}
        if sub.system == "xero":
            first = sub.next_sequence
            sub.next_sequence += len(events)
            payload: dict[str, Any] = {
                "events": events,
                "firstEventSequence": first,
                "lastEventSequence": first + len(events) - 1,
                "entropy": "".join(secrets.choice(string.ascii_uppercase) for _ in range(20)),
            }
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers["x-xero-signature"] = xero_signature(sub.secret, body)
            return body, headers
        payload = {"system": sub.system, "events": events}
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers["X-Sandbox-Timestamp"] = timestamp
        headers["X-Sandbox-Signature"] = feed_signature(sub.secret, timestamp, body)
        return body, headers

    async def _deliver(self, delivery: Delivery, body: bytes, headers: dict[str, str]) -> None:
        if self._client is None:  # run() not started (no lifespan): nothing can be sent
            return
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
            if delay:
                await asyncio.sleep(delay)
            delivery.attempts = attempt + 1
            try:
                response = await self._client.post(delivery.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                delivery.last_error = f"{type(exc).__name__}: {exc}"
                continue
            delivery.status = response.status_code
            if 200 <= response.status_code < 300:
                delivery.delivered = True
                delivery.last_error = None
                return
            delivery.last_error = f"HTTP {response.status_code}"
        log.warning(
            "webhook delivery %s to %s failed: %s", delivery.id, delivery.url, delivery.last_error
        )
