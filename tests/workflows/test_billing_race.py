"""Two billing runs at once over the same waiting time (integrations/workflows/time_to_erp.py
_bill_chunk): each entry is billed by one of them, once, and neither run fails.

The locking statement of a chunk sees the table as it was when it began: an entry the other run
billed and committed meanwhile (its lock released by then) still looked unbilled, and the second
run's billing event broke the one-to-one, rolling its whole chunk back with an error."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from integrations.models import ApprovalState, BillingEvent, Resource, TimeEntry
from integrations.workflows.time_to_erp import billing_run
from tests.factories import make_connection
from tests.firms import BILLING_MONTH, tm_project_firm

ENTRIES = 2000


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_bill_each_time_entry_once() -> None:
    """Runs of 50 entries in two threads (two database connections) share 2,000 waiting
    entries: no run errors, every entry is on one billing event, every event on an invoice."""
    project = tm_project_firm(
        make_connection(),
        customer={"name": "Initech Ltd", "tax_number": "GB123456789"},
        contract_number="C-INI-1",
        project={"code": "P-INI", "name": "Apollo"},
        days=(),
        hours="7.50",
    )
    worker = Resource.objects.get(name="Ada Byron")
    TimeEntry.objects.bulk_create(
        TimeEntry(
            resource=worker,
            project=project,
            date=BILLING_MONTH + timedelta(days=n % 28),
            hours=Decimal("0.25") * (1 + n % 16),
            approval_state=ApprovalState.APPROVED,
        )
        for n in range(ENTRIES)
    )
    start = threading.Barrier(2)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            # Small runs until one finds nothing waiting: the two interleave chunk by chunk.
            while (report := billing_run(limit=50)).considered:
                reports.append(report)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    assert sum(r.billed for r in reports) == ENTRIES
    billed = Counter(
        BillingEvent.objects.filter(source="time").values_list("time_entry_id", flat=True)
    )
    assert len(billed) == ENTRIES
    assert set(billed.values()) == {1}
    assert not BillingEvent.objects.filter(invoice__isnull=True).exists()
    assert not TimeEntry.objects.unbilled().exists()
