"""How a vendor call failed, in the three classes the sync engine acts on.

* ``TransientError``: the machine retries (timeouts, connection errors, 5xx, 429, our own
  circuit breaker or rate limiter refusing to send). ``retry_after`` says when, if known.
* ``PermanentError``: a retry cannot fix it and neither can a business person's data fix
  (401/403 after one token refresh, 404, a request the vendor says is malformed, credentials
  refused to an address they were not entered for): the integration admins look at it.
* ``BusinessError``: the vendor refused the data (Xero ValidationException, Salesforce
  REQUIRED_FIELD_MISSING, Harvest 422): the business owner fixes the record, then it is retried.

``str(error)`` starts with a stable phrase (no ids, no numbers that vary per call) so callers
can group failures by it; ``vendor_message`` is the vendor's own words, for people to read.
"""

from __future__ import annotations

from typing import ClassVar

from integrations.classification import ErrorClass

# Vendor bodies kept on an error (and in SyncAttempt.vendor_response): 4 KB shows a Xero
# ValidationException with a dozen element errors; a whole 1,000-invoice page would be ~2 MB.
RESPONSE_TEXT_LIMIT = 4096


def truncate(text: str, limit: int = RESPONSE_TEXT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 15] + " ...[truncated]"


class ConnectorError(Exception):
    """A failed vendor call (or item of a batch). ``kind`` is the class the engine acts on."""

    kind: ClassVar[ErrorClass] = ErrorClass.PERMANENT
    # True when the request certainly never reached the vendor (refused by our own limits, or
    # no connection could be made): a write that failed so cannot have been applied.
    never_sent: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        vendor_message: str = "",
        retry_after: float | None = None,
        response_text: str = "",
        attempt_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.vendor_message = vendor_message
        self.retry_after = retry_after
        self.response_text = truncate(response_text)
        # The SyncAttempt row that recorded the call, when one was made.
        self.attempt_id = attempt_id

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code}, "
            f"retry_after={self.retry_after})"
        )


class TransientError(ConnectorError):
    """Try again later: timeouts, connection errors, 5xx, 429, circuit open, limit wait."""

    kind = ErrorClass.TRANSIENT


class CircuitOpenError(TransientError):
    """Not sent: the connection's circuit breaker is open (or its one probe is in flight)."""

    never_sent = True


class LimitWaitExceeded(TransientError):
    """Not sent: a local limit (rate, concurrency, vendor pause) would make us wait too long."""

    never_sent = True


class PermanentError(ConnectorError):
    """A retry cannot fix it and a business data fix will not either."""

    kind = ErrorClass.PERMANENT


class CredentialsOriginRefused(PermanentError):
    """Not sent: the request would carry the connection's credentials to an origin they were not
    entered for (its base URL or a token URL was changed without entering them again, or the
    row was edited by hand). A configuration error for the integration admins: retrying cannot
    fix it, entering the credentials again for the new address does."""

    never_sent = True


class BusinessError(ConnectorError):
    """The vendor refused the data; a person must fix the record, then it can be retried."""

    kind = ErrorClass.BUSINESS
