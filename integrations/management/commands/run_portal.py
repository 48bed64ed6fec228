"""`make run`: the whole portal on one machine: web, worker, beat, sandbox, the demo firm.

Each part is a real separate process (gunicorn, the Celery worker pools, Celery beat, the vendor
sandbox), exactly as in production; their logs go to var/log/. Ctrl-C stops them all.

The demo firm is the sandbox's (sandbox/seed.py): the sandbox starts first and is seeded through
its control API, Concord is configured for it (integrations/management/demo.py: connections,
mappings, legal entities, routes, webhooks), then web, worker and beat start and the first polls
are sent at once rather than at beat's first interval: every business record in Concord arrives
by sync. Once those first polls are in, the firm's people do what the seed left for later (a few
deals close in the CRM): their webhooks start the workflows as a real firm's would.
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

import httpx
from axes.utils import reset as axes_reset
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from integrations.management.demo import (
    DemoDay,
    DemoFirm,
    SeededFirm,
    demo_firm_setup,
    demo_sandbox_seed,
    demo_users_reset,
)

# The sandbox answers its health check within a second or two of start (it is seeded after).
SANDBOX_TIMEOUT_S = 30
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


def worker_command(name: str, queues: list[str], concurrency: int) -> list[str]:
    """One Celery worker pool: its processes take tasks from these queues only."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--queues",
        ",".join(queues),
    ]


def worker_commands(prefix: str = "") -> dict[str, list[str]]:
    """The worker pools of settings.CONCORD_WORKER_POOLS (inbound processing apart from the
    rest, so a delivery never waits behind a dispatch task), by name: `make run` starts these,
    and the benchmarks start them the same way."""
    return {
        name: worker_command(f"{prefix}{name}", queues, concurrency)
        for name, (queues, concurrency) in settings.CONCORD_WORKER_POOLS.items()
    }


def demo_logins_reset() -> dict[str, str]:
    """Fresh passwords for the demo users, and any sign-in lock on them lifted: the printed
    logins must work at once, even after failed tries against an earlier run's passwords."""
    passwords = demo_users_reset()
    for username in passwords:
        axes_reset(username=username)
    return passwords


class Command(BaseCommand):
    help = "Run web, worker, beat and the sandbox with the demo firm until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--sandbox-port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8100"))
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port, sandbox_port = options["port"], options["sandbox_port"]
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)

        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.stdout.write(
            f"Database: {database}; broker: {settings.CELERY_BROKER_URL.split('://')[0]}"
        )
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)

        python = sys.executable
        # The sandbox first: Concord's demo configuration reads its credentials and subscribes
        # to its webhooks. It starts empty and is seeded through its control API, whose answer
        # says what the firm's people do later.
        sandbox_command = [
            python,
            "-m",
            "sandbox",
            "--port",
            str(sandbox_port),
            "--seed",
            "none",
        ]
        commands: dict[str, list[str]] = {
            "web": web_command(port),
            **worker_commands(),
            "beat": [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"],
        }

        processes: dict[str, subprocess.Popen[bytes]] = {}
        logs: list[IO[bytes]] = []
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        def start(name: str, command: list[str]) -> None:
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

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            start("sandbox", sandbox_command)
            self._wait_for_sandbox(sandbox_url, processes["sandbox"])
            seeded = demo_sandbox_seed(sandbox_url=sandbox_url)
            firm = demo_firm_setup(sandbox_url=sandbox_url, portal_url=f"http://127.0.0.1:{port}")
            passwords = demo_logins_reset()
            for name, command in commands.items():
                start(name, command)
            self._wait_until_healthy(port, processes)
            self._print_banner(port, sandbox_port, seeded, firm, passwords, log_dir, processes)
            # The first polls now (not at beat's first interval), then the firm's people.
            later = DemoDay(sandbox_url=sandbox_url, firm=firm, changes=seeded.later)
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        log_path = log_dir / f"{name}.log"
                        self.stderr.write(f"{name} exited ({process.returncode}); see {log_path}")
                        stopping = True
                played = later.step()
                if played:
                    self.stdout.write(played)
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

    def _wait_for_sandbox(self, url: str, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + SANDBOX_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit("sandbox failed to start; see var/log/sandbox.log")
            try:
                if httpx.get(f"{url}/_control/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the sandbox did not answer within {SANDBOX_TIMEOUT_S} s")

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
        seeded: SeededFirm,
        firm: DemoFirm,
        passwords: dict[str, str],
        log_dir: Path,
        processes: dict[str, subprocess.Popen[bytes]],
    ) -> None:
        counts = seeded.counts
        lines: list[str | None] = [
            "",
            f"Concord is running: http://127.0.0.1:{port}   (health: /healthz, API: /api/v1/docs/)",
            f"Processes: {', '.join(processes)}; logs in {log_dir}/",
            f"Vendor sandbox: http://127.0.0.1:{sandbox_port} (see sandbox/README.md)",
            f"Demo firm (in the sandbox): {counts.get('customers', 0)} customers, "
            f"{counts.get('harvest.projects', 0)} projects, "
            f"{counts.get('harvest.time_entries', 0)} time entries; "
            f"{len(firm.connections)} connections, {firm.webhooks} webhook subscriptions. "
            "Concord reads them by sync: the first polls are on their way.",
            None
            if firm.fresh
            else "This database holds an earlier run of the demo firm, and the sandbox starts "
            "afresh on every start: `make clean` (or a new database) shows the firm from its "
            "beginning.",
            "Demo logins (new passwords on every start):",
            *[f"  {user:<18} {password}" for user, password in passwords.items()],
            "Press Ctrl-C to stop everything.",
            "",
        ]
        self.stdout.write("\n".join(line for line in lines if line is not None))
