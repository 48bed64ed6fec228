"""Real processes for tests: the vendor sandbox, Celery workers and beat, a private Redis.

Every process binds loopback only, runs from the repository root and logs to a file in the
test's tmp dir (shown when a test fails), and is stopped when its context exits.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

from integrations.management.commands.run_portal import worker_command

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def test_database_url() -> str:
    """The URL of the database this test runs in (pytest-django's test_ database)."""
    db = settings.DATABASES["default"]
    name = connection.settings_dict["NAME"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}"


def process_env(**overrides: str) -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test"}
    env["DATABASE_URL"] = test_database_url()
    env.update(overrides)
    return env


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (a Celery worker's pool children included)."""
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""


@contextmanager
def running(*procs: Proc) -> Iterator[None]:
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()


def sandbox_proc(port: int, log: Path, seed: str = "none") -> Proc:
    return Proc(
        [sys.executable, "-m", "sandbox", "--port", str(port), "--seed", seed],
        dict(os.environ),
        log,
    )


def wait_for_sandbox(url: str, timeout: float = 20) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"{url}/_control/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout, f"sandbox at {url}")


def gunicorn_proc(
    port: int, env: dict[str, str], log: Path, *, workers: int = 3, threads: int = 4
) -> Proc:
    """The web process as `make run` starts it (config.wsgi under gunicorn), quiet."""
    from integrations.management.commands.run_portal import web_command

    command = web_command(port, workers=workers, threads=threads, access_log=False)
    return Proc([*command, "--log-level", "warning"], env, log)


def worker_ready(log: Path) -> bool:
    """A Celery worker's log says it is ready (its pool started, its queues consumed)."""
    return (
        log.exists()
        and re.search(r"\] \S+ ready\.$", log.read_text(errors="replace"), re.M) is not None
    )


def wait_for_http(url: str, timeout: float = 30) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code < 600
        except httpx.TransportError:
            return False

    wait_until(up, timeout, f"a server at {url}")


def worker_proc(env: dict[str, str], log: Path, *, name: str = "w1", concurrency: int = 2) -> Proc:
    """One worker taking every queue, started as `make run` starts its pools."""
    return Proc(worker_command(name, settings.CONCORD_WORKER_QUEUES, concurrency), env, log)


def beat_proc(env: dict[str, str], log: Path, schedule: Path) -> Proc:
    return Proc(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(schedule),
        ],
        env,
        log,
    )


def redis_proc(port: int, workdir: Path, log: Path) -> Proc:
    """A private redis-server, so a test may restart it without touching the shared one."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Proc(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        dict(os.environ),
        log,
    )


def wait_for_redis(port: int, timeout: float = 10) -> None:
    import redis

    def up() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    wait_until(up, timeout, f"redis on port {port}")
