"""A replayed inbound message that goes through takes its original off the case that held it."""

from __future__ import annotations

import pytest

from exceptions.models import ExceptionCase
from exceptions.services import Blocked, case_open_or_join
from integrations.models import Connection, Customer, InboundMessage
from integrations.sync.inbound import inbound_process, inbound_replay
from tests.integrations.conftest import Sandbox
from tests.integrations.sync.test_inbound import _create_contact, _deliver, xero  # noqa: F401

pytestmark = pytest.mark.django_db


def test_a_replay_that_applies_closes_the_case_holding_its_original(
    xero: Connection,  # noqa: F811
    sandbox: Sandbox,
) -> None:
    contact_id = _create_contact(xero, Name="Replayed Ltd", DefaultCurrency="GBP")
    (message_id,) = _deliver(xero, contact_id, "2026-11-20T10:00:00")
    original = InboundMessage.objects.get(pk=message_id)
    InboundMessage.objects.filter(pk=message_id).update(state="failed", error="Mapping failed")
    case = case_open_or_join(
        case_type="mapping_error",
        subject={
            "connection_id": xero.pk,
            "connection": xero.name,
            "object_type": "Contacts",
            "reason": "no name",
        },
        records=[Blocked(record_type="inboundmessage", record_id=original.pk)],
        process="inbound",
        step="mapping",
        connection_id=xero.pk,
    )

    (replay,) = inbound_replay(messages=[original])
    assert inbound_process(message_id=replay.pk) == "applied"

    assert Customer.objects.get().name == "Replayed Ltd"
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    assert case.record_count == 0
