"""Salesforce REST (the CRM): the only module that speaks to Salesforce.

``connection.base_url`` is the org's instance URL (``https://acme.my.salesforce.com``; the
sandbox's ``http://127.0.0.1:8100/salesforce``); paths are Salesforce's own under
``/services/data/v60.0`` (``/sobjects/...``, ``/query``, ``/composite/sobjects``).

Credentials (``connection.credentials``):

* ``client_id``, ``client_secret``: a connected app with the client-credentials flow;
* ``token_url``: default ``<base_url>/services/oauth2/token``.

Operations (``create_``/``update_`` + ``account`` | ``opportunity`` | ``contract``): sObject
Collections, up to 200 records per call with ``allOrNone: false`` so each record succeeds or
fails on its own. Updates carry the record's ``Id``. Salesforce has no Idempotency-Key, so a
create carries ``External_Id__c`` and ``write`` first looks those up (``find_existing``, one
SOQL ``IN`` query per 100): a create whose response was lost is found, not doubled. A
``DUPLICATE_VALUE`` on ``External_Id__c`` (created meanwhile) is looked up the same way.
After a write, one collection read fetches the records' ``SystemModstamp`` (the version).

Reads: ``Account``, ``Opportunity``, ``Contract``, ``Contract_Rate__c`` by SOQL ``WHERE
SystemModstamp >= since ORDER BY SystemModstamp, Id``, following ``nextRecordsUrl`` (a
server-side cursor over the result as it was at query time) to the end. The records webhooks
name are read 200 a call (``fetch_many``: the collection read ``GET /composite/sobjects/{type}``).
"""

from __future__ import annotations

from typing import Any

import httpx

from integrations.connectors.base import (
    BaseConnector,
    ItemResult,
    Page,
    Probe,
)
from integrations.connectors.errors import (
    BusinessError,
    ConnectorError,
    PermanentError,
    TransientError,
)
from integrations.connectors.http import (
    OAuthClientCredentials,
    VendorHTTP,
    default_error,
    retry_after_seconds,
)
from integrations.timestamps import micros_of, parse_timestamp
from integrations.vendors.echo import Answer, Echo, found_checked, written_checked

API_VERSION = "v60.0"
DATA = f"/services/data/{API_VERSION}"
# sObject Collections take at most 200 records per create/update request.
MAX_BATCH = 200
# Query pages: Salesforce's default and maximum batch is 2,000 records.
PAGE_SIZE = 2000
# External ids per look-up query: 100 x ~40 characters keeps the GET under Salesforce's
# 16,384-character URL limit with room for the field list.
LOOKUP_CHUNK = 100

_COMMON = ["Id", "External_Id__c", "CurrencyIsoCode", "Legal_Entity__c", "Region__c"]
_STAMPS = ["CreatedDate", "LastModifiedDate", "SystemModstamp"]
FIELDS: dict[str, list[str]] = {
    "Account": [
        *_COMMON,
        "Name",
        "AccountNumber",
        "Type",
        "Industry",
        "Phone",
        "Website",
        "BillingStreet",
        "BillingCity",
        "BillingPostalCode",
        "BillingState",
        "BillingCountry",
        "Description",
        "Tax_Number__c",
        "ERP_Customer_Id__c",
        "PSA_Client_Id__c",
        *_STAMPS,
    ],
    "Opportunity": [
        *_COMMON,
        "Name",
        "AccountId",
        "StageName",
        "CloseDate",
        "Amount",
        "Probability",
        "Type",
        "Description",
        "IsWon",
        "IsClosed",
        "Billing_Model__c",
        "PSA_Project_Id__c",
        "ERP_Project_Id__c",
        # Who delivers the deal (emails): provisioning staffs the PSA project with them.
        "Delivery_Lead__c",
        "Delivery_Team__c",
        *_STAMPS,
    ],
    "Contract": [
        *_COMMON,
        "AccountId",
        "Status",
        "StartDate",
        "ContractTerm",
        "EndDate",
        "ContractNumber",
        "Description",
        "SpecialTerms",
        "Opportunity__c",
        "Billing_Model__c",
        "Payment_Terms__c",
        "Tax_Profile__c",
        "Budget__c",
        "PSA_Project_Id__c",
        "ERP_Project_Id__c",
        *_STAMPS,
    ],
    # The contract's negotiated bill rate per role (a custom child object of Contract).
    "Contract_Rate__c": [
        *_COMMON,
        "Name",
        "Contract__c",
        "Role__c",
        "Hourly_Rate__c",
        *_STAMPS,
    ],
}
OPERATIONS = {
    f"{verb}_{obj.lower()}": (verb, obj) for verb in ("create", "update") for obj in FIELDS
}
# What each write's answer (the record as read back after it) must echo of what was sent
# (integrations/vendors/echo.py): a create its External_Id__c, an update the Id it named.
ANSWERS = {
    operation: Answer(
        obj.lower(),
        ("Name", "ContractNumber", "Id"),
        (Echo("External_Id__c"),)
        if verb == "create"
        else (Echo("Id", compare="salesforce_id"), Echo("id", "Id", compare="salesforce_id")),
    )
    for operation, (verb, obj) in OPERATIONS.items()
}

# Error codes a person fixes in the data (validation rules, required fields, picklists,
# references to missing records, duplicates, locked records).
BUSINESS_CODES = frozenset(
    {
        "REQUIRED_FIELD_MISSING",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "FIELD_FILTER_VALIDATION_EXCEPTION",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "FIELD_INTEGRITY_EXCEPTION",
        "DUPLICATE_VALUE",
        "DUPLICATES_DETECTED",
        "STRING_TOO_LONG",
        "INVALID_EMAIL_ADDRESS",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "ENTITY_IS_LOCKED",
        "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
        "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
    }
)
# Codes that go away by themselves.
TRANSIENT_CODES = frozenset(
    {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "UNKNOWN_EXCEPTION"}
)


def _error_of(code: str, message: str, status: int | None) -> ConnectorError:
    if code == "REQUEST_LIMIT_EXCEEDED":
        return TransientError("Salesforce request limit exceeded", vendor_message=message)
    if code in TRANSIENT_CODES:
        return TransientError(f"Salesforce temporary error {code}", vendor_message=message)
    if code in BUSINESS_CODES:
        return BusinessError(f"Salesforce validation error {code}", vendor_message=message)
    return PermanentError(f"Salesforce refused the request {code}", vendor_message=message)


def classify(response: httpx.Response) -> ConnectorError | None:
    """Salesforce's errors: a JSON list of ``{message, errorCode, fields}``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    errors = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    code = str(first.get("errorCode") or first.get("error") or "")
    message = "; ".join(
        str(e.get("message") or e.get("error_description") or "")
        for e in errors
        if isinstance(e, dict)
    )
    status = response.status_code
    if status == 401:
        return PermanentError("Salesforce authentication failed", vendor_message=message)
    if code == "REQUEST_LIMIT_EXCEEDED":
        # Salesforce answers 403 without Retry-After (the sandbox adds one as a hint). The
        # 24 h allocation recovers slowly: without a hint, wait a minute.
        retry_after = retry_after_seconds(response)
        return TransientError(
            "Salesforce request limit exceeded",
            vendor_message=message,
            retry_after=retry_after if retry_after is not None else 60.0,
        )
    if status >= 500 or status in (408, 429):
        return default_error(response, message)
    if code:
        return _error_of(code, message, status)
    return default_error(response, message)


def _soql_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


class SalesforceConnector(BaseConnector):
    vendor = "salesforce"
    page_size = PAGE_SIZE
    batch_size = dict.fromkeys(OPERATIONS, MAX_BATCH)
    # The collection read's ids per call: 200 x 19 characters keeps the GET, with the longest
    # field list, well under Salesforce's 16,384-character URL limit.
    fetch_batch = MAX_BATCH

    def make_http(self, **http_options: Any) -> VendorHTTP:
        base = str(self.connection.base_url).rstrip("/")
        auth = OAuthClientCredentials(
            token_url=str(self.credentials.get("token_url") or f"{base}/services/oauth2/token"),
            client_id=self.credential("client_id"),
            client_secret=self.credential("client_secret"),
            basic_auth=False,
        )
        return VendorHTTP(self.connection, auth=auth, classify=classify, **http_options)

    # -- writes ------------------------------------------------------------------------------

    def write(
        self,
        operation: str,
        items: list[dict[str, Any]],
        *,
        idempotency_key: str,
        message_ids: list[int] | None = None,
    ) -> list[ItemResult]:
        if operation not in OPERATIONS:
            raise self.unknown("operation", operation)
        verb, obj = OPERATIONS[operation]
        ids = list(message_ids or [])
        results: list[ItemResult] = []
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start : start + MAX_BATCH]
            if verb == "create":
                results += self._create(operation, obj, chunk, ids)
            else:
                results += self._update(operation, obj, chunk, ids)
        return written_checked(
            vendor="Salesforce", answer=ANSWERS[operation], items=items, results=results
        )

    def _create(
        self, operation: str, obj: str, items: list[dict[str, Any]], ids: list[int]
    ) -> list[ItemResult]:
        results: list[ItemResult | None] = list(self.find_existing(operation, items))
        todo = []
        for n, item in enumerate(items):
            if results[n] is not None:
                continue
            if not item.get("External_Id__c"):
                results[n] = ItemResult(
                    ok=False,
                    error=PermanentError(
                        f"{operation} needs External_Id__c (Salesforce has no idempotency key)"
                    ),
                )
                continue
            todo.append(n)
        if todo:
            records = [
                {"attributes": {"type": obj}, **{k: v for k, v in items[n].items() if k != "Id"}}
                for n in todo
            ]
            outcomes = self._collection("POST", operation, records, ids)
            duplicates = []
            for n, outcome in zip(todo, outcomes, strict=True):
                results[n] = outcome
                if (
                    not outcome.ok
                    and outcome.error is not None
                    and (
                        "DUPLICATE_VALUE" in str(outcome.error)
                        and "External_Id__c" in outcome.error.vendor_message
                    )
                ):
                    duplicates.append(n)
            if duplicates:
                # Created meanwhile (a lost response, another worker): it is ours.
                again = self.find_existing(operation, [items[n] for n in duplicates])
                for n, found in zip(duplicates, again, strict=True):
                    if found is not None:
                        results[n] = found
            self._versions(obj, [r for r in results if r is not None and r.ok and not r.data])
        return [
            r
            if r is not None
            else ItemResult(ok=False, error=PermanentError("no answer for this item"))
            for r in results
        ]

    def _update(
        self, operation: str, obj: str, items: list[dict[str, Any]], ids: list[int]
    ) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(items)
        todo: list[int] = []
        for n, item in enumerate(items):
            if item.get("Id") or item.get("id"):
                todo.append(n)
            else:
                results[n] = ItemResult(
                    ok=False, error=PermanentError(f"{operation} needs the record's Id")
                )
        if todo:
            records = []
            for n in todo:
                fields = {k: v for k, v in items[n].items() if k not in ("Id", "id")}
                records.append(
                    {
                        "attributes": {"type": obj},
                        "id": items[n].get("Id") or items[n]["id"],
                        **fields,
                    }
                )
            outcomes = self._collection("PATCH", operation, records, ids)
            for n, outcome in zip(todo, outcomes, strict=True):
                results[n] = outcome
            self._versions(obj, [r for r in results if r is not None and r.ok])
        return [
            r
            if r is not None
            else ItemResult(ok=False, error=PermanentError("no answer for this item"))
            for r in results
        ]

    def _collection(
        self, method: str, operation: str, records: list[dict[str, Any]], ids: list[int]
    ) -> list[ItemResult]:
        result = self.http.call(
            method,
            f"{DATA}/composite/sobjects",
            operation=operation,
            json_body={"allOrNone": False, "records": records},
            message_ids=ids,
        )
        answers = result.json()
        if not isinstance(answers, list) or len(answers) != len(records):
            raise PermanentError(
                "Salesforce answered with a different number of records than were sent",
                attempt_id=result.attempt_id,
                response_text=result.response.text,
            )
        outcomes: list[ItemResult] = []
        for answer in answers:
            if isinstance(answer, dict) and answer.get("success"):
                outcomes.append(ItemResult(ok=True, external_id=str(answer.get("id") or "")))
                continue
            errors = (answer or {}).get("errors") or [{}] if isinstance(answer, dict) else [{}]
            first = errors[0] if isinstance(errors[0], dict) else {}
            code = str(first.get("statusCode") or "UNKNOWN")
            message = "; ".join(
                str(e.get("message") or "")
                + (f" [{', '.join(e['fields'])}]" if e.get("fields") else "")
                for e in errors
                if isinstance(e, dict)
            )
            error = _error_of(code, message, 200)
            outcomes.append(
                ItemResult(ok=False, error=error, data=answer if isinstance(answer, dict) else {})
            )
        refused = [o for o in outcomes if not o.ok]
        if refused:
            kinds = {o.error.kind for o in refused if o.error}
            reasons = "; ".join(sorted({str(o.error.vendor_message) for o in refused if o.error}))
            self.http.note_outcome(
                result.attempt_id,
                outcome="business" if kinds == {"business"} else sorted(kinds)[0],
                error=f"{len(refused)} of {len(outcomes)} records refused: {reasons}",
            )
        return outcomes

    def _versions(self, obj: str, results: list[ItemResult]) -> None:
        """Fill in each written record as Salesforce now has it (SystemModstamp = version)."""
        wanted = [r for r in results if r.external_id]
        for start in range(0, len(wanted), MAX_BATCH):
            chunk = wanted[start : start + MAX_BATCH]
            result = self.http.call(
                "GET",
                f"{DATA}/composite/sobjects/{obj}",
                operation=f"read:{obj}",
                params={
                    "ids": ",".join(r.external_id for r in chunk),
                    "fields": ",".join(FIELDS[obj]),
                },
            )
            records = result.json()
            if not isinstance(records, list):
                continue
            for item, record in zip(chunk, records, strict=False):
                if isinstance(record, dict):
                    item.data = record
                    item.external_version = str(record.get("SystemModstamp") or "")

    # -- look-up-before-create ----------------------------------------------------------------

    def find_existing(self, operation: str, items: list[dict[str, Any]]) -> list[ItemResult | None]:
        if operation not in OPERATIONS:
            raise self.unknown("operation", operation)
        found = self._find_existing(operation, items)
        return found_checked(
            vendor="Salesforce", answer=ANSWERS[operation], items=items, results=found
        )

    def _find_existing(
        self, operation: str, items: list[dict[str, Any]]
    ) -> list[ItemResult | None]:
        verb, obj = OPERATIONS[operation]
        if verb == "update":
            return [None] * len(items)  # an update is safe to repeat
        keys = sorted({str(i["External_Id__c"]) for i in items if i.get("External_Id__c")})
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            # Field and object names come from FIELDS, values are quoted by _soql_string.
            soql = (
                f"SELECT {', '.join(FIELDS[obj])} FROM {obj} "  # noqa: S608
                f"WHERE External_Id__c IN ({', '.join(_soql_string(k) for k in chunk)})"
            )
            for records in self._query_pages(soql, f"find:{obj}"):
                for record in records:
                    found[str(record.get("External_Id__c"))] = record
        results: list[ItemResult | None] = []
        for item in items:
            match = found.get(str(item.get("External_Id__c") or ""))
            results.append(None if match is None else self._ok(match))
        return results

    @staticmethod
    def _ok(record: dict[str, Any]) -> ItemResult:
        return ItemResult(
            ok=True,
            external_id=str(record.get("Id") or ""),
            external_version=str(record.get("SystemModstamp") or ""),
            data=record,
        )

    # -- reads -------------------------------------------------------------------------------

    def _query(self, soql: str | None, next_url: str | None, operation: str) -> Page:
        headers = {"Sforce-Query-Options": f"batchSize={max(200, min(2000, self.page_size))}"}
        if next_url:
            result = self.http.call("GET", next_url, operation=operation, headers=headers)
        else:
            result = self.http.call(
                "GET", f"{DATA}/query", operation=operation, params={"q": soql}, headers=headers
            )
        body = result.json() or {}
        records = [r for r in body.get("records") or [] if isinstance(r, dict)]
        next_records = body.get("nextRecordsUrl") if not body.get("done", True) else None
        return Page(records, str(next_records) if next_records else None)

    def _query_pages(self, soql: str, operation: str) -> list[list[dict[str, Any]]]:
        pages = []
        page = self._query(soql, None, operation)
        pages.append(page.records)
        while page.next_cursor:
            page = self._query(None, page.next_cursor, operation)
            pages.append(page.records)
        return pages

    def read_page(self, object_type: str, since: str | None, cursor: str | None) -> Page:
        if object_type not in FIELDS:
            raise self.unknown("object", object_type)
        operation = f"read:{object_type}"
        if cursor:
            page = self._query(None, cursor, operation)
        else:
            where = ""
            if since:
                # Whole seconds, inclusive: Salesforce shows SystemModstamp to the second, so a
                # finer ``since`` must not drop a record of the same second.
                stamp = parse_timestamp(since).strftime("%Y-%m-%dT%H:%M:%SZ")
                where = f" WHERE SystemModstamp >= {stamp}"
            soql = (
                f"SELECT {', '.join(FIELDS[object_type])} FROM {object_type}{where} "  # noqa: S608
                "ORDER BY SystemModstamp ASC, Id ASC"
            )
            page = self._query(soql, None, operation)
        return page

    def fetch_one(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        if object_type not in FIELDS:
            raise self.unknown("object", object_type)
        result = self.http.call(
            "GET",
            f"{DATA}/sobjects/{object_type}/{external_id}",
            operation=f"fetch:{object_type}",
        )
        body = result.json()
        return body if isinstance(body, dict) else None

    def fetch_many(self, object_type: str, external_ids: list[str]) -> dict[str, Any]:
        """The records as Salesforce holds them now, 200 a call through the collection read
        (``GET /composite/sobjects/{type}?ids=&fields=``): 200 opportunities won at once cost
        one read, not 200. The answer lists the records in the order asked, ``null`` for an id
        that names no record; a record read is keyed by the id it was asked by (Salesforce
        answers 18-character ids to a 15-character one)."""
        if object_type not in FIELDS:
            raise self.unknown("object", object_type)
        wanted = list(dict.fromkeys(i for i in external_ids if i))
        found: dict[str, Any] = {}
        for start in range(0, len(wanted), self.fetch_batch):
            chunk = wanted[start : start + self.fetch_batch]
            result = self.http.call(
                "GET",
                f"{DATA}/composite/sobjects/{object_type}",
                operation=f"fetch:{object_type}",
                params={"ids": ",".join(chunk), "fields": ",".join(FIELDS[object_type])},
            )
            records = result.json()
            if not isinstance(records, list) or len(records) != len(chunk):
                raise PermanentError(
                    "Salesforce answered a collection read with a different number of records "
                    "than were asked for",
                    attempt_id=result.attempt_id,
                    response_text=result.response.text,
                )
            for ident, record in zip(chunk, records, strict=True):
                if record is not None and not (
                    isinstance(record, dict) and str(record.get("Id") or "")[:15] == ident[:15]
                ):
                    raise PermanentError(
                        f"Salesforce answered {ident} with another record",
                        attempt_id=result.attempt_id,
                    )
                found[ident] = record
        return found

    def probe(self) -> Probe:
        """``SELECT COUNT() FROM Account``: the smallest query that proves the token, the API
        version and the integration user's read access (how many accounts it sees)."""
        soql = "SELECT COUNT() FROM Account"
        result = self.http.call("GET", f"{DATA}/query", operation="test:query", params={"q": soql})
        body = result.json()
        answer = body if isinstance(body, dict) else {}
        count = answer.get("totalSize")
        return Probe(
            request=f"GET {DATA}/query?q={soql}",
            status_code=result.status_code,
            summary=f"Salesforce answered the query: the integration user sees {count} "
            f"account{'' if count == 1 else 's'} (API {API_VERSION}).",
            facts=[("totalSize", str(count)), ("api_version", API_VERSION)],
            attempt_id=result.attempt_id,
        )

    def version_of(self, object_type: str, record: dict[str, Any]) -> tuple[str, int]:
        return str(record.get("Id") or ""), micros_of(record.get("SystemModstamp"))
