"""Inbound processing against the real sandbox: a webhook names a Xero contact, Concord reads it,
maps it through the published default mapping, applies ownership and the version check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, CrossReference, Customer, InboundMessage
from integrations.sync.inbound import inbound_process, inbound_replay
from integrations.sync.webhooks import webhook_receive
from integrations.vendors import connector_for
from tests.integrations.conftest import NEW_TENANT, Sandbox

pytestmark = pytest.mark.django_db

SECRET = "inbound-test-secret"


@pytest.fixture
def xero(make_connection: Callable[..., Connection]) -> Connection:
    connection = make_connection("xero", rate_limit_per_minute=600)
    connection.credentials = {**connection.credentials, "webhook_secret": SECRET}
    connection.save()
    mapping_defaults_install(connection=connection)
    return connection


def _create_contact(xero: Connection, **fields: Any) -> str:
    connector = connector_for(xero)
    try:
        (result,) = connector.write("put_contacts", [fields], idempotency_key=fields["Name"])
    finally:
        connector.close()
    assert result.ok, result.error
    return result.external_id


def _deliver(xero: Connection, contact_id: str, when: str) -> list[int]:
    body = json.dumps(
        {
            "events": [
                {
                    "resourceUrl": f"https://api.xero.com/api.xro/2.0/Contacts/{contact_id}",
                    "resourceId": contact_id,
                    "tenantId": NEW_TENANT,
                    "tenantType": "ORGANISATION",
                    "eventCategory": "CONTACT",
                    "eventType": "UPDATE",
                    "eventDateUtc": when,
                }
            ],
            "firstEventSequence": 1,
            "lastEventSequence": 1,
            "entropy": when,
        }
    ).encode()
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
    receipt = webhook_receive(
        connection=xero, body=body, headers={"x-xero-signature": signature.decode()}
    )
    return receipt.message_ids


def test_webhook_creates_the_customer_then_ownership_decides_what_changes(
    xero: Connection, sandbox: Sandbox
) -> None:
    contact_id = _create_contact(
        xero, Name="Acme GmbH", TaxNumber="DE811907980", DefaultCurrency="EUR"
    )
    (first,) = _deliver(xero, contact_id, "2026-11-20T10:00:00")
    assert inbound_process(message_id=first) == "applied"
    customer = Customer.objects.get()
    assert (customer.name, customer.tax_number, customer.currency) == (
        "Acme GmbH",
        "DE811907980",
        "EUR",
    )
    assert customer.source_system == "erp"
    source = customer.source_of("tax_number")
    assert source is not None
    assert source.system == "erp"
    xref = CrossReference.objects.get(connection=xero, object_id=customer.pk)
    assert xref.external_id == contact_id

    # The same change announced again: nothing newer to apply.
    (again,) = _deliver(xero, contact_id, "2026-11-20T10:00:01")
    assert inbound_process(message_id=again) == "stale"

    # In Xero someone corrects the VAT number (the ERP owns it) and renames the contact (the
    # CRM owns the name): the first is applied, the second becomes a case for the data steward.
    sandbox.patch("xero", "Contacts", contact_id, {"TaxNumber": "DE999999999", "Name": "ACME"})
    (changed,) = _deliver(xero, contact_id, "2026-11-20T11:00:00")
    assert inbound_process(message_id=changed) == "conflict"
    customer.refresh_from_db()
    assert customer.tax_number == "DE999999999"
    assert customer.name == "Acme GmbH"
    case = ExceptionCase.objects.get(case_type="ownership_conflict")
    assert case.queue == "integration_admin"
    assert "name to 'ACME' (owned by the CRM)" in case.message
    message = InboundMessage.objects.get(pk=changed)
    assert message.error == "Not applied (owned elsewhere): name"


def test_record_that_cannot_be_stored_fails_with_a_reason_and_can_be_replayed(
    xero: Connection, sandbox: Sandbox
) -> None:
    # Xero stores any text as an email address; the canonical customer needs a valid one.
    contact_id = _create_contact(xero, Name="Bademail Ltd", EmailAddress="accounts at bademail")
    (message_id,) = _deliver(xero, contact_id, "2026-11-20T10:00:00")
    assert inbound_process(message_id=message_id) == "failed"
    failed = InboundMessage.objects.get(pk=message_id)
    assert "billing_email" in failed.error
    assert not Customer.objects.exists()

    sandbox.patch("xero", "Contacts", contact_id, {"EmailAddress": "accounts@bademail.example"})
    (replay,) = inbound_replay(messages=[failed])
    assert inbound_process(message_id=replay.pk) == "applied"
    # The contact names no currency: it takes its tenant's base currency (the new ERP's GBP).
    assert Customer.objects.get().currency == "GBP"
    assert replay.replay_of_id == failed.pk
