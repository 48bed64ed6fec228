"""The Harvest connector's writes for status back-sync, against the sandbox: an invoice and a
payment whose create may have landed (a retry after a lost answer, which the dispatcher looks
up before it writes again: integrations/sync/dispatch.py) are found, not made again; an
overpayment is Harvest's refusal, not a success."""

from __future__ import annotations

import pytest

from integrations.models import Connection
from integrations.vendors import connector_for
from integrations.vendors.harvest.connector import HarvestConnector
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db


def test_an_invoice_and_its_payment_are_created_once(
    sandbox: Sandbox, harvest_connection: Connection
) -> None:
    connector = connector_for(harvest_connection)
    assert isinstance(connector, HarvestConnector)
    (client,) = connector.write("create_client", [{"name": "Acme Ltd"}], idempotency_key="c")
    invoice = {
        "client_id": int(client.external_id),
        "number": "INV-0042",
        "tax": 20.0,
        "line_items": [
            {
                "kind": "Service",
                "description": "Work",
                "quantity": 2,
                "unit_price": 50,
                "taxed": True,
            }
        ],
    }
    first = connector.write("create_invoice", [invoice], idempotency_key="i1")[0]
    (again,) = connector.find_existing("create_invoice", [invoice])
    assert first.ok, first.error
    assert again is not None
    assert again.external_id == first.external_id
    assert first.data["amount"] == 120.0

    payment = {
        "invoice_id": int(first.external_id),
        "amount": 100.0,
        "paid_date": "2026-11-20",
        "notes": "ERP payment 0d666415",
    }
    paid = connector.write("create_invoice_payment", [payment], idempotency_key="p1")[0]
    (repeat,) = connector.find_existing("create_invoice_payment", [payment])
    assert paid.ok, paid.error
    assert repeat is not None
    assert repeat.external_id == paid.external_id
    assert sandbox.stats("harvest", "invoice_payments")["created"] == 1
    assert sandbox.stats("harvest", "invoices")["created"] == 1

    too_much = dict(payment, amount=50.0, notes="ERP payment 1f2e3d4c")
    (refused,) = connector.write("create_invoice_payment", [too_much], idempotency_key="p3")
    assert not refused.ok
    assert "exceeds" in str(refused.error.vendor_message if refused.error else "")
