"""The webhook receiver as a lean WSGI layer in front of Django.

Webhooks are the portal's hottest path: vendors send them in bursts, machine to machine, with
no cookies, sessions, pages or redirects involved. Django's middleware stack, request objects
and URL resolver cost about a third of a webhook's CPU time, so ``POST /webhooks/<id>/`` is
answered here, by the same service call the Django view makes (``webhook_answer``), and every
other request goes to Django untouched.

What stays as in Django: the database connection's life cycle (``request_started`` and
``request_finished`` are sent, so CONN_MAX_AGE and error handling apply), the HTTPS redirect
(with SECURE_SSL_REDIRECT on, a plain-HTTP webhook goes to Django, which redirects it), logging
of failures, JSON answers. What is added: a connection the database dropped (a restart, an idle
timeout) is replaced and the delivery tried once more; the insert is idempotent on the event's
key, so a delivery whose first try did commit comes back as a duplicate, never as a second row.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from django.conf import settings
from django.core import signals
from django.db import InterfaceError, OperationalError
from django.db import connection as db

from integrations.sync.webhooks import MAX_BODY_BYTES, webhook_answer

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
WEBHOOK_PATH = re.compile(r"/webhooks/(\d+)/")


def with_webhook_receiver(django_app: WSGIApp) -> WSGIApp:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") == "POST":
            match = WEBHOOK_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match and (not settings.SECURE_SSL_REDIRECT or _is_secure(environ)):
                return _receive(environ, start_response, int(match[1]))
        return django_app(environ, start_response)

    return application


def _receive(
    environ: dict[str, Any], start_response: Callable[..., Any], connection_id: int
) -> list[bytes]:
    signals.request_started.send(sender=__name__, environ=environ)
    try:
        status, payload = _answer(environ, connection_id)
    except Exception:
        logger.exception("webhook for connection %s failed", connection_id)
        status, payload = 500, {"error": "Not stored: an internal error. Send it again."}
    finally:
        signals.request_finished.send(sender=__name__)
    body = orjson.dumps(payload)
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
        ],
    )
    return [body]


def _answer(environ: dict[str, Any], connection_id: int) -> tuple[int, dict[str, Any]]:
    body = _read_body(environ)
    if isinstance(body, tuple):
        return body
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    try:
        return webhook_answer(connection_id, body, headers)
    except (InterfaceError, OperationalError):
        if db.in_atomic_block:
            raise
        logger.warning("database connection lost while storing a webhook: reconnecting once")
        db.close()
        return webhook_answer(connection_id, body, headers)


def _read_body(environ: dict[str, Any]) -> bytes | tuple[int, dict[str, Any]]:
    """The whole body, or the answer refusing it. A chunked delivery has no Content-Length: its
    body is read to the end (gunicorn hands it over de-chunked), at most one byte past the
    limit, so an endless stream is cut off rather than held in memory."""
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not environ.get("CONTENT_LENGTH"):
        body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return 413, {"error": f"Body is over the {MAX_BODY_BYTES} byte limit."}
        return bytes(body)
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 400, {"error": "Content-Length must be a number."}
    if length > MAX_BODY_BYTES:
        return 413, {"error": f"Body of {length} bytes is over the {MAX_BODY_BYTES} limit."}
    return bytes(environ["wsgi.input"].read(length)) if length else b""


def _is_secure(environ: dict[str, Any]) -> bool:
    if environ.get("wsgi.url_scheme") == "https":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        header, value = proxy
        return bool(environ.get(header) == value)
    return False
