"""A connection's rate limit is the vendor's, over the vendor's window: Harvest counts 100
requests per 15 seconds, so a connection allowed 400 a minute is admitted 100 per 15 s (never a
burst of 400 that Harvest would refuse), and a new connection given no rate takes the vendor's
published one instead of a flat 60 a minute (which held a Harvest poll 45 s on Concord's own
limiter)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from integrations.connectors.connection_limits import limits_for
from integrations.models import Connection
from integrations.services.connections import connection_create

pytestmark = pytest.mark.django_db

_names = itertools.count(1)


def _create(vendor: str, role: str, **fields: int) -> Connection:
    given: dict[str, Any] = {"name": f"{vendor} test {next(_names)}", **fields}
    return connection_create(
        role=role, vendor=vendor, base_url=f"https://api.{vendor}.example/v1", **given
    )


def test_a_new_connection_takes_its_vendors_published_rate() -> None:
    assert _create("harvest", "psa").rate_limit_per_minute == 400
    assert _create("xero", "erp").rate_limit_per_minute == 60
    assert _create("harvest", "psa", rate_limit_per_minute=50).rate_limit_per_minute == 50


def test_harvest_is_limited_over_its_15_second_window_pro_rata() -> None:
    harvest = limits_for(_create("harvest", "psa"))
    assert (harvest.settings.window_s, harvest.settings.rate_per_minute) == (15.0, 100)
    xero = limits_for(_create("xero", "erp", rate_limit_per_minute=60))
    assert (xero.settings.window_s, xero.settings.rate_per_minute) == (60.0, 60)
    slow = limits_for(_create("harvest", "psa", rate_limit_per_minute=2))
    assert slow.settings.rate_per_minute == 1  # never none at all
