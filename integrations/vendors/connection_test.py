"""Testing a connection: one real authenticated read through its connector, as the console's
test button asks (integrations/console/connections.py), audited.

The read is the vendor's smallest proof that the stored credentials work and open the right
account (``Connector.probe``: Harvest ``GET /company``, Xero ``GET /Organisation``, Salesforce a
``COUNT()`` query). It goes through the same HTTP layer as every call: the credentials' origin
binding, the connection's rate limit and circuit breaker, a ``SyncAttempt`` row. What comes
back to the page is the status, the latency and a few chosen facts of the answer, or the error
in the vendor's words, every text passed through the connection's redactor: no credential
value ever reaches the page or the audit row.

The page waits for the answer, so the limits are shorter than a worker's: 10 s to read (the
probes answer in well under a second; a vendor slower than that is worth reporting as such),
5 s to get a slot under the connection's own rate limit and concurrency cap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime

import httpx
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils import timezone

from integrations.connectors.base import Connector, Probe
from integrations.connectors.errors import ConnectorError
from integrations.connectors.http import Redactor
from integrations.models import AuditEvent, Connection, SyncAttempt
from integrations.services.audit import audit_record
from integrations.vendors import connector_for

logger = logging.getLogger(__name__)

TEST_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
TEST_ACQUIRE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ConnectionTest:
    ok: bool
    at: datetime
    request: str  # what was asked, e.g. "GET /company" ("" when nothing could be sent)
    status_code: int | None
    latency_ms: int | None  # of the read itself
    total_ms: int  # with the sign-in (a token) and, for Xero, finding the tenant
    summary: str  # the answer in words, or what went wrong
    facts: list[tuple[str, str]] = field(default_factory=list)
    error_class: str = ""  # transient / permanent / business, for a failure
    vendor_message: str = ""  # the vendor's own words, for a failure
    audit_id: int | None = None


def _latency(attempt_id: int | None) -> int | None:
    if attempt_id is None:
        return None
    return SyncAttempt.objects.filter(pk=attempt_id).values_list("latency_ms", flat=True).first()


def _redactor(connection: Connection, connector: Connector | None) -> Redactor:
    http = getattr(connector, "http", None)
    redact = getattr(http, "redact", None)
    if isinstance(redact, Redactor):
        return redact
    credentials = connection.credentials or {}
    return Redactor(str(v) for v in credentials.values() if isinstance(v, str))


def connection_test(
    *, connection: Connection, actor: AbstractBaseUser | AnonymousUser | None
) -> ConnectionTest:
    """Make the connection's probe read and say what came back; audited (who, when, outcome).
    Never raises for a vendor's failure: that is the answer to show."""
    at = timezone.now()
    started = time.monotonic()
    connector: Connector | None = None
    probe: Probe | None = None
    failure: ConnectorError | None = None
    unexpected = ""
    try:
        connector = connector_for(
            connection, timeout=TEST_TIMEOUT, acquire_timeout=TEST_ACQUIRE_TIMEOUT_S
        )
        probe = connector.probe()
    except ConnectorError as exc:
        failure = exc
    except Exception as exc:  # a bug of ours: said in general words, logged in full
        logger.exception("testing connection %s failed unexpectedly", connection.pk)
        unexpected = f"The test could not run: {type(exc).__name__}. See the server log."
    finally:
        redact = _redactor(connection, connector)
        if connector is not None:
            connector.close()
    total_ms = int((time.monotonic() - started) * 1000)
    if probe is not None:
        result = ConnectionTest(
            ok=True,
            at=at,
            request=probe.request,
            status_code=probe.status_code,
            latency_ms=_latency(probe.attempt_id),
            total_ms=total_ms,
            summary=redact(probe.summary),
            facts=[(name, redact(value)) for name, value in probe.facts],
        )
    elif failure is not None:
        result = ConnectionTest(
            ok=False,
            at=at,
            request="",
            status_code=failure.status_code,
            latency_ms=_latency(failure.attempt_id),
            total_ms=total_ms,
            summary=redact(_failure_words(failure)),
            error_class=str(failure.kind),
            vendor_message=redact(failure.vendor_message)[:1000],
        )
    else:
        result = ConnectionTest(
            ok=False,
            at=at,
            request="",
            status_code=None,
            latency_ms=None,
            total_ms=total_ms,
            summary=unexpected,
            error_class="error",
        )
    event = audit_record(
        actor=actor,
        action=AuditEvent.Action.TEST,
        instance=connection,
        changes={
            "outcome": "ok" if result.ok else "failed",
            "request": result.request,
            "status": result.status_code,
            "latency_ms": result.latency_ms,
            "total_ms": result.total_ms,
            "summary": result.summary[:500],
            **({"vendor_message": result.vendor_message[:500]} if result.vendor_message else {}),
        },
    )
    logger.info(
        "connection %s tested by %s: %s (%s)",
        connection.pk,
        event.actor_label,
        "ok" if result.ok else "failed",
        result.status_code,
    )
    return replace(result, audit_id=event.pk)


def _failure_words(error: ConnectorError) -> str:
    """What went wrong, in the words a person acts on: the stable phrase, and what the class
    means for them."""
    text = str(error) or type(error).__name__
    if getattr(error, "never_sent", False):
        return f"Not sent: {text}."
    if error.status_code is not None:
        return f"The vendor answered {error.status_code}: {text}."
    return f"No answer: {text}."
