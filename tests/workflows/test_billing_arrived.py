"""Billing time as it arrives (integrations/workflows/time_to_erp.py ``billing_arrived``):
while a poll still reads, runs bill only whole chunks from where the last one stopped, so the
invoices are the ones one run after the poll makes; the poll being done bills the rest.

Chunks of 40 entries here (setting CONCORD_BILLING_CHUNK), over three contracts whose time
arrives interleaved, with expenses waiting on two of them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.flags import flag_clear, flag_set
from integrations.models import (
    ApprovalState,
    BillingEvent,
    Contract,
    Expense,
    Invoice,
    OutboxMessage,
    Project,
    Resource,
    TimeEntry,
)
from integrations.sync.outbox import outbox_flushed_at
from integrations.workflows.time_to_erp import (
    ARRIVED,
    ARRIVED_REST,
    ARRIVED_THROUGH,
    billing_arrived,
    billing_run,
)
from tests.factories import make_connection
from tests.firms import BILLING_MONTH, tm_project_firm

pytestmark = pytest.mark.django_db

CHUNK = 40


@pytest.fixture(autouse=True)
def small_chunks(settings: Any) -> Iterator[None]:
    settings.CONCORD_BILLING_CHUNK = CHUNK
    for key in (ARRIVED_THROUGH,):
        cache.delete(key)
    for name in (f"{ARRIVED}:hold", f"{ARRIVED}:wanted", ARRIVED_REST):
        flag_clear(name)
    yield
    cache.delete(ARRIVED_THROUGH)


@pytest.fixture
def projects() -> list[Project]:
    first = tm_project_firm(
        make_connection(),
        customer={"name": "Initech Ltd", "tax_number": "GB123456789"},
        contract_number="C-ARR-1",
        project={"code": "P-ARR-1", "name": "Arrivals one"},
        days=(),
        hours="7.50",
    )
    made = [first]
    for n in (2, 3):
        contract = Contract.objects.create(
            number=f"C-ARR-{n}",
            customer=first.customer,
            legal_entity=first.legal_entity,
            billing_model="tm",
            currency="GBP",
            status="active",
        )
        made.append(
            Project.objects.create(
                code=f"P-ARR-{n}",
                name=f"Arrivals {n}",
                customer=first.customer,
                contract=contract,
                legal_entity=first.legal_entity,
                region="emea",
                currency="GBP",
                status="active",
            )
        )
    worker = Resource.objects.get(name="Ada Byron")
    Expense.objects.bulk_create(
        Expense(
            resource=worker,
            project=project,
            date=BILLING_MONTH + timedelta(days=d),
            category="Travel",
            amount=Decimal("12.50") + d,
            currency="GBP",
            approval_state=ApprovalState.APPROVED,
        )
        for project in made[:2]
        for d in range(3)
    )
    return made


def _arrive(projects: list[Project], count: int) -> None:
    """A page of `count` approved entries, round the three projects."""
    worker = Resource.objects.get(name="Ada Byron")
    TimeEntry.objects.bulk_create(
        TimeEntry(
            resource=worker,
            project=projects[n % len(projects)],
            date=BILLING_MONTH + timedelta(days=n % 28),
            hours=Decimal("0.25") * (1 + n % 16),
            approval_state=ApprovalState.APPROVED,
        )
        for n in range(count)
    )


def _invoices() -> set[frozenset[str]]:
    """Each invoice as the set of what its lines bill (entries and expenses by id)."""
    lines: dict[int, set[str]] = {}
    for invoice_id, entry, expense in BillingEvent.objects.values_list(
        "invoice_id", "time_entry_id", "expense_id"
    ):
        lines.setdefault(invoice_id, set()).add(f"time {entry}" if entry else f"expense {expense}")
    return {frozenset(held) for held in lines.values()}


def _unbill() -> None:
    OutboxMessage.objects.all().delete()
    BillingEvent.objects.all().delete()
    Invoice.objects.all().delete()


def test_while_the_poll_reads_only_whole_chunks_are_billed(
    projects: list[Project], django_capture_on_commit_callbacks: Any
) -> None:
    _arrive(projects, 100)  # two whole chunks and 20 entries

    flushed = outbox_flushed_at()
    with django_capture_on_commit_callbacks(execute=True):
        report = billing_arrived(complete=False)

    assert report is not None
    assert report.billed == 2 * CHUNK
    assert outbox_flushed_at() == flushed  # more chunks are coming: no word that it is done
    assert BillingEvent.objects.filter(time_entry__isnull=False).count() == 2 * CHUNK
    # The expenses of the chunks' contracts went on their invoices.
    assert not Expense.objects.unbilled().exists()
    assert TimeEntry.objects.unbilled().count() == 20
    # Nothing new: nothing billed, and the 20 still wait.
    assert billing_arrived(complete=False).billed == 0  # type: ignore[union-attr]
    assert TimeEntry.objects.unbilled().count() == 20


def test_a_chunk_not_yet_whole_is_neither_read_nor_locked(projects: list[Project]) -> None:
    """A run rung after every page finds the next chunk not whole most times: it asks by one
    probe, without reading its entries or taking their locks (that work was thrown away)."""
    _arrive(projects, CHUNK - 1)

    with CaptureQueriesContext(connection) as seen:
        report = billing_arrived(complete=False)

    assert report is not None
    assert report.billed == 0
    entry_reads = [q["sql"] for q in seen.captured_queries if "integrations_timeentry" in q["sql"]]
    assert len(entry_reads) == 1, entry_reads
    assert "FOR UPDATE" not in entry_reads[0]
    assert f"OFFSET {CHUNK - 1}" in entry_reads[0]

    _arrive(projects, 1)  # now whole
    assert billing_arrived(complete=False).billed == CHUNK  # type: ignore[union-attr]


def test_billed_as_it_arrives_the_invoices_are_those_of_one_run_after_the_poll(
    projects: list[Project], django_capture_on_commit_callbacks: Any
) -> None:
    _arrive(projects, 100)
    billing_arrived(complete=False)
    _arrive(projects, 70)  # with the 20 left: two whole chunks, 10 over
    billing_arrived(complete=False)
    assert TimeEntry.objects.unbilled().count() == 10

    flushed = outbox_flushed_at()
    with django_capture_on_commit_callbacks(execute=True):
        report = billing_arrived(complete=True)  # the poll is done: the rest

    assert report is not None
    assert report.billed == 10
    # Its invoices are the last for now: they need not linger for more (dispatch).
    assert outbox_flushed_at() > flushed
    assert not TimeEntry.objects.unbilled().exists()
    as_they_arrived = _invoices()

    _unbill()
    billing_run()

    assert _invoices() == as_they_arrived
    assert len(as_they_arrived) == 5 * 3  # five chunks, three contracts each


def test_the_rest_asked_for_while_another_run_works_is_billed_by_the_next(
    projects: list[Project],
) -> None:
    """A poll done while a run holds the work: its request is kept, and the next run (the one
    the holder rings as it ends) bills the rest too."""
    _arrive(projects, 30)
    assert flag_set(f"{ARRIVED}:hold", 30)

    assert billing_arrived(complete=True) is None  # turned away

    flag_clear(f"{ARRIVED}:hold")
    report = billing_arrived(complete=False)
    assert report is not None
    assert report.billed == 30
    assert not TimeEntry.objects.unbilled().exists()


def test_a_lost_cursor_costs_a_reread_not_an_entry(projects: list[Project]) -> None:
    _arrive(projects, 90)
    billing_arrived(complete=False)
    cache.delete(ARRIVED_THROUGH)
    _arrive(projects, 40)

    billing_arrived(complete=True)

    assert not TimeEntry.objects.unbilled().exists()
    assert BillingEvent.objects.filter(time_entry__isnull=False).count() == 130


@pytest.mark.parametrize("mark", ["past", "reused", "bare"])
def test_a_mark_the_cache_kept_from_another_database_is_dropped(
    projects: list[Project], mark: str
) -> None:
    """The database restored, emptied or made anew while the cache kept the last run's mark:
    the time that arrives below it is billed as it arrives, not left for the scheduled run.
    ``past``: the mark lies past every entry. ``reused``: the new database's ids reach the mark
    again, and the entry under its id was created at another time (a test database made anew
    under the same cache; `make run` after a reset). ``bare``: an id alone, as the mark was kept
    before it named its entry."""
    _arrive(projects, 90)
    last = TimeEntry.objects.order_by("-pk").values_list("pk", "created_at")[0]
    kept = {
        "past": f"{10**9}@{last[1].isoformat()}",
        "reused": f"{last[0]}@{(last[1] - timedelta(days=1)).isoformat()}",
        "bare": last[0],
    }[mark]
    cache.set(ARRIVED_THROUGH, kept, timeout=None)

    report = billing_arrived(complete=False)

    assert report is not None
    assert report.billed == 2 * CHUNK  # the whole chunks; the rest waits for the poll's end
    assert TimeEntry.objects.unbilled().count() == 90 - 2 * CHUNK
    assert cache.get(ARRIVED_THROUGH) != kept


def test_the_mark_of_this_database_is_gone_on_from(projects: list[Project]) -> None:
    """The mark a run leaves names its entry as stored: the next run goes on from it, and
    entries below it (here the first chunk's, its invoices voided meanwhile) are the scheduled
    run's."""
    _arrive(projects, 90)
    billing_arrived(complete=False)
    below = list(TimeEntry.objects.order_by("pk").values_list("pk", flat=True)[:CHUNK])
    BillingEvent.objects.filter(time_entry_id__in=below).delete()
    _arrive(projects, 40)

    report = billing_arrived(complete=False)

    assert report is not None
    assert report.billed == CHUNK  # the 10 left from the first page and 30 new
    assert set(TimeEntry.objects.unbilled().values_list("pk", flat=True)) >= set(below)
