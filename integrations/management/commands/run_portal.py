"""`make run`: the whole portal on one machine: web, worker, beat, sandbox, demo data.

Each part is a real separate process (gunicorn, a Celery worker, Celery beat, the vendor sandbox),
exactly as in production; their logs go to var/log/. Ctrl-C stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from axes.utils import reset as axes_reset
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from integrations.management.demo import demo_data_seed, demo_users_reset

# /healthz is ok once the worker and beat have each written a heartbeat: a few seconds after
# start on this 2-core machine. 90 s is the promise in the README; past it, something is wrong.
READY_TIMEOUT_S = 90


def web_command(
    port: int, *, workers: int = 2, threads: int = 4, access_log: bool = True
) -> list[str]:
    """gunicorn serving config.wsgi (the webhook receiver in front of Django) on loopback.
    2 processes x 4 threads covers a handful of users and bursts of webhooks on 2 cores."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
    ]
    return [*command, "--access-logfile", "-"] if access_log else command


def demo_logins_reset() -> dict[str, str]:
    """Fresh passwords for the demo users, and any sign-in lock on them lifted: the printed
    logins must work at once, even after failed tries against an earlier run's passwords."""
    passwords = demo_users_reset()
    for username in passwords:
        axes_reset(username=username)
    return passwords


class Command(BaseCommand):
    help = "Run web, worker, beat and the sandbox with demo data until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--sandbox-port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8100"))
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port, sandbox_port = options["port"], options["sandbox_port"]
        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)

        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.stdout.write(
            f"Database: {database}; broker: {settings.CELERY_BROKER_URL.split('://')[0]}"
        )
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        counts = demo_data_seed(sandbox_url=f"http://127.0.0.1:{sandbox_port}")
        passwords = demo_logins_reset()

        python = sys.executable
        commands: dict[str, list[str]] = {
            "web": web_command(port),
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                "worker@%h",
                "--queues",
                ",".join(settings.CONCORD_WORKER_QUEUES),
            ],
            "beat": [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"],
        }
        commands["sandbox"] = [
            python,
            "-m",
            "sandbox",
            "--port",
            str(sandbox_port),
            "--seed",
            "demo",
        ]

        processes: dict[str, subprocess.Popen[bytes]] = {}
        logs: list[IO[bytes]] = []
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, command in commands.items():
                log: IO[bytes] = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed below
                logs.append(log)
                processes[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and args
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=os.environ.copy(),
                    # Own process group: Ctrl-C reaches only us, and we stop the children in order.
                    start_new_session=True,
                )
            self._wait_until_healthy(port, processes)
            self._print_banner(port, sandbox_port, counts, passwords, log_dir, list(processes))
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        log_path = log_dir / f"{name}.log"
                        self.stderr.write(f"{name} exited ({process.returncode}); see {log_path}")
                        stopping = True
                time.sleep(0.5)
        finally:
            self.stdout.write("Stopping web, worker, beat and sandbox ...")
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
            deadline = time.monotonic() + 15  # Celery's warm shutdown finishes running tasks.
            for process in processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
            for log_file in logs:
                log_file.close()
            self.stdout.write("Stopped.")

    def _wait_until_healthy(self, port: int, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} failed to start; see var/log/{name}.log")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    last = json.load(response)
                    return
            except urllib.error.HTTPError as exc:  # 503 while a component is still starting
                last = json.load(exc)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        self.stderr.write(f"Not healthy after {READY_TIMEOUT_S} s: {json.dumps(last)}")

    def _print_banner(
        self,
        port: int,
        sandbox_port: int,
        counts: dict[str, int],
        passwords: dict[str, str],
        log_dir: Path,
        names: list[str],
    ) -> None:
        lines: list[str | None] = [
            "",
            f"Concord is running: http://127.0.0.1:{port}   (health: /healthz, API: /api/v1/docs/)",
            f"Processes: {', '.join(names)}; logs in {log_dir}/",
            f"Vendor sandbox: http://127.0.0.1:{sandbox_port} (see sandbox/README.md)",
            f"Demo firm: {counts['projects']} projects, {counts['time_entries']} time entries",
            "Demo logins (new passwords on every start):",
            *[f"  {user:<18} {password}" for user, password in passwords.items()],
            "Press Ctrl-C to stop everything.",
            "",
        ]
        self.stdout.write("\n".join(line for line in lines if line is not None))
