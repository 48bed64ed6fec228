"""The one HTTP layer every connector uses: httpx with timeouts, limits, classification, records.

A ``VendorHTTP`` wraps one ``httpx.Client`` for one connection. Its ``call`` does, every time:

1. refuse to run inside a database transaction (see below);
2. acquire the connection's limits (circuit breaker, vendor pause, concurrency slot, rate);
3. add the vendor's auth headers (an OAuth token fetched and cached, or a static token);
4. send, with explicit timeouts;
5. classify the outcome (transient / permanent / business, see ``errors.py``): the vendor
   module's classifier reads the vendor's error body, the defaults here cover the rest;
   a 401 refreshes the token once and retries;
6. feed the breaker and the pause (429/503 Retry-After pauses every worker);
7. write a ``SyncAttempt`` row (latency, status, outcome, error, vendor response truncated to
   4 KB) and link the outbox rows the call carried; then return or raise.

**Transactions.** The SyncAttempt row must survive whatever the caller does next, and a
transaction must never be held open across a call to a slow vendor (it would pin a database
connection and row locks for up to the read timeout). So callers must not hold a transaction
around a call: ``call`` raises ``RuntimeError`` before sending if one is open (the test case's
own wrapping transaction excepted, as for ``transaction.atomic(durable=True)``) and writes its
row in a durable atomic block of its own.

**Secrets.** Authorization headers are never logged or stored; response bodies and error
texts pass through ``Redactor``, which masks the connection's credential values, the current
tokens and anything shaped like ``"access_token": "..."`` or ``Bearer ...``.

**Where secrets may go.** A connection's credentials are bound to the origins they were entered
for (integrations/models/connections.py). Before anything else, ``call`` and ``start`` refuse a
request to any other origin (``CredentialsOriginRefused``: permanent, never sent, recorded as a
SyncAttempt): the last line behind the connection services' check, so a base URL edited in the
database by hand cannot carry a token to another host. Every request of a connection that
holds credentials is checked, with auth or without: a token request carries the client secret
in its body or Basic auth, not in ``send_auth``'s headers.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, Protocol

import httpx
import orjson
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from integrations.classification import ErrorClass
from integrations.connectors.connection_limits import limits_for
from integrations.connectors.errors import (
    RESPONSE_TEXT_LIMIT,
    ConnectorError,
    CredentialsOriginRefused,
    PermanentError,
    TransientError,
    truncate,
)
from integrations.connectors.limits import Limits
from integrations.models import SyncAttempt
from integrations.models.connections import VENDOR_FIXED_ORIGINS, url_origin

logger = logging.getLogger(__name__)

# connect 5 s: a TCP + TLS handshake to a vendor takes well under 0.5 s; 5 s tolerates a slow
# DNS answer without tying a worker up when the vendor is unreachable.
# read 30 s: the slowest calls we make (a page of 1,000 Xero invoices, a 200-record Salesforce
# collection) answer in 1-5 s; 30 s is several times that, and the same order as the vendors'
# own gateway timeouts, after which they answer 504 anyway.
# write 30 s: bodies are at most 50 invoices / 200 records (~1 MB). pool 5 s: waiting for a free
# pooled connection means our own concurrency is misconfigured; fail fast.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
# How long a call may wait for its limits (rate, slot, vendor pause) before giving up as a
# transient failure. At Xero's 60/min one call waits at most ~1 s per queued call ahead of it;
# 20 s keeps a worker busy (and the outbox row leased) no longer than one dispatch round, and a
# longer Retry-After (Xero's minute limit says up to 60 s) goes back to the outbox's backoff.
ACQUIRE_TIMEOUT_S = 20.0
# Statuses that mean "slow down", not "down": 429, and Salesforce's 403 REQUEST_LIMIT_EXCEEDED
# (a 403 only ever comes back as a TransientError for that reason).
THROTTLE_STATUSES = (429, 403)
USER_AGENT = "Concord integration portal (integrations@concord.example)"

Classifier = Callable[[httpx.Response], ConnectorError | None]
# What crossed the network: the response or the transport error, and the latency in ms.
Exchange = tuple[httpx.Response | None, ConnectorError | None, int]


@dataclass
class CallResult:
    response: httpx.Response
    attempt_id: int | None

    @property
    def status_code(self) -> int:
        return self.response.status_code

    def json(self) -> Any:
        try:
            # orjson: a page of 2,000 records parses in a third of json's time.
            return orjson.loads(self.response.content)
        except ValueError as exc:
            raise PermanentError(
                "vendor response is not JSON",
                status_code=self.response.status_code,
                response_text=self.response.text,
                attempt_id=self.attempt_id,
            ) from exc


class PendingRead:
    """A GET started by ``VendorHTTP.start``; ``result()`` waits for it and finishes it."""

    def __init__(
        self,
        http: VendorHTTP,
        path: str,
        operation: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        started: datetime,
        *,
        future: Future[Exchange] | None = None,
        permit: Any = None,
        exchanged: Exchange | None = None,
        refused: ConnectorError | None = None,
    ) -> None:
        self.http = http
        self.path = path
        self.operation = operation
        self.params = params
        self.headers = headers
        self.started = started
        self.future = future  # sent: the exchange under way
        self.permit = permit
        self.exchanged = exchanged  # not sent: the token fetch failed
        self.refused = refused  # not sent: the limits said no (recorded already)

    def result(self) -> CallResult:
        """The response, or the ``ConnectorError`` ``call`` would have raised. Call it once;
        until then the call holds one of the connection's concurrency slots."""
        http = self.http
        if self.refused is not None:
            raise self.refused
        exchanged = self.exchanged
        if self.future is not None:
            try:
                exchanged = self.future.result()
            finally:
                http.limits.release(self.permit)
        assert exchanged is not None  # noqa: S101 - sent, or failed before sending
        result, error, retry_auth = http._finish(
            "GET",
            self.path,
            exchanged,
            operation=self.operation,
            started=self.started,
            message_ids=(),
            classify=None,
            send_auth=True,
            use_limits=True,
            may_refresh=True,
        )
        if retry_auth:  # a stale token, refreshed: one more try, which may not refresh again
            result, error, _ = http._once(
                "GET",
                self.path,
                operation=self.operation,
                params=self.params,
                json_body=None,
                data=None,
                headers=self.headers,
                message_ids=(),
                classify=None,
                send_auth=True,
                use_limits=True,
                httpx_auth=None,
                may_refresh=False,
            )
        if error is not None:
            raise error
        assert result is not None  # noqa: S101
        return result


# --- Redaction --------------------------------------------------------------------------------

_SECRET_SHAPES = [
    re.compile(
        r'("(?:access_token|refresh_token|id_token|client_secret|password|signature)"\s*:\s*")'
        r'[^"]*(")',
        re.IGNORECASE,
    ),
    re.compile(r"((?:access_token|client_secret|refresh_token)=)[^&\s]+", re.IGNORECASE),
    re.compile(r"((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=!-]+()", re.IGNORECASE),
]
REDACTED = "[redacted]"


class Redactor:
    """Masks known secret values and secret-shaped text in anything we log or store."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        # Values shorter than 6 characters (an account id like "42") would mask ordinary text.
        self._secrets.update(s for s in secrets if isinstance(s, str) and len(s) >= 6)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        for shape in _SECRET_SHAPES:
            text = shape.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2) or ''}", text)
        return text


# --- Auth -------------------------------------------------------------------------------------


class Auth(Protocol):
    refreshable: bool

    def headers(self, http: VendorHTTP) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


class StaticAuth:
    """Fixed headers (Harvest's personal access token and account id)."""

    refreshable = False

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def headers(self, http: VendorHTTP) -> dict[str, str]:
        return dict(self._headers)

    def invalidate(self) -> None:
        return None


# Access tokens per process: (token url, client id) -> (token, expires at monotonic). Tokens are
# not shared through Redis on purpose: that would store a live secret in plain text there, and
# fetching one per worker process costs one call per ~30 minutes.
_tokens: dict[tuple[str, str], tuple[str, float]] = {}
_tokens_lock = threading.Lock()
# Refresh this long before the vendor's expiry, so a token never expires mid-call (Xero tokens
# live 30 min; a call plus its limit wait stays well under a minute).
TOKEN_EARLY_REFRESH_S = 60.0
# Salesforce does not say how long a token lives (sessions time out after inactivity, 2 h by
# default); refresh after this long, or on the first 401.
TOKEN_DEFAULT_TTL_S = 3600.0


class OAuthClientCredentials:
    """OAuth 2.0 client-credentials grant, token cached per process until shortly before expiry."""

    refreshable = True

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        basic_auth: bool,
        scope: str | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.basic_auth = basic_auth
        self.scope = scope
        self._cache_key = (token_url, client_id)

    def token(self, http: VendorHTTP) -> str:
        with _tokens_lock:
            cached = _tokens.get(self._cache_key)
        if cached is not None and cached[1] > time.monotonic():
            http.redact.add(cached[0])
            return cached[0]
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        auth: httpx.BasicAuth | None = None
        if self.basic_auth:
            auth = httpx.BasicAuth(self.client_id, self.client_secret)
            # The header's value without its "Basic " (a vendor echoing it back in an error
            # would otherwise keep the secret readable in base64).
            http.redact.add(
                base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            )
        else:
            form.update(client_id=self.client_id, client_secret=self.client_secret)
        result = http.call(
            "POST",
            self.token_url,
            operation="oauth_token",
            data=form,
            send_auth=False,
            use_limits=False,
            httpx_auth=auth,
            classify=_classify_token_error,
        )
        body = result.json()
        token = str(body.get("access_token") or "")
        if not token:
            raise PermanentError(
                "token response without access_token", attempt_id=result.attempt_id
            )
        http.redact.add(token)
        ttl = float(body.get("expires_in") or TOKEN_DEFAULT_TTL_S)
        with _tokens_lock:
            _tokens[self._cache_key] = (
                token,
                time.monotonic() + max(ttl - TOKEN_EARLY_REFRESH_S, ttl / 2),
            )
        return token

    def headers(self, http: VendorHTTP) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(http)}"}

    def invalidate(self) -> None:
        with _tokens_lock:
            _tokens.pop(self._cache_key, None)


def _classify_token_error(response: httpx.Response) -> ConnectorError | None:
    if response.status_code in (400, 401, 403):
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = str(body.get("error") or response.status_code) if isinstance(body, dict) else ""
        return PermanentError(
            f"OAuth token refused: {code}",
            status_code=response.status_code,
            vendor_message=str(body.get("error_description") or code)
            if isinstance(body, dict)
            else "",
        )
    return None


def forget_tokens() -> None:
    """Drop every cached access token of this process (tests)."""
    with _tokens_lock:
        _tokens.clear()


# --- Classification defaults ------------------------------------------------------------------


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def default_error(response: httpx.Response, vendor_message: str = "") -> ConnectorError:
    """The class of an HTTP error when the vendor module has nothing more specific to say."""
    status = response.status_code
    text = response.text
    retry_after = retry_after_seconds(response)
    reason = response.reason_phrase or "error"
    if status == 429:
        return TransientError(
            "throttled by vendor (429)",
            status_code=status,
            vendor_message=vendor_message,
            retry_after=retry_after if retry_after is not None else 1.0,
            response_text=text,
        )
    if status >= 500 or status == 408:
        return TransientError(
            f"vendor error {status} {reason}",
            status_code=status,
            vendor_message=vendor_message,
            retry_after=retry_after,
            response_text=text,
        )
    return PermanentError(
        f"vendor refused the request {status} {reason}",
        status_code=status,
        vendor_message=vendor_message,
        response_text=text,
    )


def _transport_error(exc: httpx.TransportError, method: str) -> TransientError:
    if isinstance(exc, httpx.TimeoutException):
        kind = {
            httpx.ConnectTimeout: "connect timeout",
            httpx.ReadTimeout: "read timeout",
            httpx.WriteTimeout: "write timeout",
            httpx.PoolTimeout: "connection pool timeout",
        }.get(type(exc), "timeout")
        message = f"{kind}: no response from vendor"
    elif isinstance(exc, httpx.ConnectError):
        message = "connection error: vendor unreachable"
    else:
        message = "connection lost: response dropped"
    # No connection made (refused, or not even a pooled one in time): the request never left.
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if method in ("POST", "PUT", "PATCH", "DELETE") and not never_sent:
        # The request may have reached the vendor and been applied; only the answer is lost.
        message += " (the write may have been applied; retry with the same idempotency key)"
    error = TransientError(message, vendor_message=type(exc).__name__)
    error.never_sent = never_sent
    return error


def _allowed_origins(connection: Any, vendor: str) -> frozenset[str] | None:
    """Where a connection's requests may go: the origins its credentials were bound to when
    entered, and its vendor's fixed hosts. None when it holds no credentials (nothing to leak);
    empty when they were never bound (then they go nowhere)."""
    credentials = getattr(connection, "credentials", None) or {}
    if not credentials:
        return None
    bound = getattr(credentials, "origins", None) or ()
    return frozenset(bound) | VENDOR_FIXED_ORIGINS.get(vendor, frozenset())


def _in_callers_transaction(using: str = DEFAULT_DB_ALIAS) -> bool:
    conn = connections[using]
    if not conn.in_atomic_block:
        return False
    # The test case's own wrapping transaction is fine, as for atomic(durable=True).
    return not all(getattr(block, "_from_testcase", False) for block in conn.atomic_blocks)


# --- The client -------------------------------------------------------------------------------


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process, shared by every client: building one loads the
    whole CA bundle (tens of milliseconds), which each task's new client would pay again.
    An SSLContext is safe to share between clients and threads."""
    return httpx.create_ssl_context()


class VendorHTTP:
    """One connection's HTTP client, used from one thread (``start`` hands only the network
    exchange of a read to a helper thread of its own)."""

    def __init__(
        self,
        connection: Any,
        *,
        auth: Auth | None = None,
        classify: Classifier | None = None,
        limits: Limits | None = None,
        timeout: httpx.Timeout | float | None = None,
        acquire_timeout: float = ACQUIRE_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        vendor: str = "",
    ) -> None:
        self.connection = connection
        self.vendor = vendor or str(connection.vendor)
        self.auth = auth
        self.classify = classify
        self.limits = limits if limits is not None else limits_for(connection)
        self.acquire_timeout = acquire_timeout
        credentials = connection.credentials or {}
        self.redact = Redactor(str(v) for v in credentials.values() if isinstance(v, str))
        self.allowed_origins = _allowed_origins(connection, self.vendor)
        self.client = httpx.Client(
            base_url=str(connection.base_url).rstrip("/"),
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            transport=transport,
            # Vendors answer API calls directly; a redirect would re-send our token elsewhere.
            follow_redirects=False,
            verify=_tls_context(),
        )
        self._reader: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        self.client.close()

    def url(self, path: str) -> str:
        """The base URL plus the vendor's path exactly as its spec writes it."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.client.base_url}".rstrip("/") + "/" + path.lstrip("/")

    def call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        message_ids: Sequence[int] = (),
        classify: Classifier | None = None,
        send_auth: bool = True,
        use_limits: bool = True,
        httpx_auth: httpx.Auth | None = None,
    ) -> CallResult:
        """Send one request; return the 2xx response or raise a ``ConnectorError``."""
        if _in_callers_transaction():
            raise RuntimeError(
                "a vendor call must not run inside a database transaction: commit first "
                "(the SyncAttempt row and the caller's locks must not wait on the vendor)"
            )
        for try_number in (1, 2):
            result, error, retry_auth = self._once(
                method,
                path,
                operation=operation,
                params=params,
                json_body=json_body,
                data=data,
                headers=headers,
                message_ids=message_ids,
                classify=classify,
                send_auth=send_auth,
                use_limits=use_limits,
                httpx_auth=httpx_auth,
                may_refresh=try_number == 1,
            )
            if retry_auth:
                continue
            if error is not None:
                raise error
            if result is not None:
                return result
        raise PermanentError("authentication failed twice")  # pragma: no cover - loop exits above

    def _once(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        data: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        message_ids: Sequence[int],
        classify: Classifier | None,
        send_auth: bool,
        use_limits: bool,
        httpx_auth: httpx.Auth | None,
        may_refresh: bool,
    ) -> tuple[CallResult | None, ConnectorError | None, bool]:
        started = datetime.now(UTC)
        refused = self._foreign_origin(path)
        if refused is not None:
            return None, self._not_sent(operation, started, refused, message_ids), False
        permit = None
        try:
            if use_limits:
                permit = self.limits.acquire(self.acquire_timeout)
        except ConnectorError as exc:
            return None, self._not_sent(operation, started, exc, message_ids), False
        exchanged: Exchange = (None, None, 0)
        try:
            request_headers = self._headers(headers, send_auth)
            exchanged = self._exchange(
                method, path, params, json_body, data, request_headers, httpx_auth
            )
        except ConnectorError as exc:  # e.g. the token fetch failed
            exchanged = (None, exc, 0)
        finally:
            if permit is not None:
                self.limits.release(permit)
        return self._finish(
            method,
            path,
            exchanged,
            operation=operation,
            started=started,
            message_ids=message_ids,
            classify=classify,
            send_auth=send_auth,
            use_limits=use_limits,
            may_refresh=may_refresh,
        )

    def start(
        self,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PendingRead:
        """Send a GET now and let the caller work while it travels: the network exchange runs
        on a helper thread; limits, auth and everything that touches the database stay on the
        caller's thread, in ``PendingRead.result()``, which finishes the call exactly as
        ``call`` would (classification, breaker, SyncAttempt, one token refresh).

        Polling uses it to fetch page n+1 while page n is mapped and stored, so the vendor's
        time to build a page no longer adds to ours."""
        if _in_callers_transaction():
            raise RuntimeError("a vendor call must not run inside a database transaction")
        started = datetime.now(UTC)
        pending = partial(PendingRead, self, path, operation, params, headers, started)
        refused = self._foreign_origin(path)
        if refused is not None:
            return pending(refused=self._not_sent(operation, started, refused, ()))
        try:
            permit = self.limits.acquire(self.acquire_timeout)
        except ConnectorError as exc:
            return pending(refused=self._not_sent(operation, started, exc, ()))
        try:
            request_headers = self._headers(headers, send_auth=True)
        except ConnectorError as exc:  # e.g. the token fetch failed
            self.limits.release(permit)
            return pending(exchanged=(None, exc, 0))
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vendor-read")
        future = self._reader.submit(
            self._exchange,
            "GET",
            path,
            params,
            None,
            None,
            request_headers,
            None,
        )
        return pending(future=future, permit=permit)

    def _foreign_origin(self, path: str) -> CredentialsOriginRefused | None:
        """The refusal of a request to an origin the credentials were not entered for."""
        if self.allowed_origins is None:
            return None
        origin = url_origin(self.url(path))
        if origin and origin in self.allowed_origins:
            return None
        entered_for = ", ".join(sorted(self.allowed_origins)) or "no address (not bound)"
        logger.warning(
            "%s connection %s: credentials not sent to %s, entered for %s",
            self.vendor,
            getattr(self.connection, "pk", None),
            origin or "an address that is no http(s) URL",
            entered_for,
        )
        return CredentialsOriginRefused(
            "credentials not sent: the address is not one they were entered for",
            vendor_message=(
                f"The request was for {origin or 'an address that is no http(s) URL'}; the "
                f"connection's credentials were entered for {entered_for}. Enter the "
                "credentials again for the new address (the connection's base URL or token "
                "URL changed)."
            ),
        )

    def _not_sent(
        self,
        operation: str,
        started: datetime,
        refused: ConnectorError,
        message_ids: Sequence[int],
    ) -> ConnectorError:
        """The limits refused the call (breaker open, vendor pause, no slot in time)."""
        refused.attempt_id = self._record(operation, started, 0, None, refused, "", message_ids)
        logger.info("%s %s not sent: %s", self.vendor, operation, refused)
        return refused

    def _headers(self, headers: Mapping[str, str] | None, send_auth: bool) -> dict[str, str]:
        request_headers = dict(headers or {})
        if send_auth and self.auth is not None:
            request_headers.update(self.auth.headers(self))
        return request_headers

    def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        data: Mapping[str, Any] | None,
        headers: dict[str, str],
        httpx_auth: httpx.Auth | None,
    ) -> Exchange:
        """The network part alone: no database, no Redis (safe on a helper thread)."""
        begin = time.monotonic()
        try:
            response = self.client.request(
                method,
                self.url(path),
                params=_clean_params(params),
                json=json_body,
                data=data,
                headers=headers,
                auth=httpx_auth if httpx_auth is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            return None, _transport_error(exc, method), int((time.monotonic() - begin) * 1000)
        return response, None, int((time.monotonic() - begin) * 1000)

    def _finish(
        self,
        method: str,
        path: str,
        exchanged: Exchange,
        *,
        operation: str,
        started: datetime,
        message_ids: Sequence[int],
        classify: Classifier | None,
        send_auth: bool,
        use_limits: bool,
        may_refresh: bool,
    ) -> tuple[CallResult | None, ConnectorError | None, bool]:
        """Classify an exchange, feed the limits, record the attempt, log."""
        response, error, latency_ms = exchanged
        retry_auth = False
        if response is not None and not response.is_success:
            error = self._classify(response, classify)
            if (
                response.status_code == 401
                and send_auth
                and may_refresh
                and self.auth is not None
                and self.auth.refreshable
            ):
                # An expired or revoked token: fetch a new one and try once more.
                self.auth.invalidate()
                retry_auth = True
                error = TransientError(
                    "token rejected (401): refreshing it once",
                    status_code=401,
                    vendor_message=error.vendor_message,
                    response_text=error.response_text,
                )
        if use_limits:
            self._feed_limits(error)
        if error is not None:
            error.message = self.redact(error.message)
            error.vendor_message = self.redact(error.vendor_message)
            error.response_text = self.redact(error.response_text)
        # Only the head of the body is kept (see _record): decode that, not a whole page.
        body_text = (
            response.content[: 8 * RESPONSE_TEXT_LIMIT].decode(
                response.encoding or "utf-8", errors="replace"
            )
            if response is not None
            else ""
        )
        attempt_id = self._record(
            operation, started, latency_ms, response, error, body_text, message_ids
        )
        self._log(method, path, operation, response, error, latency_ms)
        if error is not None:
            if error.attempt_id is None:
                error.attempt_id = attempt_id
            return None, error, retry_auth
        assert response is not None  # noqa: S101 - no error means a response arrived
        return CallResult(response, attempt_id), None, False

    def _classify(self, response: httpx.Response, classify: Classifier | None) -> ConnectorError:
        for classifier in (classify, self.classify):
            if classifier is not None:
                error = classifier(response)
                if error is not None:
                    if not error.response_text:
                        error.response_text = truncate(response.text)
                    if error.status_code is None:
                        error.status_code = response.status_code
                    return error
        return default_error(response)

    def _feed_limits(self, error: ConnectorError | None) -> None:
        if error is None or error.kind != ErrorClass.TRANSIENT:
            # The vendor answered (a business or permanent refusal is still an answer).
            self.limits.record_success()
            return
        if error.retry_after and error.status_code is not None:
            # A 429, a 503 with Retry-After, Salesforce's 403 REQUEST_LIMIT_EXCEEDED: every
            # worker holds off, instead of each collecting its own refusal.
            self.limits.pause(error.retry_after)
        if error.status_code in THROTTLE_STATUSES or error.status_code == 401:
            # Throttling is handled by the pause, a stale token by the refresh: neither means
            # the vendor is down.
            return
        self.limits.record_failure(self.redact(str(error)))

    def _record(
        self,
        operation: str,
        started: datetime,
        latency_ms: int,
        response: httpx.Response | None,
        error: ConnectorError | None,
        body_text: str,
        message_ids: Sequence[int],
    ) -> int | None:
        pk = getattr(self.connection, "pk", None)
        if pk is None:
            return None
        error_text = ""
        if error is not None:
            error_text = str(error)
            if error.vendor_message:
                error_text += f" | vendor: {error.vendor_message}"
        with transaction.atomic(durable=True):
            attempt = SyncAttempt.objects.create(
                connection_id=pk,
                operation=operation[:64],
                started_at=started,
                latency_ms=max(0, latency_ms),
                status_code=response.status_code if response is not None else None,
                outcome=error.kind if error is not None else SyncAttempt.Outcome.SUCCESS,
                error=self.redact(error_text)[:4000],
                # Redact only what is kept: a 2 MB page of records costs seconds of regex work
                # otherwise. Twice the kept length, so a secret cut at the edge is never shown.
                vendor_response=truncate(self.redact(body_text[: 2 * RESPONSE_TEXT_LIMIT])),
            )
            if message_ids:
                attempt.messages.add(*message_ids)
        return attempt.pk

    def note_outcome(self, attempt_id: int | None, *, outcome: str, error: str) -> None:
        """Overwrite a recorded attempt's outcome (a 200 whose items the vendor refused)."""
        if attempt_id is None:
            return
        SyncAttempt.objects.filter(pk=attempt_id).update(
            outcome=outcome, error=self.redact(error)[:4000]
        )

    def _log(
        self,
        method: str,
        path: str,
        operation: str,
        response: httpx.Response | None,
        error: ConnectorError | None,
        latency_ms: int,
    ) -> None:
        # Never the headers, never the query (SOQL and filters carry customer data), and the
        # path only up to a query string.
        where = path.split("?", 1)[0]
        if where.startswith(("http://", "https://")):
            where = httpx.URL(where).path
        status = response.status_code if response is not None else "-"
        if error is None:
            logger.debug(
                "%s %s %s %s -> %s in %d ms",
                self.vendor,
                operation,
                method,
                where,
                status,
                latency_ms,
            )
        else:
            logger.warning(
                "%s %s %s %s -> %s in %d ms: %s (%s)",
                self.vendor,
                operation,
                method,
                where,
                status,
                latency_ms,
                self.redact(str(error)),
                error.kind,
            )


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    return {k: v for k, v in params.items() if v is not None}
