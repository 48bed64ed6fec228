"""Beat's ``poll-all`` kick-off: a polling task for each enabled connection that has no polling
schedule of its own.

Each connection normally has its own periodic task, ``poll connection <id>``, on its own interval
(integrations/services/schedules.py); beat runs those directly. ``poll-all`` (config/celery.py)
remains for connections without one (made before those rows existed, or by code that writes
``Connection`` rows directly), so none is left unpolled and none is polled by both: a connection
with a row of its own, running or paused, is left to it.
"""

from __future__ import annotations

from integrations.models import Connection
from integrations.services.schedules import POLL_INTERVAL_S, connections_with_own_schedule
from integrations.sync.ring import ring_poll


def polling_kick_off_unscheduled() -> int:
    """Ring one polling task per enabled connection without a schedule of its own; each expires
    before the next kick-off (a lagging worker runs the newest, not a pile). Returns how many."""
    own = connections_with_own_schedule()
    ids = list(
        Connection.objects.filter(enabled=True).exclude(pk__in=own).values_list("pk", flat=True)
    )
    ring_poll(ids, expires=POLL_INTERVAL_S)
    return len(ids)
