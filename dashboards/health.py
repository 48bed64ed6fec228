"""Real probes of each part the portal needs: database, broker, worker, beat."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection
from django.utils import timezone

from integrations.models import Heartbeat


def _probe_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure to talk to the database is the finding
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _probe_broker() -> dict[str, Any]:
    app = current_app  # the project's Celery app (config/celery.py), set as current at start
    started = time.perf_counter()
    try:
        with app.connection_for_write() as conn:
            # One attempt, two seconds: a health probe must answer quickly, not wait for recovery.
            conn.ensure_connection(max_retries=1, timeout=2)
            transport = conn.transport_cls
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    return {
        "status": "ok",
        "transport": str(transport),
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _probe_heartbeat(component: str) -> dict[str, Any]:
    max_age = settings.CONCORD_HEARTBEAT_MAX_AGE_S
    try:
        beats = list(Heartbeat.objects.filter(component=component).order_by("-seen_at")[:10])
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    if not beats:
        return {"status": "down", "error": f"no {component} has ever reported"}
    now = timezone.now()
    alive = [b for b in beats if now - b.seen_at <= timedelta(seconds=max_age)]
    result: dict[str, Any] = {
        "status": "ok" if alive else "down",
        "last_seen": beats[0].seen_at.isoformat(),
        "age_s": round((now - beats[0].seen_at).total_seconds(), 1),
        "alive": [b.hostname for b in alive],
    }
    if not alive:
        result["error"] = f"last {component} heartbeat is older than {max_age} s"
    return result


def health_report() -> dict[str, Any]:
    checks = {
        "database": _probe_database(),
        "broker": _probe_broker(),
        "worker": _probe_heartbeat("worker"),
        "beat": _probe_heartbeat("beat"),
    }
    ok = all(check["status"] == "ok" for check in checks.values())
    return {"status": "ok" if ok else "degraded", "checks": checks}
