"""The benchmarks' CPU meter (tests/benchmarks/cpu.py): a process's CPU, its children's
included, goes to its name; the database's work goes to the server, not to the caller."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from django.db import connection as db

from tests.benchmarks.cpu import CpuMeter, window
from tests.processes import Proc, process_env

# One parent that burns about 0.6 s of CPU in a child it waits for (reaped: counted through
# the parent's cutime), then 0.4 s itself, then sleeps until killed.
BURN = """
import os, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
pid = os.fork()
if pid == 0:
    burn(0.6)
    os._exit(0)
os.waitpid(pid, 0)
burn(0.4)
print("burnt", flush=True)
time.sleep(60)
"""


@pytest.mark.django_db
def test_a_process_and_its_reaped_child_are_counted_and_the_database_apart(
    tmp_path: Path,
) -> None:
    proc = Proc([sys.executable, "-c", BURN], process_env(), tmp_path / "burn.log")
    meter = CpuMeter({"burner": proc})
    before = meter.read()
    proc.start()
    try:
        start = time.monotonic()
        while "burnt" not in proc.output() and time.monotonic() - start < 30:
            time.sleep(0.05)
        with db.cursor() as cursor:
            # About 0.3 s of the server's CPU, none of it this process's.
            cursor.execute("SELECT count(*) FROM generate_series(1, 3000000)")
        after = meter.read()
    finally:
        proc.stop()

    spent = window(before, after)
    assert 0.9 <= spent["burner"] <= 1.6, spent
    assert spent["postgres"] >= 0.1, spent
    assert spent["client"] < spent["burner"], spent
