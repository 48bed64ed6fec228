"""Celery beat's scheduler: django-celery-beat's database scheduler that also reports its tick.

/healthz needs to know beat is alive even when no periodic task is due, so every tick (at most
CELERY_BEAT_MAX_LOOP_INTERVAL seconds apart) records a heartbeat, throttled to one write per
interval.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    _last_heartbeat = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        now = time.monotonic()
        if now - self._last_heartbeat >= settings.CONCORD_HEARTBEAT_INTERVAL_S / 2:
            from integrations.services.health import heartbeat_record

            heartbeat_record(component="beat", hostname=socket.gethostname())
            self._last_heartbeat = now
        return interval
