"""What happened to one claimed outbox row: the dispatcher's answer to the outbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from integrations.models import OutboxMessage


@dataclass
class Outcome:
    """What happened to one claimed row."""

    message: OutboxMessage
    ok: bool
    external_id: str = ""
    external_version: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    error_class: str = ""  # transient | permanent | business
    error: str = ""
    # The call may have reached the vendor (see OutboxMessage.needs_lookup).
    maybe_applied: bool = False
    # Never sent (our own rate limiter or circuit breaker held it back): not an attempt.
    not_sent: bool = False
    # The vendor answered with a record other than the one sent (integrations/vendors/echo.py).
    mismatch: bool = False
    # The Idempotency-Key of the call when it may have reached the vendor (OutboxMessage.sent_key).
    sent_key: str = ""
    vendor_message: str = ""
    retry_after: float | None = None
