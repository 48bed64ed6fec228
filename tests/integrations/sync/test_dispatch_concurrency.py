"""The dispatcher uses what the vendor allows: a batch vendor's calls (Xero, 50 invoices a call)
go out on several lanes, never more at once than the connection's limit, also with two
dispatchers at once (the limiter's slots are shared); under faults every invoice lands once;
rows waiting out a backoff leave due rows free to go; a record's rows keep their order; and
recording a batch's outcomes costs the same queries for 5 rows as for 50."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.classification import ErrorClass
from integrations.connectors.http import VendorHTTP
from integrations.models import (
    Connection,
    Customer,
    LegalEntity,
    OutboxMessage,
    SyncAttempt,
    TimeEntry,
)
from integrations.sync import dispatch
from integrations.sync.dispatch import outbox_dispatch
from integrations.sync.outbox import outbox_record_outcomes
from integrations.sync.outcome import Outcome
from integrations.workflows.time_to_erp import billing_run
from tests.firms import approved_time_firm
from tests.integrations.conftest import NEW_TENANT, Sandbox

State = OutboxMessage.State


class InFlight:
    """Counts the vendor exchanges of one HTTP method in flight in this process (the network
    part of each call, which the limiter's concurrency slot covers) and the most at once."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def wrap(self, exchange: Callable[..., Any]) -> Callable[..., Any]:
        def counted(http: VendorHTTP, method: str, *args: Any) -> Any:
            if method != self.method:
                return exchange(http, method, *args)
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                return exchange(http, method, *args)
            finally:
                with self.lock:
                    self.now -= 1

        return counted


@pytest.fixture
def puts(monkeypatch: pytest.MonkeyPatch) -> InFlight:
    counter = InFlight("PUT")
    monkeypatch.setattr(VendorHTTP, "_exchange", counter.wrap(VendorHTTP._exchange))
    return counter


def _firm(sandbox: Sandbox, invoices: int, *, concurrent: int) -> Connection:
    """`invoices` one-line invoices to put to Xero, whose sandbox refuses (429 "concurrent")
    a call beyond `concurrent` in flight for the tenant, as Xero does beyond 5. Its minute
    limit is raised: this is about calls at once, not calls a minute."""
    sandbox.limits("xero", windows={"minute": {"limit": 100_000}}, concurrent=concurrent)
    erp = approved_time_firm(
        sandbox.url,
        projects=invoices,
        entries_per_project=1,
        rate_limit_per_minute=100_000,
        max_concurrency=concurrent,
    )
    report = billing_run()
    assert report.invoices == invoices
    return erp


def _dispatch_in_threads(erp: Connection, dispatchers: int, *, until: float) -> None:
    """`dispatchers` dispatch tasks at once, as two workers run them, until no row is open."""

    def run(name: str) -> None:
        try:
            while time.monotonic() < until and _open_rows():
                report = outbox_dispatch(connection_id=erp.pk, worker=name, time_budget_s=30)
                if not report.claimed:
                    time.sleep(0.1)  # rows waiting out a backoff, or the other's in flight
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(f"worker-{n}",)) for n in range(dispatchers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _open_rows() -> int:
    return OutboxMessage.objects.exclude(state__in=[State.DONE, State.SKIPPED]).count()


def _lines_per_entry(sandbox: Sandbox) -> Counter[int]:
    """How many times each time entry is on a line of an invoice in the sandbox's Xero."""
    counts: Counter[int] = Counter()
    for invoice in sandbox.records("xero", "Invoices", NEW_TENANT):
        for line in invoice["data"].get("LineItems", []):
            description = str(line.get("Description", ""))
            if description.startswith("TE-"):
                counts[int(description.split()[0][3:])] += 1
    return counts


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("dispatchers", [1, 2])
def test_a_batch_vendor_gets_calls_at_once_up_to_its_limit(
    sandbox: Sandbox, puts: InFlight, dispatchers: int
) -> None:
    # 8 batches of 50, each answered after 200 ms: one lane would send them one after another.
    erp = _firm(sandbox, 400, concurrent=3)
    sandbox.faults("xero", latency_ms=200)

    _dispatch_in_threads(erp, dispatchers, until=time.monotonic() + 60)

    assert not _open_rows()
    assert set(OutboxMessage.objects.values_list("state", flat=True)) == {State.DONE}
    # As many calls at once as the limit allows (one dispatcher as well as two), never more:
    # the sandbox would refuse (429) a fourth.
    assert puts.most == 3
    assert sandbox.stats("xero", "Invoices")["throttled"] == 0
    assert not SyncAttempt.objects.filter(connection=erp, status_code=429).exists()
    puts_made = SyncAttempt.objects.filter(connection=erp, operation="put_invoices")
    assert puts_made.count() == 8
    assert sandbox.stats("xero", "Invoices")["created"] == 400


@pytest.mark.django_db(transaction=True)
def test_under_faults_two_dispatchers_put_every_invoice_exactly_once(
    sandbox: Sandbox, settings: Any
) -> None:
    """18% of Xero calls fail: 500s, 429s with Retry-After, and writes whose answer is lost
    (applied, but never heard of: the retry looks the invoice up instead of putting it again)."""
    settings.CONCORD_OUTBOX_BACKOFF_CAP_S = 1
    erp = _firm(sandbox, 300, concurrent=5)
    sandbox.faults(
        "xero", error_rate=0.08, throttle_rate=0.05, drop_response_rate=0.05, latency_ms=20, seed=3
    )

    _dispatch_in_threads(erp, 2, until=time.monotonic() + 120)

    assert not _open_rows()
    stats = sandbox.stats("xero", "Invoices")
    errors = sum(n for status, n in stats["refused"]["by_status"].items() if str(status) >= "500")
    assert stats["dropped_responses"] + stats["throttled"] + errors > 0  # the faults did happen
    entries = set(TimeEntry.objects.values_list("pk", flat=True))
    lines = _lines_per_entry(sandbox)
    assert set(lines) == entries
    assert set(lines.values()) == {1}
    assert stats["created"] == 300
    assert stats["duplicates_detected"] == 0
    # Never more than 5 at once, even with two dispatchers: the only 429s are the injected
    # ones ("minute"), none for calls beyond the concurrent limit.
    throttled = SyncAttempt.objects.filter(connection=erp, status_code=429)
    assert not throttled.filter(vendor_response__contains="(concurrent)").exists()


# --- Rows of one-item-a-call Harvest, made by hand ----------------------------------------------


@pytest.fixture
def customers() -> list[Customer]:
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    return [
        Customer.objects.create(name=f"Order {n} Ltd", legal_entity=entity, currency="GBP")
        for n in range(6)
    ]


def _row(
    connection: Connection,
    customer: Customer,
    operation: str,
    payload: dict[str, Any],
    *,
    version: int = 1,
    due_in_s: float = 0,
) -> OutboxMessage:
    return OutboxMessage.objects.create(
        connection=connection,
        process="concurrency-test",
        step="psa_client",
        operation=operation,
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=customer.pk,
        record_version=version,
        idempotency_key=f"concurrency:{operation}:{customer.pk}:v{version}",
        payload=payload,
        next_attempt_at=timezone.now() + timedelta(seconds=due_in_s),
    )


@pytest.mark.django_db(transaction=True)
def test_rows_waiting_out_a_backoff_do_not_hold_back_due_rows(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    customers: list[Customer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The oldest due rows are newer versions of records whose older version waits out its
    backoff: they cannot go, and must not take the claim's places from a due row of another
    record. (A claim of such rows came back empty, and the dispatcher stopped.)"""
    monkeypatch.setattr(dispatch, "CLAIM_LIMIT", 2)
    psa = make_connection("harvest", rate_limit_per_minute=100_000, max_concurrency=4)
    waiting = [
        _row(psa, c, "create_client", {"name": c.name}, version=1, due_in_s=60)
        for c in customers[:3]
    ]
    held = [
        _row(psa, c, "create_client", {"name": f"{c.name} v2"}, version=2, due_in_s=-10)
        for c in customers[:3]
    ]
    due = _row(psa, customers[3], "create_client", {"name": customers[3].name}, due_in_s=-1)

    report = outbox_dispatch(connection_id=psa.pk, worker="backoff-test")

    assert (report.claimed, report.done) == (1, 1)
    due.refresh_from_db()
    assert due.state == State.DONE
    assert {
        r.state for r in OutboxMessage.objects.filter(pk__in=[m.pk for m in waiting + held])
    } == {State.PENDING}
    assert [c["data"]["name"] for c in sandbox.records("harvest", "clients")] == [customers[3].name]


@pytest.mark.django_db(transaction=True)
def test_a_records_rows_go_in_version_order_while_other_records_overlap(
    make_connection: Callable[..., Connection], sandbox: Sandbox, customers: list[Customer]
) -> None:
    psa = make_connection("harvest", rate_limit_per_minute=100_000, max_concurrency=4)
    for customer in customers:
        _row(psa, customer, "create_client", {"name": customer.name})
    assert outbox_dispatch(connection_id=psa.pk, worker="order-test").done == len(customers)
    harvest_id = {c["data"]["name"]: int(c["id"]) for c in sandbox.records("harvest", "clients")}
    sandbox.faults("harvest", latency_ms=100)
    first = customers[0]
    # Versions 1-4 of one record, all due at once (the newest the most overdue), and one
    # update of each other record.
    versions = [
        _row(
            psa,
            first,
            "update_client",
            {"id": harvest_id[first.name], "address": f"{n} Main St"},
            version=n,
            due_in_s=-n,
        )
        for n in (1, 2, 3, 4)
    ]
    for customer in customers[1:]:
        _row(
            psa,
            customer,
            "update_client",
            {"id": harvest_id[customer.name], "address": "9 Side St"},
            version=1,
        )

    report = outbox_dispatch(connection_id=psa.pk, worker="order-test")

    # One task sends all: a version's successor is claimed as soon as it is delivered.
    left = list(OutboxMessage.objects.exclude(state=State.DONE).values("pk", "last_error"))
    assert report.done == len(versions) + len(customers) - 1, (report, left)
    spans = []
    for row in versions:
        (attempt,) = SyncAttempt.objects.filter(messages__pk=row.pk)
        start = attempt.started_at.timestamp()
        spans.append((start, start + attempt.latency_ms / 1000))
    # Each version's call began after the one before had its answer.
    assert all(spans[n][1] <= spans[n + 1][0] for n in range(len(spans) - 1)), spans
    calls = sorted(
        (a.started_at.timestamp(), a.started_at.timestamp() + a.latency_ms / 1000)
        for a in SyncAttempt.objects.filter(connection=psa, operation="update_client")
    )
    assert max(sum(1 for s, e in calls if s <= start < e) for start, _ in calls) >= 2
    addresses = {
        c["data"]["name"]: c["data"].get("address") for c in sandbox.records("harvest", "clients")
    }
    assert addresses[first.name] == "4 Main St"


def test_batches_sharing_a_record_go_in_one_sequence_in_claim_order() -> None:
    """Batches of one claim that share a record form one sequence (a lane sends it in turn);
    the others are sequences of their own, free to go at once."""

    class Batches:
        batch_size = {"put_contacts": 2, "post_contacts": 2}

    def message(pk: int, operation: str, record: int) -> OutboxMessage:
        return OutboxMessage(pk=pk, operation=operation, content_type_id=1, object_id=record)

    claimed = [
        message(1, "put_contacts", 10),
        message(2, "put_contacts", 11),
        message(3, "put_contacts", 12),
        message(4, "put_contacts", 13),
        message(5, "post_contacts", 13),  # record 13 again: after its put
        message(6, "post_contacts", 14),
    ]

    sequences = dispatch._sequences(Batches(), claimed)  # type: ignore[arg-type]

    as_ids = [[(op, [m.pk for m in batch]) for op, batch in s] for s in sequences]
    assert as_ids == [
        [("put_contacts", [1, 2])],
        [("put_contacts", [3, 4]), ("post_contacts", [5, 6])],
    ]


# --- Recording outcomes: queries per batch, not per row -----------------------------------------


@pytest.fixture
def recorded(
    make_connection: Callable[..., Connection], customers: list[Customer]
) -> Callable[[int], int]:
    """How many queries recording `n` rows' outcomes takes: a third delivered, a third to retry
    (one after a lost answer), a third refused by the vendor for one reason (one case)."""
    xero = make_connection("xero")
    customer_type = ContentType.objects.get_for_model(Customer)
    made = 0

    def record(n: int) -> int:
        nonlocal made
        now = timezone.now()
        rows = OutboxMessage.objects.bulk_create(
            OutboxMessage(
                connection=xero,
                process="concurrency-test",
                step="erp_contact",
                operation="put_contacts",
                content_type=customer_type,
                object_id=customers[i % len(customers)].pk + 1000 * (made + i),
                idempotency_key=f"record-{made + i}",
                state=State.IN_FLIGHT,
                attempts=1,
                first_attempt_at=now,
                next_attempt_at=now,
                payload={"Name": f"Contact {made + i}"},
            )
            for i in range(n)
        )
        made += n
        rows = list(
            OutboxMessage.objects.select_related("connection", "content_type").filter(
                pk__in=[r.pk for r in rows]
            )
        )
        outcomes = []
        for i, row in enumerate(rows):
            if i % 3 == 0:
                outcomes.append(Outcome(message=row, ok=True, external_id=f"x-{row.pk}"))
            elif i % 3 == 1:
                outcomes.append(
                    Outcome(
                        message=row,
                        ok=False,
                        error_class=ErrorClass.TRANSIENT,
                        error="HTTP 500",
                        maybe_applied=i % 2 == 0,
                    )
                )
            else:
                outcomes.append(
                    Outcome(
                        message=row,
                        ok=False,
                        error_class=ErrorClass.BUSINESS,
                        error="Xero validation error",
                        vendor_message="Account number already used",
                    )
                )
        with CaptureQueriesContext(connections["default"]) as queries:
            counts = outbox_record_outcomes(outcomes=outcomes)
        assert counts["done"] + counts["retry"] + counts["parked"] == n
        assert counts["parked"] == n // 3
        return len(queries)

    return record


@pytest.mark.django_db
def test_recording_a_batch_costs_the_same_queries_for_5_rows_as_for_50(
    recorded: Callable[[int], int],
) -> None:
    recorded(6)  # warm the content type cache and the case's first opening
    small = recorded(6)
    large = recorded(60)
    assert large == small, (small, large)
    parked = OutboxMessage.objects.filter(state=State.PARKED)
    assert parked.count() == 2 + 2 + 20
    assert parked.order_by().values("exception_case").distinct().count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_call_whose_answer_was_lost_goes_again_under_its_key_without_a_look_up(
    sandbox: Sandbox, settings: Any
) -> None:
    """Xero answers a write sent again under the same Idempotency-Key with its first answer:
    rows whose call may have landed go again as that same call (same rows, same order, same
    key), so no look-up call is spent before it, and still every invoice lands once."""
    settings.CONCORD_OUTBOX_BACKOFF_CAP_S = 1
    erp = _firm(sandbox, 200, concurrent=5)
    sandbox.faults("xero", drop_response_rate=0.4, latency_ms=5, seed=7)

    _dispatch_in_threads(erp, 1, until=time.monotonic() + 120)

    assert not _open_rows()
    stats = sandbox.stats("xero", "Invoices")
    assert stats["dropped_responses"] > 0  # answers were lost
    assert stats["idempotent_replays"] > 0  # and the same calls went again
    assert stats["created"] == 200
    assert stats["duplicates_detected"] == 0
    lines = _lines_per_entry(sandbox)
    assert set(lines) == set(TimeEntry.objects.values_list("pk", flat=True))
    assert set(lines.values()) == {1}
    assert not SyncAttempt.objects.filter(connection=erp, operation__startswith="find:").exists()
    # Rows whose last call may have landed keep its key until they are done.
    assert not OutboxMessage.objects.exclude(sent_key="").exclude(state=State.DONE).exists()


@pytest.mark.django_db(transaction=True)
def test_rows_regrouped_since_their_lost_call_are_looked_up_first(
    sandbox: Sandbox, settings: Any
) -> None:
    """A retried row whose earlier call is not re-sent whole (here: its key no longer matches
    the rows with it) is looked up before it is written, as before: no second invoice."""
    settings.CONCORD_OUTBOX_BACKOFF_CAP_S = 1
    erp = _firm(sandbox, 20, concurrent=5)
    sandbox.faults("xero", drop_response_rate=1.0, latency_ms=5, seed=7)
    # One call (its answer lost), then the budget is spent.
    outbox_dispatch(connection_id=erp.pk, worker="first", time_budget_s=0.05)
    sandbox.faults("xero", drop_response_rate=0.0)
    lost = list(OutboxMessage.objects.filter(needs_lookup=True).order_by("pk"))
    assert len(lost) == 20
    assert len({m.sent_key for m in lost}) == 1
    assert lost[0].sent_key
    # Half of them regrouped (as if the other half were claimed elsewhere meanwhile).
    OutboxMessage.objects.filter(pk__in=[m.pk for m in lost[:10]]).update(
        sent_key="another-call", next_attempt_at=timezone.now()
    )
    OutboxMessage.objects.filter(pk__in=[m.pk for m in lost[10:]]).update(
        next_attempt_at=timezone.now()
    )

    _dispatch_in_threads(erp, 1, until=time.monotonic() + 60)

    assert not _open_rows()
    stats = sandbox.stats("xero", "Invoices")
    assert stats["created"] == 20
    assert stats["duplicates_detected"] == 0
    assert SyncAttempt.objects.filter(connection=erp, operation__startswith="find:").exists()
