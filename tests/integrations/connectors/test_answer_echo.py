"""A vendor's answer is believed only when it names what was sent: each connector's declared
echoes, checked without any HTTP (the stand-in test in tests/integrations/sync drives them)."""

from __future__ import annotations

from integrations.connectors.base import ItemResult
from integrations.vendors.echo import MISMATCH, AnswerMismatch, found_checked, written_checked
from integrations.vendors.harvest.connector import ANSWERS as HARVEST
from integrations.vendors.salesforce.connector import ANSWERS as SALESFORCE
from integrations.vendors.xero.connector import ANSWERS as XERO


def _ok(data: dict[str, object]) -> ItemResult:
    return ItemResult(ok=True, external_id="x", data=data)


def test_a_xero_invoice_with_another_reference_is_a_readable_permanent_failure() -> None:
    (result,) = written_checked(
        vendor="Xero",
        answer=XERO["put_invoices"],
        items=[{"Reference": "CONCORD-INV-9"}],
        results=[_ok({"InvoiceNumber": "INV-0042", "Reference": "CONCORD-INV-7"})],
    )
    assert not result.ok
    assert isinstance(result.error, AnswerMismatch)
    assert result.error.kind == "permanent"
    assert str(result.error).startswith(MISMATCH)
    assert result.error.vendor_message == (
        "Xero answered with invoice INV-0042 whose Reference CONCORD-INV-7 is not the "
        "CONCORD-INV-9 we sent."
    )
    assert result.data["InvoiceNumber"] == "INV-0042"  # kept for whoever looks into it


def test_an_answer_that_echoes_what_was_sent_stands() -> None:
    answer = _ok({"InvoiceNumber": "INV-0042", "Reference": "CONCORD-INV-9"})
    (result,) = written_checked(
        vendor="Xero",
        answer=XERO["put_invoices"],
        items=[{"Reference": "CONCORD-INV-9"}],
        results=[answer],
    )
    assert result is answer


def test_an_answer_without_the_reference_sent_is_refused() -> None:
    (result,) = written_checked(
        vendor="Xero",
        answer=XERO["put_invoices"],
        items=[{"Reference": "CONCORD-INV-9"}],
        results=[_ok({"InvoiceID": "ed255415"})],
    )
    assert result.error is not None
    assert result.error.vendor_message == (
        "Xero answered with invoice ed255415 without the Reference CONCORD-INV-9 we sent."
    )


def test_a_xero_contact_must_echo_its_contact_number_and_name() -> None:
    items = [
        {"Name": "Acme GmbH", "ContactNumber": "001A"},
        {"Name": "Acme GmbH", "ContactNumber": "001A"},
        {"Name": "Acme GmbH"},
    ]
    results = written_checked(
        vendor="Xero",
        answer=XERO["put_contacts"],
        items=items,
        results=[
            _ok({"Name": "ACME GMBH ", "ContactNumber": "001A"}),  # case and blanks: the same
            _ok({"Name": "Acme GmbH", "ContactNumber": "002B"}),
            _ok({"Name": "Initech"}),
        ],
    )
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error is not None
    assert "ContactNumber 002B is not the 001A we sent" in results[1].error.vendor_message
    assert results[2].error is not None
    assert "Name Initech is not the Acme GmbH we sent" in results[2].error.vendor_message


def test_failures_and_misses_pass_through_untouched() -> None:
    refused = ItemResult(ok=False)
    found = found_checked(
        vendor="Xero",
        answer=XERO["put_invoices"],
        items=[{"Reference": "A"}, {"Reference": "B"}],
        results=[None, refused],
    )
    assert found == [None, refused]


def test_a_harvest_project_must_come_back_under_the_client_it_was_created_for() -> None:
    (result,) = written_checked(
        vendor="Harvest",
        answer=HARVEST["create_project"],
        items=[{"client_id": 5, "code": "P-1", "name": "Apollo"}],
        results=[_ok({"id": 77, "code": "P-1", "name": "Apollo", "client": {"id": 6}})],
    )
    assert result.error is not None
    assert result.error.vendor_message == (
        "Harvest answered with project P-1 whose client.id 6 is not the 5 we sent."
    )


def test_a_harvest_update_must_answer_for_the_record_it_named() -> None:
    good, bad = written_checked(
        vendor="Harvest",
        answer=HARVEST["update_client"],
        items=[{"id": 12, "name": "A"}, {"id": 12, "name": "A"}],
        results=[_ok({"id": 12, "name": "A"}), _ok({"id": 13, "name": "A"})],
    )
    assert good.ok
    assert not bad.ok


def test_a_salesforce_create_must_echo_its_external_id() -> None:
    good, bad = written_checked(
        vendor="Salesforce",
        answer=SALESFORCE["create_account"],
        items=[{"External_Id__c": "concord-customer-1"}, {"External_Id__c": "concord-customer-2"}],
        results=[
            _ok({"Id": "001", "External_Id__c": "concord-customer-1"}),
            _ok({"Id": "002", "Name": "Acme", "External_Id__c": "concord-customer-9"}),
        ],
    )
    assert good.ok
    assert bad.error is not None
    assert bad.error.vendor_message == (
        "Salesforce answered with account Acme whose External_Id__c concord-customer-9 is not "
        "the concord-customer-2 we sent."
    )


def test_a_salesforce_update_accepts_the_18_character_form_of_the_id_sent() -> None:
    short, other = written_checked(
        vendor="Salesforce",
        answer=SALESFORCE["update_contract"],
        items=[{"Id": "800000000000001"}, {"Id": "800000000000001"}],
        results=[_ok({"Id": "800000000000001AAA"}), _ok({"Id": "800000000000002AAA"})],
    )
    assert short.ok
    assert not other.ok
