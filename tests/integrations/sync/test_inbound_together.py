"""An inbound batch applies the records of its webhooks for one object together, as a poll
applies a page (integrations/sync/inbound.py `_upsert_together`): a handful of reads and one
write for all of them instead of a transaction each, to the same outcome as one by one: each
record stored once with its cross-reference, a second delivery of one record in the batch
stale, a record the database refuses failing alone. A batch refused as a whole (a deadlock
with another batch) goes one by one."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import DatabaseError
from django.db import connection as db
from django.test.utils import CaptureQueriesContext

from integrations.models import Connection, CrossReference, Customer, InboundMessage
from integrations.sync import inbound
from integrations.sync.inbound import inbound_process_batch
from tests.integrations.conftest import Sandbox
from tests.integrations.sync.test_inbound_claim import _accounts, _webhooks, crm  # noqa: F401

State = InboundMessage.State


def _stored(connection: Connection, accounts: list[str]) -> dict[str, str]:
    """Account id -> the name of the customer its cross-reference names."""
    names = dict(Customer.objects.values_list("pk", "name"))
    return {
        x.external_id: names[x.object_id]
        for x in CrossReference.objects.filter(
            connection=connection, content_type__model="customer", external_id__in=accounts
        )
    }


@pytest.mark.django_db
def test_a_batch_applies_its_records_together_to_the_outcome_of_one_by_one(
    crm: Connection,  # noqa: F811
    sandbox: Sandbox,
) -> None:
    accounts = _accounts(crm, 30)
    ids = _webhooks(crm, "Account", [*accounts, accounts[0]])

    with CaptureQueriesContext(db) as captured:
        outcomes = inbound_process_batch(connection_id=crm.pk)

    assert outcomes == {"applied": 30, "stale": 1}
    stored = _stored(crm, accounts)
    assert sorted(stored) == sorted(accounts)
    assert sorted(stored.values()) == [f"Claim {n:03d} Ltd" for n in range(30)]
    assert Customer.objects.count() == 30
    states = dict(InboundMessage.objects.filter(pk__in=ids).values_list("pk", "state"))
    assert [states[pk] for pk in ids] == [State.APPLIED] * 30 + [State.STALE]
    # One by one (each record applied in a transaction of its own, its tenant's facts and the
    # runs waiting for it looked up each time): 596 statements for this batch, measured;
    # together 39.
    assert len(captured.captured_queries) <= 60


@pytest.mark.django_db
def test_a_batch_refused_as_a_whole_goes_one_by_one(
    crm: Connection,  # noqa: F811
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = _accounts(crm, 5)
    _webhooks(crm, "Account", accounts)
    plan = inbound.plan_upsert

    def deadlocked(**kwargs: Any) -> Any:
        if len(kwargs["mapped"]) > 1:
            raise DatabaseError("deadlock detected")
        return plan(**kwargs)

    monkeypatch.setattr(inbound, "plan_upsert", deadlocked)
    with caplog.at_level(logging.WARNING):
        assert inbound_process_batch(connection_id=crm.pk) == {"applied": 5}

    assert "5 records applied together failed (deadlock detected): one by one" in caplog.text
    assert sorted(_stored(crm, accounts)) == sorted(accounts)
    assert Customer.objects.count() == 5
