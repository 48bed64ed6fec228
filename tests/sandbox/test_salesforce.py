"""Salesforce REST shape (no published spec): token, sObject CRUD, SOQL paging, collections."""

from __future__ import annotations

import httpx

DATA = "/salesforce/services/data/v60.0"


def test_token_and_invalid_session(client: httpx.Client) -> None:
    bad = client.post(
        "/salesforce/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_client"
    good = client.post(
        "/salesforce/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "concord-salesforce",
            "client_secret": "sandbox-salesforce-secret",
        },
    ).json()
    assert good["token_type"] == "Bearer"
    assert good["instance_url"].endswith("/salesforce")
    denied = client.get(
        f"{DATA}/sobjects/Account/001000000000000AAA", headers={"Authorization": "Bearer nope"}
    )
    assert denied.status_code == 401
    assert denied.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}
    ]


def test_sobject_create_get_patch(salesforce: httpx.Client) -> None:
    created = salesforce.post(
        f"{DATA}/sobjects/Account", json={"Name": "Acme GmbH", "CurrencyIsoCode": "EUR"}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True
    assert body["errors"] == []
    assert len(body["id"]) == 18
    assert body["id"].startswith("001")
    account_id = body["id"]
    opp = salesforce.post(
        f"{DATA}/sobjects/Opportunity",
        json={
            "Name": "Acme - Build",
            "AccountId": account_id,
            "StageName": "Prospecting",
            "CloseDate": "2024-06-30",
            "Amount": 50000,
            "CurrencyIsoCode": "EUR",
        },
    ).json()
    assert (
        salesforce.patch(
            f"{DATA}/sobjects/Opportunity/{opp['id']}", json={"StageName": "Closed Won"}
        ).status_code
        == 204
    )
    record = salesforce.get(f"{DATA}/sobjects/Opportunity/{opp['id']}").json()
    assert record["attributes"] == {
        "type": "Opportunity",
        "url": f"/services/data/v60.0/sobjects/Opportunity/{opp['id']}",
    }
    assert record["IsWon"] is True
    assert record["Amount"] == 50000.0
    assert record["AccountId"] == account_id
    assert record["SystemModstamp"].endswith(".000+0000")
    assert record["LastModifiedDate"] == record["SystemModstamp"]
    some = salesforce.get(
        f"{DATA}/sobjects/Opportunity/{opp['id']}", params={"fields": "Name,StageName"}
    ).json()
    assert set(some) == {"attributes", "Name", "StageName"}
    contract = salesforce.post(
        f"{DATA}/sobjects/Contract",
        json={"AccountId": account_id, "StartDate": "2024-07-01", "ContractTerm": 12},
    ).json()
    got = salesforce.get(f"{DATA}/sobjects/Contract/{contract['id']}").json()
    assert got["EndDate"] == "2025-06-30"
    assert got["Status"] == "Draft"
    assert got["ContractNumber"]


def test_errors_are_a_json_list(salesforce: httpx.Client) -> None:
    missing = salesforce.post(f"{DATA}/sobjects/Opportunity", json={"Name": "No stage"})
    assert missing.status_code == 400
    assert missing.json() == [
        {
            "message": "Required fields are missing: [StageName, CloseDate]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["StageName", "CloseDate"],
        }
    ]
    unknown = salesforce.post(f"{DATA}/sobjects/Account", json={"Name": "X", "Nope__c": 1}).json()
    assert unknown[0]["errorCode"] == "INVALID_FIELD"
    assert unknown[0]["fields"] == ["Nope__c"]
    readonly = salesforce.post(
        f"{DATA}/sobjects/Opportunity",
        json={"Name": "X", "StageName": "Prospecting", "CloseDate": "2024-01-01", "IsWon": True},
    )
    assert readonly.json()[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    picklist = salesforce.post(
        f"{DATA}/sobjects/Account", json={"Name": "X", "CurrencyIsoCode": "JPY"}
    ).json()
    assert picklist[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    not_found = salesforce.get(f"{DATA}/sobjects/Account/0015g0000000ZZZAAA")
    assert not_found.status_code == 404
    assert not_found.json()[0]["errorCode"] == "NOT_FOUND"
    bad_query = salesforce.get(
        f"{DATA}/query", params={"q": "SELECT Id FROM Account WHERE Name = 'a' OR Name = 'b'"}
    )
    assert bad_query.status_code == 400
    assert bad_query.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_upsert_by_external_id(salesforce: httpx.Client, client: httpx.Client) -> None:
    url = f"{DATA}/sobjects/Account/External_Id__c/CUST-1"
    first = salesforce.patch(url, json={"Name": "Acme"})
    assert first.status_code == 201
    assert first.json()["created"] is True
    second = salesforce.patch(url, json={"Name": "Acme Renamed"})
    assert second.status_code == 200
    assert second.json() == {
        "id": first.json()["id"],
        "success": True,
        "errors": [],
        "created": False,
    }
    dup = salesforce.post(
        f"{DATA}/sobjects/Account", json={"Name": "Other", "External_Id__c": "CUST-1"}
    )
    assert dup.status_code == 400
    assert dup.json()[0]["errorCode"] == "DUPLICATE_VALUE"
    stats = client.get("/_control/stats").json()["systems"]["salesforce"]["Account"]
    assert stats["created"] == 1
    assert stats["updated"] == 1
    assert stats["duplicates_detected"] == 1


def test_collections_of_200_and_soql_paging(salesforce: httpx.Client) -> None:
    for batch in range(3):
        records = [
            {
                "attributes": {"type": "Account"},
                "Name": f"Account {batch}-{n}",
                "External_Id__c": f"A-{batch}-{n}",
            }
            for n in range(200 if batch < 2 else 50)
        ]
        results = salesforce.post(
            f"{DATA}/composite/sobjects", json={"allOrNone": True, "records": records}
        )
        assert results.status_code == 200
        assert all(r["success"] for r in results.json())
        assert len(results.json()) == len(records)
    too_many = salesforce.post(
        f"{DATA}/composite/sobjects",
        json={"records": [{"attributes": {"type": "Account"}, "Name": "x"}] * 201},
    )
    assert too_many.status_code == 400
    assert too_many.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    query = (
        "SELECT Id, Name, SystemModstamp FROM Account "
        "WHERE SystemModstamp > 2024-01-01T00:00:00Z ORDER BY SystemModstamp, Id"
    )
    page = salesforce.get(
        f"{DATA}/query", params={"q": query}, headers={"Sforce-Query-Options": "batchSize=200"}
    ).json()
    assert page["totalSize"] == 450
    assert page["done"] is False
    assert len(page["records"]) == 200
    seen = [r["Id"] for r in page["records"]]
    while not page["done"]:
        assert page["nextRecordsUrl"].startswith("/services/data/v60.0/query/")
        page = salesforce.get(f"/salesforce{page['nextRecordsUrl']}").json()
        seen += [r["Id"] for r in page["records"]]
    assert len(seen) == len(set(seen)) == 450
    assert "nextRecordsUrl" not in page
    limited = salesforce.get(
        f"{DATA}/query", params={"q": "SELECT Id FROM Account WHERE Name = 'Account 0-5' LIMIT 5"}
    ).json()
    assert limited["totalSize"] == 1
    assert limited["done"] is True
    count = salesforce.get(
        f"{DATA}/query", params={"q": "SELECT COUNT() FROM Account WHERE Name LIKE 'Account 2-%'"}
    ).json()
    assert count["totalSize"] == 50


def test_collection_all_or_none_and_update(salesforce: httpx.Client) -> None:
    records = [
        {"attributes": {"type": "Account"}, "Name": "Good"},
        {"attributes": {"type": "Account"}},
    ]
    rolled_back = salesforce.post(
        f"{DATA}/composite/sobjects", json={"allOrNone": True, "records": records}
    ).json()
    assert [r["success"] for r in rolled_back] == [False, False]
    assert rolled_back[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled_back[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert (
        salesforce.get(f"{DATA}/query", params={"q": "SELECT COUNT() FROM Account"}).json()[
            "totalSize"
        ]
        == 0
    )
    partial = salesforce.post(
        f"{DATA}/composite/sobjects", json={"allOrNone": False, "records": records}
    ).json()
    assert [r["success"] for r in partial] == [True, False]
    updated = salesforce.patch(
        f"{DATA}/composite/sobjects",
        json={
            "records": [
                {"attributes": {"type": "Account"}, "id": partial[0]["id"], "Industry": "Energy"}
            ]
        },
    ).json()
    assert updated == [{"id": partial[0]["id"], "success": True, "errors": []}]
    fetched = salesforce.get(
        f"{DATA}/composite/sobjects/Account",
        params={"ids": partial[0]["id"], "fields": "Name,Industry"},
    ).json()
    assert fetched[0]["Industry"] == "Energy"
