"""Inbound batches claim their messages: batch tasks of one connection running at once (every
webhook rings for one) each read and apply different messages, never the same ones twice; the
records a batch's webhooks name are read in the vendor's multi-record reads (Salesforce's
collection read, 200 ids a call)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection as db
from django.utils import timezone

from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, CrossReference, InboundMessage, SyncAttempt
from integrations.sync import inbound
from integrations.sync.inbound import inbound_claim, inbound_process_batch
from integrations.vendors import connector_for
from tests.integrations.conftest import Sandbox

State = InboundMessage.State


def _accounts(crm: Connection, count: int) -> list[str]:
    connector = connector_for(crm)
    try:
        results = connector.write(
            "create_account",
            [
                {
                    "Name": f"Claim {n:03d} Ltd",
                    "External_Id__c": f"ACC-claim-{n}",
                    "CurrencyIsoCode": "GBP",
                }
                for n in range(count)
            ],
            idempotency_key="accounts",
        )
    finally:
        connector.close()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return [r.external_id for r in results]


def _webhooks(crm: Connection, object_type: str, external_ids: list[str]) -> list[int]:
    """Messages as the webhook receiver stores them: they name the record, without its data."""
    made = InboundMessage.objects.bulk_create(
        InboundMessage(
            connection=crm,
            source=InboundMessage.Source.WEBHOOK,
            object_type=object_type,
            external_id=external_id,
            dedupe_key=uuid.uuid4().hex,
            payload={"Id": external_id},
        )
        for external_id in external_ids
    )
    return [m.pk for m in made]


@pytest.fixture
def crm(make_connection: Callable[..., Connection]) -> Connection:
    connection = make_connection("salesforce", rate_limit_per_minute=100_000, max_concurrency=10)
    mapping_defaults_install(connection=connection)
    return connection


@pytest.mark.django_db(transaction=True)
def test_batches_running_at_once_read_each_record_once(
    crm: Connection, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 20, three workers at once: 60 webhooks are three batches, whoever runs them.
    monkeypatch.setattr(inbound, "BATCH", 20)
    accounts = _accounts(crm, 60)
    ids = _webhooks(crm, "Account", accounts)
    reads_before = SyncAttempt.objects.filter(connection=crm, operation="fetch:Account").count()
    start = threading.Barrier(3)
    outcomes: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait(timeout=10)
            while outcome := inbound_process_batch(connection_id=crm.pk):
                outcomes.append(outcome)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    # Each message went through exactly one batch ...
    assert sum(sum(o.values()) for o in outcomes) == 60
    assert sorted(n for o in outcomes for n in o.values()) == [20, 20, 20]
    states = InboundMessage.objects.filter(pk__in=ids).values_list("state", flat=True)
    assert set(states) == {State.APPLIED}
    # ... which read its 20 records in one collection read: 60 records, three reads.
    reads = SyncAttempt.objects.filter(connection=crm, operation="fetch:Account").count()
    assert reads - reads_before == 3
    assert CrossReference.objects.filter(connection=crm, external_id__in=accounts).count() == 60


@pytest.mark.django_db
def test_a_claim_skips_held_messages_until_their_claim_runs_out(
    crm: Connection, sandbox: Sandbox
) -> None:
    ids = _webhooks(crm, "Account", [f"001{n:015d}" for n in range(5)])

    first = inbound_claim(connection_id=crm.pk, limit=3)
    second = inbound_claim(connection_id=crm.pk, limit=3)
    third = inbound_claim(connection_id=crm.pk, limit=3)

    assert [m.pk for m in first] == ids[:3]
    assert [m.pk for m in second] == ids[3:]
    assert third == []
    # A worker killed mid-batch: its claim runs out and the messages are anyone's again.
    InboundMessage.objects.filter(pk__in=ids[:3]).update(
        claimed_until=timezone.now() - timedelta(seconds=1)
    )
    assert [m.pk for m in inbound_claim(connection_id=crm.pk, limit=5)] == ids[:3]


@pytest.mark.django_db
def test_records_gone_or_unreadable_fail_their_own_message(
    crm: Connection, sandbox: Sandbox
) -> None:
    (present,) = _accounts(crm, 1)
    gone = "001" + "9" * 15
    ids = _webhooks(crm, "Account", [present, gone])

    outcome = inbound_process_batch(connection_id=crm.pk)

    assert outcome == {"applied": 1, "failed": 1}
    failed = InboundMessage.objects.get(pk=ids[1])
    assert failed.state == State.FAILED
    assert "no longer exists" in failed.error
    assert SyncAttempt.objects.filter(connection=crm, operation="fetch:Account").count() == 1


@pytest.mark.django_db
def test_a_vendor_down_leaves_the_batch_received_and_unclaimed(
    crm: Connection, sandbox: Sandbox
) -> None:
    accounts = _accounts(crm, 3)
    ids = _webhooks(crm, "Account", accounts)
    sandbox.faults("salesforce", error_rate=1.0)
    try:
        outcome = inbound_process_batch(connection_id=crm.pk)
    finally:
        sandbox.faults("salesforce", error_rate=0.0)

    assert outcome == {"retry": 3}
    # One failed read for the three, not one each; the messages wait, unclaimed, for the sweeper.
    assert SyncAttempt.objects.filter(connection=crm, operation="fetch:Account").count() == 1
    held = InboundMessage.objects.filter(pk__in=ids)
    assert set(held.values_list("state", flat=True)) == {State.RECEIVED}
    assert not held.filter(claimed_until__isnull=False).exists()
    assert inbound_process_batch(connection_id=crm.pk) == {"applied": 3}
