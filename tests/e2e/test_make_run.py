"""`make run`'s command on the embedded default (SQLite + filesystem broker, no PostgreSQL or
Redis): the portal comes up healthy, the printed demo logins work, Ctrl-C stops every process."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_run_portal_on_the_embedded_default(tmp_path: Path) -> None:
    port, sandbox_port = _free_port(), _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        CONCORD_VAR_DIR=str(tmp_path / "var"),
        DJANGO_SECRET_KEY="e2e-" + "x" * 50,
        CONCORD_FERNET_KEYS="Qe5sJm7XK0y2pTq3wq6q3ZBZ3Q1fFq0m8cQbq8yR3Vw=",
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        DJANGO_HSTS_SECONDS="0",
        PYTHONUNBUFFERED="1",
    )
    out = open(tmp_path / "run.out", "w+b")  # noqa: SIM115
    portal = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_portal",
            "--port",
            str(port),
            "--sandbox-port",
            str(sandbox_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.monotonic()
        banner = b""
        while b"Press Ctrl-C" not in banner:
            assert portal.poll() is None, (tmp_path / "run.out").read_text()
            assert time.monotonic() - started < 90, banner.decode()
            time.sleep(0.5)
            banner = (tmp_path / "run.out").read_bytes()
        text = banner.decode()
        assert f"http://127.0.0.1:{port}" in text
        assert "Database: sqlite3; broker: filesystem" in text

        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["checks"]["broker"]["transport"] == "filesystem"
        assert time.monotonic() - started < 90

        status, body = _get(f"http://127.0.0.1:{port}/login/")
        assert status == 200
        assert b"Sign in to Concord" in body

        # The printed password of the finance demo user signs in.
        password = re.search(r"^\s+finance\s+(\S+)$", text, re.M)
        assert password, text
        session = _login(port, "finance", password.group(1))
        status, _ = _get_with(session, f"http://127.0.0.1:{port}/finance/")
        assert status == 200
    finally:
        portal.send_signal(signal.SIGINT)
        portal.wait(timeout=30)
        out.close()
    assert "Stopped." in (tmp_path / "run.out").read_text()
    for stopped_port in (port, sandbox_port):  # web and sandbox are gone
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", stopped_port), timeout=1).close()


def _login(port: int, username: str, password: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"http://127.0.0.1:{port}/login/", timeout=5).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    data = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/login/",
        data=data,
        headers={"Referer": f"http://127.0.0.1:{port}/login/"},
    )
    response = opener.open(request, timeout=5)
    assert response.geturl().endswith("/"), response.geturl()
    return opener


def _get_with(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, bytes]:
    with opener.open(url, timeout=5) as response:
        return response.status, response.read()
