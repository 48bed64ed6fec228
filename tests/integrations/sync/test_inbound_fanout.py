"""A backlog of one connection's deliveries is shared out among the worker processes: a batch
that claims a full BATCH rings for the next one before it works through its own (so an idle
process takes the next messages now, not once this batch is done); a batch that claims fewer
rings for nothing. Processing a delivery is routed to the `inbound` queue, which `make run`'s
inbound pool takes alone, so a delivery never waits behind a dispatch task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings

from config.celery import app
from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, InboundMessage
from integrations.sync import inbound, ring
from tests.integrations.conftest import Sandbox
from tests.integrations.sync.test_inbound_claim import _accounts, _webhooks

State = InboundMessage.State


@pytest.fixture
def crm(make_connection: Callable[..., Connection]) -> Connection:
    connection = make_connection("salesforce", rate_limit_per_minute=100_000, max_concurrency=10)
    mapping_defaults_install(connection=connection)
    return connection


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the batch does, in order: `ring` for each ring of another batch, `message` for
    each message it reads and maps (then applies)."""
    events: list[str] = []
    prepare = inbound._prepare

    def ring_inbound(connection_ids: Any, **kwargs: Any) -> None:
        events.append("ring")

    def prepared(message: InboundMessage, context: Any) -> Any:
        events.append("message")
        return prepare(message, context)

    monkeypatch.setattr(inbound, "ring_inbound", ring_inbound)
    monkeypatch.setattr(inbound, "_prepare", prepared)
    return events


@pytest.mark.django_db
def test_a_full_batch_rings_for_the_next_before_it_works(
    crm: Connection, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound, "BATCH", 3)
    ids = _webhooks(crm, "Account", _accounts(crm, 5))
    events = _spy(monkeypatch)

    assert inbound.inbound_process_batch(connection_id=crm.pk) == {"applied": 3}

    assert events == ["ring", "message", "message", "message"]
    states = dict(InboundMessage.objects.filter(pk__in=ids).values_list("pk", "state"))
    assert [states[pk] for pk in ids] == [State.APPLIED] * 3 + [State.RECEIVED] * 2


@pytest.mark.django_db
def test_a_batch_that_takes_the_rest_rings_for_none(
    crm: Connection, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound, "BATCH", 3)
    _webhooks(crm, "Account", _accounts(crm, 2))
    events = _spy(monkeypatch)

    assert inbound.inbound_process_batch(connection_id=crm.pk) == {"applied": 2}

    assert events == ["message", "message"]


def test_processing_deliveries_has_its_own_queue_and_pool() -> None:
    route = app.amqp.router.route({}, ring.PROCESS_INBOUND_BATCH, (1,), {})
    assert route["queue"].name == "inbound"
    # A worker started with every queue (tests, a single-process deployment) takes it too.
    assert "inbound" in settings.CONCORD_WORKER_QUEUES
    pools = settings.CONCORD_WORKER_POOLS
    assert any(queues == ["inbound"] for queues, _ in pools.values()) or len(pools) == 1
    # Every pool takes deliveries but the one for the calls out, which takes only those (a
    # dispatch task never waits behind other work); every queue has a pool.
    for name, (queues, _) in pools.items():
        if name == "outbox":
            assert queues == settings.CONCORD_OUTBOX_QUEUES
        else:
            assert "inbound" in queues
    assert {q for queues, _ in pools.values() for q in queues} == set(
        settings.CONCORD_WORKER_QUEUES
    )
