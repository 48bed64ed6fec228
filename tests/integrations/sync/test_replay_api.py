"""Replay from the API: parked outbox rows (one, or a whole exception case's group) and inbound
messages, each replay linked to its original; only integration admins may replay."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from exceptions.models import ExceptionCase
from exceptions.services import Blocked, case_open_or_join
from integrations.models import Connection, InboundMessage, OutboxMessage
from integrations.roles import FINANCE, INTEGRATION_ADMIN
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.factories import CustomerFactory, make_connection

pytestmark = pytest.mark.django_db


def _parked(count: int) -> tuple[list[OutboxMessage], ExceptionCase]:
    connection = make_connection()
    now = "2026-11-20T10:00:00Z"
    case = ExceptionCase.objects.create(
        fingerprint="f" * 64,
        process="time_to_erp",
        step="post_invoice",
        case_type="x",
        queue="finance",
        message="m",
        first_seen_at=now,
        last_seen_at=now,
    )
    rows = [
        outbox_message(
            connection=connection,
            process="time_to_erp",
            step="post_invoice",
            operation="put_invoices",
            record=CustomerFactory.create(),
            version=1,
            payload={"Reference": f"R{i}"},
        )
        for i in range(count)
    ]
    outbox_enqueue(messages=rows)
    OutboxMessage.objects.update(state="parked", exception_case=case)
    return list(OutboxMessage.objects.order_by("id")), case


def test_admin_replays_one_parked_message(api_client_as: Callable[..., APIClient]) -> None:
    (row, *_), _case = _parked(2)
    response = api_client_as(INTEGRATION_ADMIN).post(f"/api/v1/outbox/{row.pk}/replay/")
    assert response.status_code == 202
    (pair,) = response.json()["replayed"]
    replay = OutboxMessage.objects.get(pk=pair["replay"])
    assert replay.replay_of_id == row.pk
    assert replay.state == "pending"
    assert replay.needs_lookup  # the original may have landed after all
    assert replay.payload == row.payload
    row.refresh_from_db()
    assert row.state == "skipped"
    again = api_client_as(INTEGRATION_ADMIN).post(f"/api/v1/outbox/{row.pk}/replay/")
    assert again.status_code == 409
    assert "Only parked messages" in again.json()["detail"]


def test_admin_replays_the_whole_group_of_a_case(api_client_as: Callable[..., APIClient]) -> None:
    rows, case = _parked(3)
    response = api_client_as(INTEGRATION_ADMIN).post(
        "/api/v1/outbox/replay/", {"exception_case": case.pk}, format="json"
    )
    assert response.status_code == 202
    assert {p["original"] for p in response.json()["replayed"]} == {r.pk for r in rows}
    bad = api_client_as(INTEGRATION_ADMIN).post("/api/v1/outbox/replay/", {}, format="json")
    assert bad.status_code == 400


def test_finance_may_not_replay_or_read_the_outbox(api_client_as: Callable[..., APIClient]) -> None:
    (row, *_), _case = _parked(1)
    client = api_client_as(FINANCE)
    assert client.post(f"/api/v1/outbox/{row.pk}/replay/").status_code == 403
    assert client.get("/api/v1/outbox/").status_code == 403
    assert OutboxMessage.objects.count() == 1


def test_inbound_message_replay_links_the_original(api_client_as: Callable[..., APIClient]) -> None:
    connection = make_connection()
    original = InboundMessage.objects.create(
        connection=connection,
        source="webhook",
        object_type="Contacts",
        external_id="c-1",
        dedupe_key="xero:abc",
        payload={"resourceId": "c-1"},
        state="failed",
        error="boom",
    )
    response = api_client_as(INTEGRATION_ADMIN).post(
        "/api/v1/inbound/replay/", {"ids": [original.pk]}, format="json"
    )
    assert response.status_code == 202
    replay = InboundMessage.objects.get(replay_of=original)
    assert (replay.source, replay.state, replay.dedupe_key) == ("replay", "received", "xero:abc")
    listed = api_client_as(INTEGRATION_ADMIN).get("/api/v1/inbound/?state=failed").json()
    assert [m["id"] for m in listed["results"]] == [original.pk]


def _failed_inbound(connection: Connection, external_id: str) -> InboundMessage:
    return InboundMessage.objects.create(
        connection=connection,
        source="webhook",
        object_type="Contacts",
        external_id=external_id,
        dedupe_key=f"xero:{external_id}",
        payload={"resourceId": external_id},
        state="failed",
        error="Mapping failed",
    )


def test_inbound_replay_of_a_case_replays_the_messages_it_holds(
    api_client_as: Callable[..., APIClient],
) -> None:
    connection = make_connection()
    held = [_failed_inbound(connection, f"c-{i}") for i in range(3)]
    other = _failed_inbound(connection, "c-other")
    case = case_open_or_join(
        case_type="mapping_error",
        subject={
            "connection_id": connection.pk,
            "connection": connection.name,
            "object_type": "Contacts",
            "reason": "bad",
        },
        records=[Blocked(record_type="inboundmessage", record_id=m.pk) for m in held],
        process="inbound",
        step="mapping",
        connection_id=connection.pk,
    )
    response = api_client_as(INTEGRATION_ADMIN).post(
        "/api/v1/inbound/replay/", {"exception_case": case.pk}, format="json"
    )
    assert response.status_code == 202, response.json()
    assert sorted(p["original"] for p in response.json()["replayed"]) == [m.pk for m in held]
    assert not InboundMessage.objects.filter(replay_of=other).exists()


def test_a_replay_that_would_replay_nothing_is_refused_with_the_reason(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(INTEGRATION_ADMIN)
    rows, case = _parked(1)
    OutboxMessage.objects.update(state="done")
    by_ids = client.post("/api/v1/outbox/replay/", {"ids": [rows[0].pk]}, format="json")
    assert by_ids.status_code == 400
    assert "is parked" in by_ids.json()["detail"]
    by_case = client.post("/api/v1/outbox/replay/", {"exception_case": case.pk}, format="json")
    assert by_case.status_code == 400
    assert f"case {case.pk} holds no parked" in by_case.json()["detail"]
    inbound = client.post("/api/v1/inbound/replay/", {"exception_case": case.pk}, format="json")
    assert inbound.status_code == 400
    assert f"case {case.pk} holds no inbound messages" in inbound.json()["detail"]
    both = client.post(
        "/api/v1/inbound/replay/", {"ids": [1], "exception_case": case.pk}, format="json"
    )
    assert both.status_code == 400
    assert InboundMessage.objects.count() == 0
    assert OutboxMessage.objects.count() == 1
