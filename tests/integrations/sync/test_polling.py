"""Polling against the real sandbox: the seeded firm's Harvest data arrives in dependency order,
the cursor never skips a record that shares its stamp, and a second poll reads nothing new."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    Connection,
    CrossReference,
    InboundMessage,
    PollCursor,
    Project,
    Resource,
    SyncAttempt,
    TimeEntry,
)
from integrations.sync.polling import poll_connection, poll_object
from integrations.sync.upsert import UpsertPlan
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def harvest(make_connection: Callable[..., Connection], sandbox: Sandbox) -> Connection:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    connection = make_connection("harvest", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=connection)
    return connection


def test_poll_brings_the_firm_in_dependency_order_and_only_once(
    harvest: Connection, sandbox: Sandbox
) -> None:
    reports = poll_connection(connection_id=harvest.pk)
    entries = sandbox.records("harvest", "time_entries")
    assert reports["time_entries"].read == len(entries)
    # Every time entry found its project and worker, because those were polled first.
    assert reports["time_entries"].failed == 0
    assert TimeEntry.objects.count() == len(entries)
    assert Project.objects.count() == len(sandbox.records("harvest", "projects"))
    assert Resource.objects.exists()
    assert CrossReference.objects.filter(
        connection=harvest, content_type__model="timeentry"
    ).count() == (TimeEntry.objects.count())
    cursor = PollCursor.objects.get(connection=harvest, object_type="time_entries")
    assert cursor.position
    assert cursor.ids_at_position

    again = poll_object(connection_id=harvest.pk, object_type="time_entries")
    assert again.read == 0
    assert again.applied == 0


def test_a_record_changed_at_the_cursor_stamp_is_read_and_applied(
    harvest: Connection, sandbox: Sandbox
) -> None:
    poll_connection(connection_id=harvest.pk)
    entry = TimeEntry.objects.order_by("pk").first()
    assert entry is not None
    xref = CrossReference.objects.get(
        connection=harvest, content_type__model="timeentry", object_id=entry.pk
    )
    sandbox.patch("harvest", "time_entries", int(xref.external_id), {"notes": "Changed later"})

    report = poll_object(connection_id=harvest.pk, object_type="time_entries")
    assert report.read == 1
    assert report.applied == 1
    entry.refresh_from_db()
    assert entry.notes == "Changed later"
    kept = InboundMessage.objects.filter(
        connection=harvest, object_type="time_entries", external_id=xref.external_id
    )
    assert kept.count() == 2  # both versions are kept as they were read


@pytest.mark.django_db(transaction=True)
def test_many_pages_commit_on_the_writer_threads_exactly_once(
    harvest: Connection, sandbox: Sandbox
) -> None:
    """Outside a transaction (as in a worker) pages are written by the page writer's threads
    while the next pages are read: every record arrives once, raw and canonical, and every page
    read is a recorded call."""
    for object_type in ("clients", "users", "projects"):
        poll_object(connection_id=harvest.pk, object_type=object_type)
    entries = sandbox.records("harvest", "time_entries")
    report = poll_object(connection_id=harvest.pk, object_type="time_entries", page_size=7)
    assert report.pages == -(-len(entries) // 7) > 3
    assert report.read == len(entries)
    assert report.failed == 0
    assert TimeEntry.objects.count() == len(entries)
    raw = InboundMessage.objects.filter(connection=harvest, object_type="time_entries")
    assert raw.count() == len(entries)
    assert raw.filter(state="applied").count() == len(entries)
    reads = SyncAttempt.objects.filter(connection=harvest, operation="read:time_entries")
    assert reads.count() == report.pages
    assert PollCursor.objects.get(connection=harvest, object_type="time_entries").position

    again = poll_object(connection_id=harvest.pk, object_type="time_entries", page_size=7)
    assert (again.read, again.applied) == (0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_poll_that_dies_midway_loses_nothing_and_the_next_one_finishes_it(
    harvest: Connection, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integrations.sync import polling

    for object_type in ("clients", "users", "projects"):
        poll_object(connection_id=harvest.pk, object_type=object_type)
    entries = sandbox.records("harvest", "time_entries")
    real = polling.write_upsert
    calls = {"n": 0}

    def dies_on_the_third_page(plan: UpsertPlan) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise polling.IntegrityError("the database went away mid-poll")
        real(plan)

    monkeypatch.setattr(polling, "write_upsert", dies_on_the_third_page)
    with pytest.raises(polling.IntegrityError):
        poll_object(connection_id=harvest.pk, object_type="time_entries", page_size=7)
    cursor = PollCursor.objects.get(connection=harvest, object_type="time_entries")
    assert not cursor.position  # Harvest lists newest first: the cursor moves at the end only
    assert TimeEntry.objects.count() < len(entries)

    monkeypatch.setattr(polling, "write_upsert", real)
    report = poll_object(connection_id=harvest.pk, object_type="time_entries", page_size=7)
    assert report.failed == 0
    assert TimeEntry.objects.count() == len(entries)
    xrefs = CrossReference.objects.filter(connection=harvest, content_type__model="timeentry")
    assert xrefs.count() == TimeEntry.objects.count()
    # Each record's raw row once, although some pages were read twice.
    raw = InboundMessage.objects.filter(connection=harvest, object_type="time_entries")
    assert raw.count() == len(entries)
    assert raw.values("external_id").distinct().count() == len(entries)


def test_a_page_records_why_a_record_was_not_applied(db: None) -> None:
    """The plan labels each raw record it will not apply: an older copy of a record in the
    same page, a version older than the one applied, a payload that did not map."""
    from django.contrib.contenttypes.models import ContentType

    from integrations.mapping.apply import MappedRecord
    from integrations.mapping.errors import MappingError
    from integrations.mapping.ownership import OwnershipRules
    from integrations.sync.upsert import plan_upsert
    from tests.factories import ResourceFactory, make_connection

    connection = make_connection(name="Harvest", role="psa", vendor="harvest")
    known = ResourceFactory.create()
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Resource),
        object_id=known.pk,
        connection=connection,
        external_id="u-known",
        external_version="50",
    )

    def user(external_id: str, version: int) -> MappedRecord:
        fields = {
            "name": "N",
            "email": f"{external_id}@example.invalid",
            "role": "Consultant",
            "cost_rate": 0,
            "cost_currency": "EUR",
        }
        return MappedRecord("resource", external_id, version, fields, [])

    page = [
        user("u-1", 10),
        user("u-1", 12),  # the newer copy wins
        user("u-known", 40),  # older than the applied 50
        MappedRecord("resource", "u-bad", 5, {}, [MappingError("no email", field="email")]),
        user("u-2", 7),
    ]
    plan = plan_upsert(connection=connection, mapped=page, rules=OwnershipRules())
    assert {i: state for i, (state, _) in plan.notes.items()} == {
        0: "stale",
        2: "stale",
        3: "failed",
    }
    assert "no email" in plan.notes[3][1]
    assert sorted(m.external_id for m, _ in plan.creates) == ["u-1", "u-2"]
    assert plan.outcome["stale"] == 2


def test_a_polled_record_that_cannot_be_mapped_is_kept_failed_and_opens_a_case(
    harvest: Connection, sandbox: Sandbox
) -> None:
    from exceptions.models import ExceptionCase

    for object_type in ("clients", "users", "projects"):
        poll_object(connection_id=harvest.pk, object_type=object_type)
    entry = sandbox.records("harvest", "time_entries")[0]
    sandbox.patch("harvest", "time_entries", entry["id"], {"spent_date": "someday"})

    report = poll_object(connection_id=harvest.pk, object_type="time_entries")
    assert report.failed == 1  # the one entry with a date the mapping cannot read
    kept = InboundMessage.objects.get(
        connection=harvest, object_type="time_entries", external_id=str(entry["id"])
    )
    assert kept.state == "failed"
    assert "someday" in kept.error
    case = ExceptionCase.objects.get(case_type="mapping_error")
    assert case.queue == "integration_admin"
    assert "cannot be mapped" in case.message
    assert ("inboundmessage", kept.pk) in set(
        case.blocked_records.values_list("record_type", "record_id")
    )


def test_a_later_failure_labels_only_the_version_that_failed(
    harvest: Connection, sandbox: Sandbox
) -> None:
    poll_connection(connection_id=harvest.pk)
    entry = TimeEntry.objects.select_related("project").order_by("pk").first()
    assert entry is not None
    xref = CrossReference.objects.get(
        connection=harvest, content_type__model="timeentry", object_id=entry.pk
    )
    # Concord forgets the entry's project: the next version cannot be stored.
    CrossReference.objects.filter(
        connection=harvest, content_type__model="project", object_id=entry.project_id
    ).delete()
    sandbox.patch("harvest", "time_entries", int(xref.external_id), {"notes": "Changed later"})

    report = poll_object(connection_id=harvest.pk, object_type="time_entries")
    assert report.failed == 1
    first, second = InboundMessage.objects.filter(
        connection=harvest, object_type="time_entries", external_id=xref.external_id
    ).order_by("source_version")
    assert first.state == "applied"  # the version that was applied stays so
    assert second.state == "failed"
    assert "not known to Concord yet" in second.error
