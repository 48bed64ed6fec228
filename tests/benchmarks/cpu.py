"""CPU time by process over a bench's window, read from /proc (Linux): where a figure's work
runs when the machine, not waiting, is what limits it.

A ``CpuMeter`` is given the bench's processes (each ``Proc`` starts a session of its own, so a
Celery pool's children and a gunicorn's workers are found by their session) and, when the
bench database is PostgreSQL on this machine, its server (the postmaster and every backend).
``read()`` gives each one's CPU seconds so far: user plus system time of the live processes,
plus what the session's leader (or the postmaster) has reaped of its exited children. The
bench's own process is there too (``client``: the load it sends). Two reads make a window.
The server's every backend counts, whatever database it serves: like every figure, this
expects the machine to itself.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from pathlib import Path

from django.db import connection as db

from tests.processes import Proc

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name (field 3 is [0])."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _own(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _reaped(fields: list[str]) -> float:
    return (int(fields[13]) + int(fields[14])) / TICKS  # cutime, cstime


class CpuMeter:
    def __init__(self, procs: Mapping[str, Proc]) -> None:
        self.procs = procs
        self.postmaster = _postmaster()

    def read(self) -> dict[str, float]:
        sessions: dict[int, str] = {}
        totals: dict[str, float] = {name: 0.0 for name in self.procs}
        for name, proc in self.procs.items():
            if proc.popen is not None:
                sessions[proc.popen.pid] = name
                leader = _stat(proc.popen.pid)
                if leader is not None:
                    totals[name] += _reaped(leader)
        if self.postmaster is not None:
            totals["postgres"] = 0.0
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            fields = _stat(int(entry.name))
            if fields is None:
                continue
            session, parent = int(fields[3]), int(fields[1])
            if session in sessions:
                totals[sessions[session]] += _own(fields)
            elif self.postmaster is not None and self.postmaster in (int(entry.name), parent):
                totals["postgres"] += _own(fields)
                if int(entry.name) == self.postmaster:
                    totals["postgres"] += _reaped(fields)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        totals["client"] = usage.ru_utime + usage.ru_stime
        return totals


def window(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}


def _postmaster() -> int | None:
    """The PostgreSQL server's main process, when it runs on this machine and /proc shows it."""
    if db.vendor != "postgresql" or not PROC.is_dir():
        return None
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = int(cursor.fetchone()[0])
    fields = _stat(backend)
    return int(fields[1]) if fields is not None else None
