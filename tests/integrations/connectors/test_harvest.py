"""The Harvest connector against the sandbox: auth, paging, updated_since, look-up-before-create."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from integrations.connectors.errors import BusinessError, PermanentError, TransientError
from integrations.models import Connection, SyncAttempt
from integrations.timestamps import micros_to_iso
from integrations.vendors import connector_for
from integrations.vendors.harvest.connector import HarvestConnector
from tests.firms import harvest_tasks_create
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db


def harvest(connection: Connection, **options: Any) -> HarvestConnector:
    connector = connector_for(connection, **options)
    assert isinstance(connector, HarvestConnector)
    return connector


def test_reads_page_to_the_end_with_harvest_headers(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    sandbox.post("/seed", {"scale": 1})
    connector = harvest(harvest_connection, page_size=400)
    for kind in ("time_entries", "expenses", "projects", "clients", "users"):
        pages = list(connector.read_changed(kind, None))
        records = [r for page in pages for r in page]
        stored = sandbox.records("harvest", kind)
        assert len(records) == len(stored), kind
        assert {r["id"] for r in records} == {r["id"] for r in stored}, kind
    entries = sandbox.records("harvest", "time_entries")
    assert len(entries) > 800  # three pages of 400 at least
    assert sandbox.stats("harvest", "time_entries")["requests"] == -(-len(entries) // 400)
    # Within a page, oldest first.
    first_page = next(connector.read_changed("time_entries", None))
    assert [r["id"] for r in first_page] == sorted(r["id"] for r in first_page)


def test_updated_since_is_inclusive_and_returns_only_changes(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    connector = harvest(harvest_connection)
    made = connector.write(
        "create_client", [{"name": "Acme"}, {"name": "Beta"}], idempotency_key="c"
    )
    time.sleep(1.05)  # Harvest timestamps have whole seconds
    changed = connector.write(
        "update_client", [{"id": made[1].data["id"], "address": "1 Main St"}], idempotency_key="u"
    )[0]
    since = micros_to_iso(int(changed.external_version))

    later = [r for page in connector.read_changed("clients", since) for r in page]

    assert [r["name"] for r in later] == ["Beta"]
    assert connector.version_of("clients", later[0]) == (
        str(made[1].data["id"]),
        connector.version_of("clients", changed.data)[1],
    )


def test_a_first_create_posts_without_looking_first(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    """Only a create that may have reached Harvest before is looked up, by the dispatcher
    (``needs_lookup``): a first attempt is one call."""
    connector = harvest(harvest_connection)
    client = connector.write("create_client", [{"name": "Acme"}], idempotency_key="c")[0]
    project = {
        "client_id": int(client.external_id),
        "name": "Apollo",
        "code": "P-100",
        "is_billable": True,
        "bill_by": "Project",
        "budget_by": "project",
    }
    assert connector.write("create_project", [project], idempotency_key="p")[0].ok

    calls = SyncAttempt.objects.filter(connection=harvest_connection).order_by("id")
    assert [a.operation for a in calls] == ["create_client", "create_project"]  # no find:


def test_create_client_twice_is_found_through_harvest_s_refusal(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    connector = harvest(harvest_connection)
    first = connector.write("create_client", [{"name": "Acme GmbH"}], idempotency_key="a")[0]
    again = connector.write("create_client", [{"name": "acme gmbh"}], idempotency_key="a")[0]
    assert first.ok
    assert again.ok
    assert again.external_id == first.external_id
    stats = sandbox.stats("harvest", "clients")
    assert stats["created"] == 1
    # The repeat posted, Harvest refused the name as taken, and the look-up found ours.
    assert stats["duplicates_detected"] == 1


def test_create_after_a_dropped_response_finds_the_record(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    connector = harvest(harvest_connection)
    client = connector.write("create_client", [{"name": "Acme"}], idempotency_key="c")[0]
    project = {
        "client_id": int(client.external_id),
        "name": "Apollo",
        "code": "P-100",
        "is_billable": True,
        "bill_by": "Project",
        "budget_by": "project",
    }
    sandbox.faults("harvest", drop_response_rate=1.0)
    with pytest.raises(TransientError, match="response dropped"):
        connector.write("create_project", [project], idempotency_key="p")
    sandbox.faults("harvest", drop_response_rate=0.0)

    result = connector.write("create_project", [project], idempotency_key="p")[0]

    assert result.ok
    assert result.data["code"] == "P-100"
    assert sandbox.stats("harvest", "projects")["created"] == 1
    assert len(sandbox.records("harvest", "projects")) == 1


def test_item_errors_keep_harvest_s_message_and_later_items_still_go(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    connector = harvest(harvest_connection)
    client = connector.write("create_client", [{"name": "Acme"}], idempotency_key="c")[0]
    good = {
        "client_id": int(client.external_id),
        "name": "Gemini",
        "is_billable": True,
        "bill_by": "Project",
        "budget_by": "project",
    }
    results = connector.write(
        "create_project",
        [{"client_id": int(client.external_id), "name": "No billing"}, good],
        idempotency_key="p",
    )
    assert isinstance(results[0].error, BusinessError)
    assert "can't be blank" in results[0].error.vendor_message
    assert results[1].ok

    missing = connector.write("update_project", [{"id": 999, "name": "x"}], idempotency_key="u")[0]
    assert isinstance(missing.error, PermanentError)
    assert missing.error.status_code == 404


def test_wrong_token_is_permanent(
    sandbox: Sandbox, make_connection: Callable[..., Connection]
) -> None:
    connection = make_connection(
        "harvest", credentials={"access_token": "not-the-token", "account_id": "100001"}
    )
    with pytest.raises(PermanentError, match="Harvest authentication failed") as error:
        list(harvest(connection).read_changed("clients", None))
    assert error.value.status_code == 401
    assert "access token" in error.value.vendor_message


def test_a_project_s_tasks_are_posted_directly_and_a_repeat_finds_them(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    tasks = harvest_tasks_create(harvest_connection)
    connector = harvest(harvest_connection)
    client = connector.write("create_client", [{"name": "Acme"}], idempotency_key="c")[0]
    project = connector.write(
        "create_project",
        [
            {
                "client_id": int(client.external_id),
                "name": "Apollo",
                "is_billable": True,
                "bill_by": "Project",
                "budget_by": "project",
            }
        ],
        idempotency_key="p",
    )[0]
    item = {"project_id": int(project.external_id)}
    reads = SyncAttempt.objects.filter(
        connection=harvest_connection, operation="find:create_task_assignments"
    )

    first = connector.write("create_task_assignments", [item], idempotency_key="t")[0]

    defaults = {tasks["Development"], tasks["Project Management"], tasks["Internal"]}
    assert first.ok, first.error
    assert {a["task"]["id"] for a in first.data["task_assignments"]} == defaults
    assert reads.count() == 1  # the firm's task list; the project's assignments not read

    # A retry after a lost answer: Harvest refuses each task as assigned, one read finds them.
    again = connector.write("create_task_assignments", [item], idempotency_key="t")[0]

    assert again.ok, again.error
    assert [a["id"] for a in again.data["task_assignments"]] == [
        a["id"] for a in first.data["task_assignments"]
    ]
    assert reads.count() == 2
    assert sandbox.stats("harvest", "task_assignments")["created"] == 3
