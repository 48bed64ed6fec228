"""Real headless Chromium (Debian's package, driven by Playwright; never a downloaded browser),
the vendor sandbox as a process, and Concord's own processes (web, worker, beat)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from integrations.models import Connection, RunState, WorkflowRun
from tests.processes import (
    Proc,
    beat_proc,
    free_port,
    gunicorn_proc,
    process_env,
    running,
    sandbox_proc,
    wait_for_http,
    wait_for_sandbox,
    wait_until,
    worker_proc,
)

CHROMIUM = os.environ.get("CONCORD_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses, slowly.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Playwright's sync API runs an event loop in the test's thread; Django's ORM, used by the same
# test to set up data, refuses to run beside one unless told the loop is not ours.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium package."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


SCREENSHOTS = Path(
    os.environ.get("CONCORD_SCREENSHOTS", Path(__file__).parents[2] / "var" / "screenshots")
)


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """`shots(page, "fixed")` saves a full-page screenshot as
    var/screenshots/<test module>/<test name>/<NN>-fixed.png (kept after the run, so anyone can
    look at what the test saw; CONCORD_SCREENSHOTS moves the folder) and returns its path."""
    folder = SCREENSHOTS / request.node.module.__name__.rsplit(".", 1)[-1] / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    taken: list[Path] = []

    def shoot(page: Page, name: str) -> Path:
        path = folder / f"{len(taken) + 1:02d}-{name}.png"
        # caret="initial": Playwright's default hides the caret by setting style="" on every
        # input, which htmx's history snapshot would keep and the CSP then reports on Back.
        page.screenshot(path=path, full_page=True, caret="initial")
        taken.append(path)
        return path

    return shoot


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    """The vendor sandbox as a process of its own, empty (no seed): its base URL."""
    port = free_port()
    proc = sandbox_proc(port, tmp_path / "sandbox.log")
    with running(proc):
        url = f"http://127.0.0.1:{port}"
        wait_for_sandbox(url)
        yield url


class Concord:
    """Concord's processes as `make run` starts them, against the test's database: the web
    process (gunicorn: one worker, four threads) unless left out, a Celery worker (two
    processes) and beat. Outbox leases of 20 s: a row a killed worker held is taken again
    within the test's waits."""

    def __init__(self, tmp_path: Path, *, web: bool = True) -> None:
        env = process_env(CONCORD_OUTBOX_LEASE_S="20")
        self.web_port = free_port() if web else 0
        self.web = (
            gunicorn_proc(self.web_port, env, tmp_path / "web.log", workers=1, threads=4)
            if web
            else None
        )
        self.worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
        self.beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")

    @contextmanager
    def running(self) -> Iterator[Concord]:
        procs = [p for p in (self.web, self.worker, self.beat) if p is not None]
        with running(*procs):
            if self.web is not None:
                wait_for_http(f"http://127.0.0.1:{self.web_port}/healthz")
            yield self

    def subscribe(self, sandbox: str, *, system: str, connection: Connection, secret: str) -> None:
        """Have the sandbox's `system` send its signed webhooks to the connection's receiver."""
        subscribed = httpx.post(
            f"{sandbox}/_control/webhooks",
            json={
                "system": system,
                "url": f"http://127.0.0.1:{self.web_port}/webhooks/{connection.pk}/",
                "secret": secret,
            },
            timeout=10,
        )
        assert subscribed.status_code == 201, subscribed.text

    def wait_for_run(self, process: str, what: str, timeout: float = 120) -> WorkflowRun:
        """The latest run of `process`, once it is done; the test fails (with where the run
        stands and the processes' logs) if it is not within `timeout` seconds."""
        runs = WorkflowRun.objects.filter(process=process).order_by("-pk")

        def done() -> bool:
            run = runs.first()
            return run is not None and run.state == RunState.DONE

        try:
            wait_until(done, timeout=timeout, what=what, interval=0.5)
        except AssertionError:
            run = runs.first()
            where = list(run.steps.values_list("name", "state", "detail")) if run else None
            pytest.fail(f"{what}: not done: {where}\n{self.logs()}")
        return runs[0]

    def logs(self) -> str:
        """The worker's and the web process's last lines, for a failure's message."""
        procs: list[Proc] = [self.worker, *([self.web] if self.web is not None else [])]
        return "\n".join(p.output() for p in procs)


@pytest.fixture
def concord(tmp_path: Path) -> Callable[..., Concord]:
    """`with concord().running() as processes:` (or `concord(web=False)`, no web process)."""

    def make(*, web: bool = True) -> Concord:
        return Concord(tmp_path, web=web)

    return make
