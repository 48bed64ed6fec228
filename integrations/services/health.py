from __future__ import annotations

from django.utils import timezone

from integrations.models import Heartbeat


def heartbeat_record(*, component: str, hostname: str) -> None:
    """Note that `component` on `hostname` is alive now."""
    Heartbeat.objects.update_or_create(
        component=component, hostname=hostname, defaults={"seen_at": timezone.now()}
    )
