"""The limits of a ``Connection`` row, with the breaker's changes mirrored into its
``ConnectionHealth`` row for the pages. Kept apart from limits.py, which has no Django in it:
the limiter's cross-process tests run it in plain Python processes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings as django_settings

from integrations.connectors.limits import CircuitChange, HealthSink, Limits, LimitSettings
from integrations.models import VENDOR_RATE_WINDOW_S, ConnectionHealth


def health_mirror(connection_id: int) -> HealthSink:
    """A sink that writes breaker changes into the connection's ``ConnectionHealth`` row."""

    def write(change: CircuitChange, event: str, error: str | None) -> None:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "circuit_state": change.state,
            "consecutive_failures": change.failures,
            "opened_at": (
                datetime.fromtimestamp(change.opened_at, UTC)
                if change.opened_at and change.state != "closed"
                else None
            ),
        }
        if event == "success":
            values["last_success_at"] = now
        elif event == "failure":
            values["last_failure_at"] = now
            values["last_error"] = (error or "")[:2000]
        ConnectionHealth.objects.update_or_create(connection_id=connection_id, defaults=values)

    return write


def limits_for(connection: Any, **overrides: Any) -> Limits:
    """The limits of a ``Connection`` (overrides: any ``LimitSettings`` field, or ``store``).

    The breaker's threshold and cool-down can be tuned per deployment with the optional
    settings ``CONCORD_CIRCUIT_FAILURES`` and ``CONCORD_CIRCUIT_COOLDOWN_S``."""
    store = overrides.pop("store", None)
    overrides.setdefault(
        "failure_threshold", int(getattr(django_settings, "CONCORD_CIRCUIT_FAILURES", 5))
    )
    overrides.setdefault(
        "cooldown_s", float(getattr(django_settings, "CONCORD_CIRCUIT_COOLDOWN_S", 30.0))
    )
    # The vendor's own window (Harvest counts 15 s), the connection's rate applied pro rata; a
    # caller that sets the window (a test compressing time) gives the rate for it as it is.
    rate = int(connection.rate_limit_per_minute)
    if "window_s" not in overrides:
        overrides["window_s"] = VENDOR_RATE_WINDOW_S.get(str(connection.vendor), 60.0)
        rate = max(1, int(rate * overrides["window_s"] / 60))
    settings = LimitSettings(
        rate_per_minute=rate,
        max_concurrency=int(connection.max_concurrency),
        **overrides,
    )
    return Limits(connection.pk, settings, store=store, on_change=health_mirror(connection.pk))
