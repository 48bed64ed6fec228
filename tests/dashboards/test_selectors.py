"""The integration-admin overview counts per connection without multiplying rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from dashboards.selectors import connections_overview
from integrations.models import Connection, ConnectionHealth, CrossReference, SyncAttempt
from tests.factories import CustomerFactory, make_connection

pytestmark = pytest.mark.django_db


def _attempt(connection: Connection, *, minutes_ago: int, outcome: str, status: int) -> None:
    SyncAttempt.objects.create(
        connection=connection,
        operation="put_invoices",
        started_at=timezone.now() - timedelta(minutes=minutes_ago),
        latency_ms=12,
        status_code=status,
        outcome=outcome,
    )


def _xrefs(connection: Connection, count: int) -> None:
    content_type = ContentType.objects.get_for_model(CustomerFactory._meta.model)
    for index in range(count):
        CrossReference.objects.create(
            content_type=content_type,
            object_id=CustomerFactory.create().pk,
            connection=connection,
            external_id=f"{connection.pk}-{index}",
        )


def test_counts_are_per_connection_and_only_for_the_last_hour(
    django_assert_num_queries,
) -> None:
    xero = make_connection()
    harvest = make_connection(
        name="Harvest", role="psa", vendor="harvest", base_url="http://127.0.0.1:1/"
    )
    _xrefs(xero, 3)
    _xrefs(harvest, 2)
    for outcome, status in [("success", 200), ("success", 200), ("transient", 429)]:
        _attempt(xero, minutes_ago=5, outcome=outcome, status=status)
    _attempt(xero, minutes_ago=120, outcome="permanent", status=400)  # older than an hour
    _attempt(xero, minutes_ago=90, outcome="transient", status=429)  # older than an hour
    _attempt(harvest, minutes_ago=1, outcome="business", status=422)

    ConnectionHealth.objects.create(connection=xero, circuit_state="open")

    with django_assert_num_queries(2):
        rows = {c.name: c for c in connections_overview()}
        # The circuit state comes along in the same query; the poll cursors in one more.
        assert rows["Xero (new)"].health.circuit_state == "open"
        assert rows["Xero (new)"].poll.state == "not polled"  # type: ignore[attr-defined]

    counts = {
        name: (c.xref_count, c.calls_ok, c.calls_failed, c.calls_throttled)  # type: ignore[attr-defined]
        for name, c in rows.items()
    }
    # Cross-references do not multiply the call counts, nor calls the cross-reference count.
    assert counts == {"Xero (new)": (3, 2, 1, 1), "Harvest": (2, 0, 1, 0)}


def test_a_connection_with_nothing_counts_zero() -> None:
    make_connection()
    (row,) = connections_overview()
    assert (row.xref_count, row.calls_ok, row.calls_failed, row.calls_throttled) == (0, 0, 0, 0)  # type: ignore[attr-defined]
