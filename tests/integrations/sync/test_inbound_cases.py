"""No silent failure inbound: every message that cannot be stored opens or joins a case for the
queue that keeps its system's data, naming the record and the field, one case per root cause,
holding the raw messages (so a replay by case, and its auto-close, work)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, Contract, Customer, InboundMessage, TimeEntry
from integrations.sync.inbound import inbound_process, inbound_replay
from integrations.sync.polling import poll_connection, poll_object
from integrations.vendors import connector_for
from tests.integrations.conftest import Sandbox
from tests.integrations.sync.test_inbound import _create_contact, _deliver, xero  # noqa: F401

pytestmark = pytest.mark.django_db


def _held(case: ExceptionCase) -> set[tuple[str, int]]:
    return set(case.blocked_records.values_list("record_type", "record_id"))


def test_a_webhook_contact_finance_must_fix_opens_a_finance_case_naming_record_and_field(
    xero: Connection,  # noqa: F811
    sandbox: Sandbox,
) -> None:
    # A contact without a currency now takes the tenant's base currency, so the ERP-owned field
    # Concord refuses here is the billing email (Xero stores any text there).
    contact_id = _create_contact(
        xero, Name="Bademail Ltd", DefaultCurrency="GBP", EmailAddress="accounts at bademail"
    )
    (first,) = _deliver(xero, contact_id, "2026-11-20T10:00:00")
    assert inbound_process(message_id=first) == "failed"

    case = ExceptionCase.objects.get(case_type="erp_record_invalid")
    assert case.queue == "finance"
    assert case.process == "inbound"
    assert f"Contacts {contact_id} (Bademail Ltd)" in case.message
    assert "Fix billing_email in Xero" in case.message
    assert "billing_email: Enter a valid email address." in case.message
    assert _held(case) == {("inboundmessage", first)}

    # A second contact with the same problem is the same root cause: it joins the case.
    other_id = _create_contact(
        xero, Name="Alsobad Ltd", DefaultCurrency="EUR", EmailAddress="nobody@"
    )
    (second,) = _deliver(xero, other_id, "2026-11-20T10:05:00")
    assert inbound_process(message_id=second) == "failed"
    case.refresh_from_db()
    assert ExceptionCase.objects.filter(case_type="erp_record_invalid").count() == 1
    assert _held(case) == {("inboundmessage", first), ("inboundmessage", second)}
    assert case.record_count == 2

    # Finance fixes both in Xero; replaying the case's messages applies them and closes it.
    sandbox.patch("xero", "Contacts", contact_id, {"EmailAddress": "accounts@bademail.example"})
    sandbox.patch("xero", "Contacts", other_id, {"EmailAddress": "ap@alsobad.example"})
    replays = inbound_replay(messages=list(InboundMessage.objects.filter(pk__in=[first, second])))
    assert [inbound_process(message_id=r.pk) for r in replays] == ["applied", "applied"]
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    assert Customer.objects.count() == 2


def _write(connection: Connection, operation: str, item: dict[str, Any]) -> str:
    connector = connector_for(connection)
    try:
        (result,) = connector.write(operation, [item], idempotency_key=item["External_Id__c"])
    finally:
        connector.close()
    assert result.ok, result.error
    return result.external_id


@pytest.fixture
def salesforce(make_connection: Callable[..., Connection], sandbox: Sandbox) -> Connection:
    sandbox.limits("*", enabled=False)
    connection = make_connection("salesforce", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=connection)
    return connection


def test_a_polled_salesforce_contract_missing_a_field_opens_a_sales_ops_case(
    salesforce: Connection, sandbox: Sandbox
) -> None:
    account = _write(
        salesforce,
        "create_account",
        {"Name": "Granite Retail Ltd", "External_Id__c": "acct-1", "CurrencyIsoCode": "GBP"},
    )
    poll_object(connection_id=salesforce.pk, object_type="Account")
    assert Customer.objects.filter(name="Granite Retail Ltd").exists()
    contract_id = _write(
        salesforce,
        "create_contract",
        # No Billing_Model__c: Concord cannot bill a contract without one.
        {
            "AccountId": account,
            "External_Id__c": "contract-1",
            "CurrencyIsoCode": "GBP",
            "Payment_Terms__c": "Net 30",
        },
    )

    report = poll_object(connection_id=salesforce.pk, object_type="Contract")

    assert report.failed == 1
    assert not Contract.objects.exists()
    kept = InboundMessage.objects.get(connection=salesforce, external_id=contract_id)
    assert kept.state == "failed"
    case = ExceptionCase.objects.get(case_type="crm_record_invalid")
    assert case.queue == "sales_ops"
    assert f"Contract {contract_id}" in case.message
    assert "Fix billing_model in Salesforce" in case.message
    assert _held(case) == {("inboundmessage", kept.pk)}


@pytest.fixture
def harvest(make_connection: Callable[..., Connection], sandbox: Sandbox) -> Connection:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    connection = make_connection("harvest", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=connection)
    return connection


def test_polled_entries_whose_project_is_unknown_share_one_integration_admin_case(
    harvest: Connection, sandbox: Sandbox
) -> None:
    from integrations.models import CrossReference

    poll_connection(connection_id=harvest.pk)
    entries = list(
        TimeEntry.objects.filter(project=TimeEntry.objects.order_by("pk")[0].project).order_by(
            "pk"
        )[:2]
    )
    assert len(entries) == 2
    project_id = entries[0].project_id
    CrossReference.objects.filter(
        connection=harvest, content_type__model="project", object_id=project_id
    ).delete()
    entry_ids = list(
        CrossReference.objects.filter(
            connection=harvest,
            content_type__model="timeentry",
            object_id__in=[e.pk for e in entries],
        ).values_list("external_id", flat=True)
    )
    for external_id in entry_ids:
        sandbox.patch("harvest", "time_entries", int(external_id), {"notes": "Changed later"})

    report = poll_object(connection_id=harvest.pk, object_type="time_entries")

    assert report.failed == 2
    case = ExceptionCase.objects.get(case_type="inbound_unknown_reference")
    assert case.queue == "integration_admin"
    assert "their project is not known to Concord" in case.message
    failed = set(
        InboundMessage.objects.filter(
            connection=harvest, external_id__in=entry_ids, state="failed"
        ).values_list("pk", flat=True)
    )
    assert len(failed) == 2
    assert _held(case) == {("inboundmessage", pk) for pk in failed}
