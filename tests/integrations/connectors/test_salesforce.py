"""The Salesforce connector against the sandbox: token, collections of 200, SOQL reads."""

from __future__ import annotations

from typing import Any

import pytest

from integrations.connectors.errors import BusinessError
from integrations.models import Connection, SyncAttempt
from integrations.timestamps import micros_of, micros_to_iso
from integrations.vendors import connector_for
from integrations.vendors.salesforce.connector import SalesforceConnector
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db


def salesforce(connection: Connection, **options: Any) -> SalesforceConnector:
    connector = connector_for(connection, **options)
    assert isinstance(connector, SalesforceConnector)
    return connector


def account(n: int) -> dict[str, Any]:
    return {"Name": f"Account {n}", "External_Id__c": f"concord-acc-{n}", "Region__c": "EMEA"}


def test_collection_of_200_with_one_invalid_record_then_a_repeat_creates_nothing(
    sandbox: Sandbox, salesforce_connection: Connection
) -> None:
    connector = salesforce(salesforce_connection)
    assert connector.batch_size["create_account"] == 200
    items = [account(n) for n in range(199)] + [{"External_Id__c": "concord-acc-x"}]

    results = connector.write("create_account", items, idempotency_key="a")

    assert all(r.ok for r in results[:199])
    assert results[0].external_id.startswith("001")
    assert results[0].external_version == str(micros_of(results[0].data["SystemModstamp"]))
    assert results[0].data["Name"] == "Account 0"
    assert isinstance(results[199].error, BusinessError)
    assert "REQUIRED_FIELD_MISSING" in str(results[199].error)
    assert "Required fields are missing: [Name]" in results[199].error.vendor_message
    # One collection create and one collection read of the new records' SystemModstamp.
    assert sandbox.stats("salesforce", "composite")["requests"] == 2
    attempt = SyncAttempt.objects.get(operation="create_account")
    assert attempt.outcome == "business"

    again = connector.write("create_account", items[:199], idempotency_key="a")

    assert [r.external_id for r in again] == [r.external_id for r in results[:199]]
    assert sandbox.stats("salesforce", "Account")["created"] == 199
    assert sandbox.stats("salesforce", "composite")["requests"] == 2  # only a SOQL look-up
    assert sandbox.stats("salesforce", "Account").get("duplicates_detected", 0) == 0


def test_token_is_fetched_once_and_reused(
    sandbox: Sandbox, salesforce_connection: Connection
) -> None:
    for _ in range(2):
        with salesforce(salesforce_connection) as connector:
            list(connector.read_changed("Account", None))
    assert sandbox.stats("salesforce", "token")["requests"] == 1


def test_update_opportunity_per_record_outcomes(
    sandbox: Sandbox, salesforce_connection: Connection
) -> None:
    connector = salesforce(salesforce_connection)
    acc = connector.write("create_account", [account(1)], idempotency_key="a")[0]
    opp = connector.write(
        "create_opportunity",
        [
            {
                "Name": "Deal",
                "AccountId": acc.external_id,
                "StageName": "Prospecting",
                "CloseDate": "2024-06-30",
                "External_Id__c": "concord-opp-1",
            }
        ],
        idempotency_key="o",
    )[0]
    assert opp.ok

    results = connector.write(
        "update_opportunity",
        [
            {"Id": opp.external_id, "StageName": "Closed Won"},
            {"Id": opp.external_id, "StageName": "Won, we think"},
        ],
        idempotency_key="u",
    )

    assert results[0].ok
    assert results[0].data["IsWon"] is True
    assert results[0].external_version >= opp.external_version
    assert isinstance(results[1].error, BusinessError)
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in str(results[1].error)


def test_soql_reads_page_to_the_end_and_since_filters(
    sandbox: Sandbox, salesforce_connection: Connection
) -> None:
    connector = salesforce(salesforce_connection, page_size=200)
    connector.write("create_account", [account(n) for n in range(250)], idempotency_key="a")

    pages = list(connector.read_changed("Account", None))

    assert [len(p) for p in pages] == [200, 50]
    assert len({r["Id"] for p in pages for r in p}) == 250
    assert sandbox.stats("salesforce", "query")["requests"] >= 2
    stamps = [connector.version_of("Account", r)[1] for p in pages for r in p]
    assert stamps == sorted(stamps)

    newest = max(stamps)
    since = [r for p in connector.read_changed("Account", micros_to_iso(newest)) for r in p]
    assert since
    assert all(connector.version_of("Account", r)[1] >= newest for r in since)


def test_fetch_many_reads_200_records_a_call_and_names_the_missing_ones(
    sandbox: Sandbox, salesforce_connection: Connection
) -> None:
    connector = salesforce(salesforce_connection)
    assert connector.fetch_batch == 200
    made = connector.write("create_account", [account(n) for n in range(250)], idempotency_key="a")
    ids = [r.external_id for r in made]
    missing = "001" + "0" * 15
    before = SyncAttempt.objects.filter(operation="fetch:Account").count()

    found = connector.fetch_many("Account", [*ids, missing])

    # 251 ids: one collection read of 200 and one of 51, not 251 record reads.
    assert SyncAttempt.objects.filter(operation="fetch:Account").count() - before == 2
    assert found[missing] is None
    assert [found[i]["Id"] for i in ids] == ids
    assert found[ids[7]]["Name"] == "Account 7"
    assert found[ids[7]]["SystemModstamp"] == made[7].data["SystemModstamp"]
