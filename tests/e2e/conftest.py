"""Real headless Chromium (Debian's package, driven by Playwright; never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

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
