"""Celery beat's scheduler: django-celery-beat's database scheduler that also reports its tick,
keeps what people set, and honours the code's expiries.

/healthz needs to know beat is alive even when no periodic task is due, so every tick (at most
CELERY_BEAT_MAX_LOOP_INTERVAL seconds apart) records a heartbeat, throttled to one write per
interval.

The code's schedule (config/celery.py) is written to the PeriodicTask rows each time beat starts.
django-celery-beat would put the code's interval back over one an integration admin set on the
schedules page (/config/schedules/); here a row whose interval a person changed (audited) keeps
it, and the code still sets its task, arguments and options. Its ``expires`` option is stored
as the row's ``expire_seconds``: django-celery-beat reads only that, and dropped the code's
expiries, so a lagging worker got every missed tick instead of the latest (a person's interval
brings its own expiry). Beat writes each task's last run to its row as it sends it (one small
write per task sent) rather than every 3 minutes, so the schedules page shows the real last and
next runs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    _last_heartbeat = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("sync_every_tasks", 1)
        super().__init__(*args, **kwargs)

    def update_from_dict(self, mapping: Mapping[str, Any]) -> None:
        super().update_from_dict(beat_entries(mapping))

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        now = time.monotonic()
        if now - self._last_heartbeat >= settings.CONCORD_HEARTBEAT_INTERVAL_S / 2:
            from integrations.services.health import heartbeat_record

            heartbeat_record(component="beat", hostname=socket.gethostname())
            self._last_heartbeat = now
        return interval


def beat_entries(mapping: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The code's schedule as it is written to the rows: a row whose interval a person changed
    keeps it (and an expiry to match), and an ``expires`` option becomes ``expire_seconds``."""
    from integrations.services.schedules import schedule_intervals_set_by_people

    kept = schedule_intervals_set_by_people(mapping)
    entries = {}
    for name, given in mapping.items():
        entry = dict(given)
        options = dict(entry.get("options") or {})
        if name in kept:
            entry["schedule"] = kept[name]
            if "expires" in options:
                options["expires"] = kept[name]
        if isinstance(options.get("expires"), int | float):
            options.setdefault("expire_seconds", int(options.pop("expires")))
        entry["options"] = options
        entries[name] = entry
    return entries
