"""The Xero connector against the sandbox: auth, batches, item errors, idempotency, reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from integrations.connectors.errors import BusinessError, PermanentError, TransientError
from integrations.models import Connection, SyncAttempt
from integrations.timestamps import micros_of
from integrations.vendors import connector_for
from integrations.vendors.xero.connector import XeroConnector, validation_messages
from tests.integrations.conftest import NEW_TENANT, Sandbox

pytestmark = pytest.mark.django_db


def xero(connection: Connection, **options: Any) -> XeroConnector:
    connector = connector_for(connection, **options)
    assert isinstance(connector, XeroConnector)
    return connector


def invoice(n: int, contact: str = "Acme Ltd", tax: str = "OUTPUT2") -> dict[str, Any]:
    return {
        "Type": "ACCREC",
        "Contact": {"Name": contact},
        "Reference": f"concord-test-{n}",
        "Date": "2024-05-01",
        "LineAmountTypes": "Exclusive",
        "LineItems": [
            {
                "Description": f"Consulting {n}",
                "Quantity": 2,
                "UnitAmount": 100.0,
                "AccountCode": "200",
                "TaxType": tax,
            }
        ],
    }


def test_token_is_fetched_once_and_reused_across_instances(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    for _ in range(2):
        with xero(xero_connection) as connector:
            assert list(connector.read_changed("Currencies", None))
    assert sandbox.stats("xero", "connect")["requests"] == 1
    assert sandbox.stats("xero", "Currencies")["requests"] == 2


def test_put_invoices_batch_of_50_keeps_each_invoice_s_own_validation_error(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection)
    assert connector.batch_size["put_invoices"] == 50
    contacts = connector.write(
        "put_contacts", [{"Name": "Acme Ltd"}, {"Name": "NoVat GmbH"}], idempotency_key="c-1"
    )
    assert all(c.ok for c in contacts)
    items = [invoice(n) for n in range(49)] + [invoice(49, "NoVat GmbH", "ECZROUTPUTSERVICES")]

    results = connector.write("put_invoices", items, idempotency_key="batch-1")

    assert len(results) == 50
    assert all(r.ok for r in results[:49])
    assert len({r.external_id for r in results[:49]}) == 49
    # Xero's UpdatedDateUTC ("/Date(...+0000)/") in Concord's unit: microseconds.
    assert results[0].external_version == str(micros_of(results[0].data["UpdatedDateUTC"]))
    assert results[0].data["Reference"] == "concord-test-0"
    failed = results[49]
    assert not failed.ok
    assert isinstance(failed.error, BusinessError)
    assert "requires the contact to have a tax number" in failed.error.vendor_message
    assert "NoVat GmbH" in failed.error.vendor_message
    assert sandbox.stats("xero", "Invoices")["created"] == 49
    attempt = SyncAttempt.objects.filter(operation="put_invoices").get()
    assert attempt.outcome == "business"
    assert "1 of 50 Invoices refused" in attempt.error


def test_idempotency_key_replay_returns_the_first_result_after_a_dropped_response(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection)
    connector.tenant_id()
    connector.http.auth.headers(connector.http)  # type: ignore[union-attr]  # token first
    sandbox.faults("xero", drop_response_rate=1.0)
    with pytest.raises(TransientError, match="response dropped") as lost:
        connector.write("put_invoices", [invoice(1), invoice(2)], idempotency_key="k-42")
    assert lost.value.kind == "transient"
    assert sandbox.stats("xero", "Invoices")["created"] == 2  # applied, answer lost

    sandbox.faults("xero", drop_response_rate=0.0)
    results = connector.write("put_invoices", [invoice(1), invoice(2)], idempotency_key="k-42")

    assert all(r.ok for r in results)
    stats = sandbox.stats("xero", "Invoices")
    assert stats["created"] == 2
    assert stats["idempotent_replays"] == 1
    assert stats["duplicates_detected"] == 0
    stored = {r["id"] for r in sandbox.records("xero", "Invoices", NEW_TENANT)}
    assert {r.external_id for r in results} == stored


def test_find_existing_by_reference_in_one_call(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection)
    created = connector.write("put_invoices", [invoice(n) for n in range(3)], idempotency_key="f")

    found = connector.find_existing("put_invoices", [invoice(n) for n in range(4)])

    assert [f.external_id if f else None for f in found] == [
        *(c.external_id for c in created),
        None,
    ]
    # One GET with the references joined by OR, as Xero's `where` allows.
    stats = sandbox.stats("xero", "Invoices")
    assert stats["requests"] == 1 + 1
    assert stats["refused"]["by_status"] == {}


def test_find_existing_by_reference_where_or_is_refused(
    sandbox: Sandbox, xero_connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose `where` has no OR: the connector scans for the references' common prefix
    in one call, and asks one by one when they share none."""
    from integrations.vendors.xero import connector as xero_module

    monkeypatch.setattr(xero_module, "_no_where_or", {str(xero_connection.base_url)})
    connector = xero(xero_connection)
    created = connector.write("put_invoices", [invoice(n) for n in range(3)], idempotency_key="f")

    found = connector.find_existing("put_invoices", [invoice(n) for n in range(4)])

    assert [f.external_id if f else None for f in found] == [
        *(c.external_id for c in created),
        None,
    ]
    stats = sandbox.stats("xero", "Invoices")
    assert stats["requests"] == 1 + 1
    lone = connector.find_existing("put_invoices", [{"Reference": "a"}, {"Reference": "b"}])
    assert lone == [None, None]
    assert sandbox.stats("xero", "Invoices")["requests"] == 1 + 1 + 2


def test_find_existing_contacts_by_name_and_account_number(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection)
    connector.write(
        "put_contacts", [{"Name": "Acme Ltd", "AccountNumber": "C-1"}], idempotency_key="c"
    )
    found = connector.find_existing(
        "put_contacts",
        [
            {"Name": "acme ltd", "AccountNumber": "C-1"},
            {"Name": "Acme Ltd", "AccountNumber": "C-2"},
            {"Name": "Other"},
        ],
    )
    assert found[0] is not None
    assert found[0].data["Name"] == "Acme Ltd"
    assert found[1] is None
    assert found[2] is None


def test_read_changed_pages_to_the_end_oldest_first_and_since_is_inclusive(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection, page_size=3)
    created = connector.write("put_invoices", [invoice(n) for n in range(7)], idempotency_key="r")
    ids = [c.external_id for c in created]

    pages = list(connector.read_changed("Invoices", None))

    # Each page asks from the last one's newest stamp (inclusive), so pages overlap by one
    # record, which is skipped: 3 + 2 + 2 new records, in creation (= modification) order.
    assert [len(p) for p in pages] == [3, 2, 2]
    flat = [r for p in pages for r in p]
    assert [r["InvoiceID"] for r in flat] == ids
    assert sandbox.stats("xero", "Invoices")["requests"] == 1 + 4
    fifth = connector.version_of("Invoices", flat[4])
    assert fifth[0] == ids[4]
    from integrations.timestamps import micros_to_iso

    since = micros_to_iso(fifth[1])
    later = [r["InvoiceID"] for p in connector.read_changed("Invoices", since) for r in p]
    assert later == ids[4:]


def test_read_changed_does_not_skip_when_a_record_changes_mid_read(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection, page_size=3)
    ids = [
        c.external_id
        for c in connector.write(
            "put_invoices", [invoice(n) for n in range(7)], idempotency_key="m"
        )
    ]
    reader = connector.read_changed("Invoices", None)
    seen = [r["InvoiceID"] for r in next(reader)]
    # Someone edits the first invoice in Xero while we read: it moves to the end.
    sandbox.patch("xero", "Invoices", ids[0], {"Reference": "edited"})
    seen += [r["InvoiceID"] for page in reader for r in page]
    assert set(seen) == set(ids)
    assert seen[-1] == ids[0]


def test_tenant_is_discovered_by_name_once(
    sandbox: Sandbox, make_connection: Callable[..., Connection], sandbox_url: str
) -> None:
    credentials = {
        "client_id": "concord-xero",
        "client_secret": "sandbox-xero-secret",
        "token_url": f"{sandbox_url}/xero/connect/token",
        "tenant_name": "Concord ERP",
    }
    named = make_connection("xero", credentials=credentials)
    for _ in range(2):
        assert xero(named).tenant_id() == NEW_TENANT
    assert sandbox.stats("xero", "connections")["requests"] == 1

    ambiguous = make_connection("xero", credentials={**credentials, "tenant_name": ""})
    with pytest.raises(PermanentError, match="tenant ambiguous") as error:
        xero(ambiguous).tenant_id()
    assert "Concord Legacy ERP" in error.value.vendor_message


def test_put_tracking_options_creates_missing_and_finds_existing(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection)
    connector.http.call(
        "PUT",
        "/TrackingCategories",
        operation="test_setup",
        json_body={"Name": "Project"},
        headers=connector._headers(),
    )
    items = [
        {"TrackingCategoryName": "Project", "Name": "P-1 Apollo"},
        {"TrackingCategoryName": "Project", "Name": "P-2 Gemini"},
        {"TrackingCategoryName": "Region", "Name": "EMEA"},
    ]
    first = connector.write("put_tracking_options", items[:1], idempotency_key="t1")
    assert first[0].ok

    results = connector.write("put_tracking_options", items, idempotency_key="t2")

    assert results[0].ok
    assert results[0].external_id == first[0].external_id
    assert results[1].ok
    assert results[1].data["Name"] == "P-2 Gemini"
    assert isinstance(results[2].error, BusinessError)
    assert "Region" in results[2].error.vendor_message
    assert sandbox.stats("xero", "TrackingOptions").get("duplicates_detected", 0) == 0


def test_post_invoice_updates_one_and_maps_refusals_per_item(
    sandbox: Sandbox, xero_connection: Connection
) -> None:
    connector = xero(xero_connection)
    created = connector.write("put_invoices", [invoice(1)], idempotency_key="p")[0]

    updated = connector.write(
        "post_invoice",
        [{"InvoiceID": created.external_id, "Reference": "renamed"}],
        idempotency_key="p-upd",
    )[0]
    assert updated.ok
    assert updated.data["Reference"] == "renamed"
    assert updated.external_version >= created.external_version

    refused = connector.write(
        "post_invoice",
        [{"InvoiceID": created.external_id, "Status": "PAID"}],
        idempotency_key="p-bad",
    )[0]
    assert isinstance(refused.error, BusinessError)
    # A draft cannot jump to PAID: Xero's own words, kept for the person who reads the case.
    assert refused.error.vendor_message == (
        "Invoice not of valid status for modification. Current status: DRAFT"
    )

    missing = connector.write(
        "post_invoice",
        [{"InvoiceID": "00000000-0000-0000-0000-000000000001", "Reference": "x"}],
        idempotency_key="p-404",
    )[0]
    assert isinstance(missing.error, PermanentError)
    assert missing.error.status_code == 404


def test_a_complaint_xero_repeats_on_every_line_is_read_once() -> None:
    same = {"ValidationErrors": [{"Message": "The contact has no tax number."}]}
    element = {
        "ValidationErrors": [{"Message": "Account code is not valid."}],
        "LineItems": [same, same, same, {"ValidationErrors": [{"Message": "Bad quantity."}]}],
    }
    assert validation_messages(element) == [
        "Account code is not valid.",
        "The contact has no tax number.",
        "Bad quantity.",
    ]
