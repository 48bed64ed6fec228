"""Call the production WSGI application (config.wsgi) in-process, as gunicorn would; and send
one delivery several times at once over real HTTP."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
from django.core import signals
from django.db import close_old_connections


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def wsgi_call(method: str, path: str, body: bytes = b"", app: Any = None, **headers: str) -> Answer:
    """One request through `app`, by default config.wsgi.application."""
    if app is None:
        from config.wsgi import application as app

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
        "HTTP_HOST": "testserver",
        **headers,
    }
    setup_testing_defaults(environ)
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = {k.lower(): v for k, v in response_headers}

    # As Django's test client does: the test's own transaction holds the connection, so the
    # per-request housekeeping must not close it.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        chunks = app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    return Answer(answer["status"], answer["headers"], content)


def wsgi_post(path: str, body: bytes, app: Any = None, **headers: str) -> Answer:
    return wsgi_call("POST", path, body, app, **headers)


def post_at_once(url: str, body: bytes, headers: dict[str, str], times: int = 8) -> list[Any]:
    """The same delivery `times` times at once over real HTTP; the answers' JSON bodies."""
    barrier = threading.Barrier(times)
    answers: list[Any] = []

    def deliver() -> None:
        with httpx.Client(timeout=10) as client:
            barrier.wait()
            response = client.post(
                url, content=body, headers={**headers, "content-type": "application/json"}
            )
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=deliver) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200] * times, answers
    return [answer for _, answer in answers]
