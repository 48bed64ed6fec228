"""What every vendor's webhook scheme provides: a signature check and an event -> row parser.

The receiver (integrations/sync/webhooks.py) looks the connection's scheme up in the vendor
registry, calls `verify` before it parses anything of the body, then `row` for each event. A
refusal is a `WebhookRefused`, whose status and message go back to the sender.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class WebhookRefused(Exception):
    """The delivery is not accepted; `status` and the message go back to the sender."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# An event to store: InboundMessage's fields by attname (no model instance on the hot path).
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookScheme:
    # (secret, raw body, headers with lower-case names) -> the delivery's id ("" when the vendor
    # sends none); raises WebhookRefused when the signature or the headers do not hold.
    verify: Callable[[str, bytes, Mapping[str, str]], str]
    # (connection id, delivery id, one event of the body) -> the row to store.
    row: Callable[[int, str, Any], Row]
    # One event -> the organisation it is about ("" when it names none), for a vendor whose one
    # subscription covers every organisation the app is connected to (Xero's tenantId). The
    # receiver stores an event under the connection that serves its organisation.
    tenant: Callable[[Any], str] | None = None


def content_hash(event: Any) -> str:
    """An event's identity when the vendor gives it none: the same content, the same hash."""
    return hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest()
