"""The sync engine's embedded-default paths (SQLite, no Redis), which only `make run` used to
exercise: billing to the Xero sandbox, a Harvest poll and a signed webhook, run in a process of
their own on a fresh SQLite database and checked against what the sandbox received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, running, sandbox_proc, wait_for_sandbox

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NEW_TENANT = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02"


def test_billing_polling_and_webhooks_on_sqlite(tmp_path: Path) -> None:
    port = free_port()
    with running(sandbox_proc(port, tmp_path / "sandbox.log")):
        url = f"http://127.0.0.1:{port}"
        wait_for_sandbox(url)
        control = httpx.Client(base_url=f"{url}/_control", timeout=30)
        control.post("/limits", json={"system": "*", "enabled": False})
        seeded = control.post("/seed", json={"scale": 1, "seed": 7}).json()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
        }
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            CONCORD_VAR_DIR=str(tmp_path / "var"),
            DJANGO_SECRET_KEY="embedded-" + "x" * 50,
            CONCORD_FERNET_KEYS="Qe5sJm7XK0y2pTq3wq6q3ZBZ3Q1fFq0m8cQbq8yR3Vw=",
            DJANGO_SECURE_SSL_REDIRECT="0",
            CONCORD_LOG_LEVEL="WARNING",
        )
        done = subprocess.run(
            [sys.executable, "-m", "tests.e2e.embedded_flow", url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        invoices = control.get("/records/xero/Invoices", params={"tenant": NEW_TENANT}).json()[
            "records"
        ]
        harvest_entries = control.get(
            "/records/harvest/time_entries", params={"limit": 100_000}
        ).json()["records"]

    assert result["database"] == "sqlite"
    # 12 projects x 5 entries billed into 12 drafts, each in Xero once, every line once.
    assert (result["billed"], result["invoices"]) == (60, 12)
    assert result["outbox"] == {"done": 12, "parked": 0}
    assert result["invoiced_events"] == 60
    ours = [
        r["data"] for r in invoices if str(r["data"].get("Reference", "")).startswith("CONCORD-")
    ]
    assert len(ours) == 12
    lines = [line["Description"].split()[0] for i in ours for line in i["LineItems"]]
    assert len(lines) == len(set(lines)) == 60
    # The whole Harvest firm polled into SQLite, every time entry stored.
    assert (
        result["polled_time_entries"]
        == len(harvest_entries)
        == seeded["counts"]["harvest.time_entries"]
    )
    assert result["poll_failed"] == 0, result["poll_errors"]
    assert result["time_entries_from_psa"] == len(harvest_entries)
    # The webhook: stored once (its repeat a duplicate), then applied by the batch.
    assert result["webhook"] == [1, 1]
    assert result["webhook_state"] == "applied"
    assert result["notes_after_webhook"] == "Changed after the poll"
