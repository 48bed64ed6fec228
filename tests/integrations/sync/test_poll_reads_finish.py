"""Reads that finish: a failed page is read again where it failed (with backoff, honouring
Retry-After), a poll killed mid-read resumes at the page after the last one stored, and one
object type's failure never skips the others. Against the real sandbox and its faults."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db.models import Count

from integrations.connectors.errors import TransientError
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    Connection,
    CrossReference,
    InboundMessage,
    PollCursor,
    Project,
    SyncAttempt,
    TimeEntry,
)
from integrations.sync import polling
from integrations.sync.polling import poll_connection, poll_object
from integrations.vendors.harvest.connector import HarvestConnector
from tests.integrations.conftest import Sandbox

# Outside a test transaction, as in a worker: pages commit on the page writer's threads.
pytestmark = pytest.mark.django_db(transaction=True)


def _harvest(
    make_connection: Callable[..., Connection], sandbox: Sandbox, scale: int
) -> Connection:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": scale, "seed": 7})
    connection = make_connection("harvest", rate_limit_per_minute=1_000_000, max_concurrency=10)
    mapping_defaults_install(connection=connection)
    for object_type in ("clients", "users", "projects"):
        poll_object(connection_id=connection.pk, object_type=object_type)
    return connection


def _count(sandbox: Sandbox, obj: str) -> int:
    return int(sandbox.control.get(f"/records/harvest/{obj}", params={"limit": 0}).json()["count"])


def _reads(connection: Connection, outcome: str | None = None) -> int:
    rows = SyncAttempt.objects.filter(connection=connection, operation="read:time_entries")
    return (rows if outcome is None else rows.filter(outcome=outcome)).count()


def test_100k_entries_with_15_percent_of_page_reads_failing_arrive_once_without_a_restart(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = _harvest(make_connection, sandbox, scale=100)
    entries = _count(sandbox, "time_entries")
    assert entries >= 95_000
    pages = -(-entries // 2000)  # Harvest's largest page
    waits: list[float] = []
    monkeypatch.setattr(polling, "_sleep", waits.append)  # the backoff, without the wall time
    sandbox.faults("harvest", error_rate=0.15, seed=5)

    report = poll_object(connection_id=connection.pk, object_type="time_entries")

    # Every entry stored once: one canonical row, one cross-reference, one raw record each.
    assert report.error == ""
    assert report.read == entries
    assert report.failed == 0
    assert TimeEntry.objects.count() == entries
    assert (
        CrossReference.objects.filter(connection=connection, content_type__model="timeentry")
        .values("external_id")
        .distinct()
        .count()
        == entries
    )
    raw = InboundMessage.objects.filter(connection=connection, object_type="time_entries")
    assert raw.count() == entries
    assert not raw.values("external_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    # Each page was read successfully exactly once: no read started over. The faults hit, and
    # each failed read was retried where it failed, a few times at most.
    assert report.pages == pages
    assert _reads(connection, "success") == pages
    failed = _reads(connection, "transient")
    assert failed == report.retries == len(waits)
    assert failed >= 3
    assert failed <= pages  # ~15% of ~pages+failed reads
    assert max(waits) <= polling.RETRY_BASE_S * 2 ** (polling.PAGE_ATTEMPTS - 2)
    stats = sandbox.stats("harvest", "time_entries")
    assert stats["requests"] == pages + failed
    assert stats["refused"]["by_status"]["500"] == failed
    cursor = PollCursor.objects.get(connection=connection, object_type="time_entries")
    assert cursor.position
    assert cursor.resume == {}
    assert cursor.failing_since is None


def test_a_poll_killed_mid_read_resumes_after_the_last_stored_page(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = _harvest(make_connection, sandbox, scale=1)
    entries = _count(sandbox, "time_entries")
    pages = -(-entries // 50)
    assert pages >= 12
    real = HarvestConnector.read_pages

    def killed_after_eight_pages(
        self: HarvestConnector, *args: Any, **kwargs: Any
    ) -> Iterator[Any]:
        for n, page in enumerate(real(self, *args, **kwargs), start=1):
            yield page
            if n == 8:
                # As a SIGKILL: nothing catches it, and the pages not yet committed are lost.
                raise SystemExit("worker killed")

    monkeypatch.setattr(HarvestConnector, "read_pages", killed_after_eight_pages)
    with pytest.raises(SystemExit):
        poll_object(connection_id=connection.pk, object_type="time_entries", page_size=50)
    cursor = PollCursor.objects.get(connection=connection, object_type="time_entries")
    # Harvest lists newest first: the stamp waits for the end, the page position is kept.
    assert not cursor.position
    assert cursor.resume["since"] == ""
    stored_pages = int(dict(p.split("=") for p in cursor.resume["next"].split("&"))["page"]) - 1
    assert 1 <= stored_pages <= 8
    # Every page up to the position is stored (one of its two steps may have committed for
    # the page after it too: that page is read again, and its records come back stale).
    assert TimeEntry.objects.count() >= stored_pages * 50
    before = _reads(connection)

    monkeypatch.setattr(HarvestConnector, "read_pages", real)
    report = poll_object(connection_id=connection.pk, object_type="time_entries", page_size=50)

    # Only the pages after the last stored one were read again.
    assert _reads(connection) - before == pages - stored_pages == report.pages
    assert report.read == entries - stored_pages * 50
    assert TimeEntry.objects.count() == entries
    assert (
        InboundMessage.objects.filter(connection=connection)
        .filter(object_type="time_entries")
        .count()
        == entries
    )
    cursor.refresh_from_db()
    assert cursor.position
    assert cursor.resume == {}
    again = poll_object(connection_id=connection.pk, object_type="time_entries", page_size=50)
    assert (again.read, again.pages) == (0, 1)


def test_a_throttled_page_waits_out_retry_after_and_goes_on(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = _harvest(make_connection, sandbox, scale=1)
    entries = _count(sandbox, "time_entries")
    settings.CONCORD_POLL_RETRY_BASE_S = 0.01
    waits: list[float] = []
    monkeypatch.setattr(polling, "_sleep", waits.append)
    sandbox.faults("harvest", throttle_rate=0.3, seed=2)

    report = poll_object(connection_id=connection.pk, object_type="time_entries", page_size=100)

    assert TimeEntry.objects.count() == entries
    assert report.retries == len(waits) >= 1
    # Harvest's 429 says Retry-After: 1; the backoff alone would have waited 0.01 s.
    assert min(waits) >= 1.0
    assert _reads(connection, "success") == report.pages


def test_one_object_failing_never_skips_the_others(
    make_connection: Callable[..., Connection],
    sandbox: Sandbox,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    connection = make_connection("harvest", rate_limit_per_minute=1_000_000)
    mapping_defaults_install(connection=connection)
    settings.CONCORD_POLL_PAGE_ATTEMPTS = 2
    monkeypatch.setattr(polling, "_sleep", lambda s: None)
    real = HarvestConnector.read_pages

    def clients_down(self: HarvestConnector, object_type: str, *args: Any) -> Iterator[Any]:
        if object_type == "clients":
            raise TransientError("Harvest answered 503", status_code=503)
        yield from real(self, object_type, *args)

    monkeypatch.setattr(HarvestConnector, "read_pages", clients_down)
    reports = poll_connection(connection_id=connection.pk)

    assert reports["clients"].error == "Harvest answered 503"
    assert reports["clients"].retries == 1
    assert reports["projects"].error == ""
    # Projects whose client is known already would apply; here none is, so they fail alone,
    # and the objects after them were still polled.
    assert reports["users"].applied > 0
    assert reports["time_entries"].pages >= 1
    clients = PollCursor.objects.get(connection=connection, object_type="clients")
    assert clients.failing_since is not None
    assert clients.last_error == "Harvest answered 503"
    assert PollCursor.objects.get(connection=connection, object_type="users").failing_since is None
    assert Project.objects.count() == 0


def test_records_read_at_the_old_stamp_stay_skipped_when_a_newer_one_comes_first(
    make_connection: Callable[..., Connection], sandbox: Sandbox
) -> None:
    """Harvest lists newest first by id: a record changed since the last poll can come on a
    page before the ones the last poll read at its stamp (read again by ``>=``). Those stay
    skipped although the newest stamp of this read has moved on."""
    connection = _harvest(make_connection, sandbox, scale=1)
    ids = sorted(int(c["id"]) for c in sandbox.records("harvest", "clients"))
    # Two older clients changed within one second (Harvest stamps whole seconds) ...
    time.sleep(1.0 - time.time() % 1.0 + 0.02)
    for key in ids[:2]:
        sandbox.patch("harvest", "clients", key, {"address": "Same second"})
    poll_object(connection_id=connection.pk, object_type="clients")
    cursor = PollCursor.objects.get(connection=connection, object_type="clients")
    assert set(cursor.ids_at_position) == {str(k) for k in ids[:2]}
    # ... then the newest client, a second later: listed first, with a newer stamp.
    time.sleep(1.0 - time.time() % 1.0 + 0.02)
    sandbox.patch("harvest", "clients", ids[-1], {"address": "Later"})

    report = poll_object(connection_id=connection.pk, object_type="clients", page_size=1)

    assert report.pages == 3
    assert report.read == 1
