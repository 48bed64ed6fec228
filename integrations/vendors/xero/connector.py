"""Xero Accounting (the ERP): the only module that speaks to Xero.

Paths are the spec's (``xero-accounting.yaml``) appended to ``connection.base_url``, which is
the Accounting API root: ``https://api.xero.com/api.xro/2.0`` for the real service,
``http://127.0.0.1:8100/xero/api.xro/2.0`` for the sandbox. The identity API's
``/connections`` is found next to it (``.../api.xro/2.0`` -> ``.../connections``).

Credentials (``connection.credentials``):

* ``client_id``, ``client_secret``: a Xero custom connection (OAuth 2.0 client credentials);
* ``token_url``: default ``https://identity.xero.com/connect/token``;
* ``tenant_id``: the organisation; if absent, discovered once per process with
  ``GET /connections`` (the only tenant, or the one named ``tenant_name``);
* optional ``scope``, ``tenant_name``, ``connections_url``.

Operations: ``put_invoices`` (PUT /Invoices, up to 50 ACCREC invoices, ``summarizeErrors=false``
so each invoice succeeds or fails on its own), ``put_contacts`` (PUT /Contacts, up to 50),
``post_contacts`` (POST /Contacts, up to 50 updates, each naming its ``ContactID``: only the
fields sent change), ``post_invoice`` (POST /Invoices/{InvoiceID}, one update),
``put_tracking_options`` (PUT /TrackingCategories/{id}/Options: the project dimension; items
``{"TrackingCategoryName" or "TrackingCategoryID", "Name"}``). Every write carries
``Idempotency-Key``: a re-send of the same request within Xero's 24 h gets the first answer
back instead of a second invoice. Note that this includes a first answer that refused an
invoice: a retry after a person fixed the data must use a new key (the outbox derives one per
set of rows, and replays get new rows).

Look-up-before-create (``find_existing``) matches invoices by ``Reference`` and contacts by
``Name`` (+ ``AccountNumber`` when given), with ``where`` clauses joined by ``OR`` (one call per
25 items). A server whose ``where`` has no ``OR`` (the sandbox) answers 400
QueryParseException; the connector remembers that per base URL and instead scans with
``searchTerm`` for the references' common prefix (a page or two), or asks once per item.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime
from typing import Any

import httpx

from integrations.connectors.base import (
    BaseConnector,
    ItemResult,
    Page,
    Probe,
    probe_facts,
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
from integrations.timestamps import format_rfc3339, micros_of, parse_timestamp, to_micros
from integrations.vendors.echo import Answer, Echo, found_checked, written_checked

DEFAULT_TOKEN_URL = "https://identity.xero.com/connect/token"  # noqa: S105 - a URL
# Xero's guidance: at most 50 elements per PUT/POST (larger bodies risk its 30 s timeout).
MAX_BATCH = 50
# Invoices, contacts and payments page up to 1,000 per call. At 60 calls a minute the call
# count is what limits a read, so the largest page wins (~2-3 MB of invoices with lines).
PAGE_SIZE = 1000
# References per ``where`` look-up: a whole batch (MAX_BATCH), so a retried batch costs one
# look-up call, not two, before its PUT (under faults, each extra call is another chance to
# fail). 50 x ~60 characters, ~4.5 KB once encoded, stays below common 8 KB URL limits.
LOOKUP_CHUNK = MAX_BATCH
# Without ``OR`` (see _scan_prefix): a prefix shorter than this would match too much, and a
# scan longer than this many pages costs more than asking for each of 25 values.
MIN_SCAN_PREFIX = 8
MAX_SCAN_PAGES = 5

PAGED_ID = {"Invoices": "InvoiceID", "Contacts": "ContactID", "Payments": "PaymentID"}
UNPAGED_ID = {
    "TaxRates": "TaxType",
    "Currencies": "Code",
    "TrackingCategories": "TrackingCategoryID",
    "Accounts": "AccountID",
}
# Reference data Xero lists without a modification stamp (the spec's TaxRate and Currency have
# no UpdatedDateUTC): every read returns all of them, and the poller applies those whose content
# changed since they were last kept (integrations/sync/polling.py).
UNVERSIONED = frozenset({"TaxRates", "Currencies", "Accounts"})

# What each write's answer must echo of what was sent (integrations/vendors/echo.py): an invoice
# its Reference (CONCORD-INV-<id>), a contact its ContactNumber and Name, an update the
# InvoiceID it named, a tracking option its name.
_INVOICE = ("InvoiceNumber", "InvoiceID")
ANSWERS = {
    "put_invoices": Answer("invoice", _INVOICE, (Echo("Reference"),)),
    "post_invoice": Answer(
        "invoice", _INVOICE, (Echo("InvoiceID", compare="fold"), Echo("Reference"))
    ),
    "put_contacts": Answer(
        "contact", ("Name", "ContactID"), (Echo("ContactNumber"), Echo("Name", compare="fold"))
    ),
    "post_contacts": Answer("contact", ("Name", "ContactID"), (Echo("ContactID", compare="fold"),)),
    "put_tracking_options": Answer(
        "tracking option", ("Name", "TrackingOptionID"), (Echo("Name", compare="fold"),)
    ),
}

# Batch writes: operation -> (collection, method). PUT creates; POST with the record's id updates
# the fields sent and leaves the others as they are.
WRITES = {
    "put_invoices": ("Invoices", "PUT"),
    "put_contacts": ("Contacts", "PUT"),
    "post_contacts": ("Contacts", "POST"),
}

# (base URL, client id, tenant name) -> tenant id, discovered once per process.
_tenants: dict[tuple[str, str, str], str] = {}
# Base URLs whose ``where`` refused ``OR`` (the sandbox), so look-ups go one by one.
_no_where_or: set[str] = set()
_lock = threading.Lock()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def validation_messages(element: dict[str, Any]) -> list[str]:
    """The ``ValidationErrors`` of an element and of its line items, in Xero's words, each
    once: Xero repeats a line's complaint on every line (a missing tax number on a 40-line
    invoice is one problem, not forty)."""
    messages = [
        str(e.get("Message"))
        for e in element.get("ValidationErrors") or []
        if isinstance(e, dict) and e.get("Message")
    ]
    for line in element.get("LineItems") or []:
        if isinstance(line, dict):
            messages.extend(
                str(e.get("Message"))
                for e in line.get("ValidationErrors") or []
                if isinstance(e, dict) and e.get("Message")
            )
    return list(dict.fromkeys(messages))


def classify(response: httpx.Response) -> ConnectorError | None:
    """Xero's error bodies: ValidationException (400), problem objects (401/403/404/429/5xx)."""
    body = _json(response)
    status = response.status_code
    if status == 400 and isinstance(body, dict):
        kind = str(body.get("Type") or "")
        messages = [m for el in body.get("Elements") or [] for m in validation_messages(el)]
        text = "; ".join(messages) or str(body.get("Message") or "")
        if kind == "ValidationException":
            if "Idempotency-Key" in text:
                # Our defect: the same key sent with a different body. No data fix helps.
                return PermanentError(
                    "Xero idempotency key reused for a different request", vendor_message=text
                )
            return BusinessError("Xero validation error", vendor_message=text)
        return PermanentError(
            f"Xero refused the request: {kind or 'bad request'}", vendor_message=text
        )
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("Detail") or body.get("Title") or body.get("Message") or "")
    if status == 401:
        return PermanentError("Xero authentication failed", vendor_message=detail)
    if status == 403:
        return PermanentError(
            "Xero refused access to the organisation (tenant not connected or scope missing)",
            vendor_message=detail,
        )
    if status == 404:
        return PermanentError("Xero record not found", vendor_message=detail)
    if status == 429:
        problem = response.headers.get("x-rate-limit-problem", "")
        retry_after = retry_after_seconds(response)
        return TransientError(
            f"throttled by Xero (429 {problem or 'limit'})",
            vendor_message=detail,
            retry_after=retry_after if retry_after is not None else 60.0,
        )
    return default_error(response, detail)


def _if_modified_since(micros: int) -> str:
    """The spec's ``date-time`` (RFC 3339, so with its offset: ``2024-05-01T10:00:00.123Z``),
    to the millisecond, Xero's precision; inclusive. A value without an offset is not a
    ``date-time``, and a server may read it in any zone it likes."""
    return format_rfc3339(micros)


def _stamp(record: dict[str, Any]) -> datetime | None:
    value = record.get("UpdatedDateUTC")
    return parse_timestamp(value) if isinstance(value, str) and value else None


def _quote(value: str) -> str | None:
    """A ``where`` string literal, or None when the value cannot be written as one."""
    return None if '"' in value or "\\" in value else f'"{value}"'


class XeroConnector(BaseConnector):
    vendor = "xero"
    page_size = PAGE_SIZE
    unversioned_reads = UNVERSIONED
    batch_size = {
        "put_invoices": MAX_BATCH,
        "put_contacts": MAX_BATCH,
        "post_contacts": MAX_BATCH,
        "post_invoice": 1,
        "put_tracking_options": MAX_BATCH,
    }
    # Xero keeps an Idempotency-Key's first answer for 24 hours; an hour's margin.
    idempotency_window_s = 23 * 3600.0

    def make_http(self, **http_options: Any) -> VendorHTTP:
        auth = OAuthClientCredentials(
            token_url=str(self.credentials.get("token_url") or DEFAULT_TOKEN_URL),
            client_id=self.credential("client_id"),
            client_secret=self.credential("client_secret"),
            basic_auth=True,  # Xero's documented way; the sandbox takes form fields too
            scope=self.credentials.get("scope") or None,
        )
        return VendorHTTP(self.connection, auth=auth, classify=classify, **http_options)

    # -- tenant ------------------------------------------------------------------------------

    def tenant_id(self) -> str:
        if self.credentials.get("tenant_id"):
            return str(self.credentials["tenant_id"])
        base = str(self.connection.base_url).rstrip("/")
        wanted = str(self.credentials.get("tenant_name") or "")
        key = (base, str(self.credentials.get("client_id")), wanted)
        with _lock:
            if key in _tenants:
                return _tenants[key]
        root = base[: -len("/api.xro/2.0")] if base.endswith("/api.xro/2.0") else base
        url = str(self.credentials.get("connections_url") or f"{root}/connections")
        tenants = self.http.call("GET", url, operation="discover_tenant").json()
        if not isinstance(tenants, list):
            raise PermanentError("Xero connections answer is not a list")
        matches = [
            t
            for t in tenants
            if isinstance(t, dict) and (not wanted or t.get("tenantName") == wanted)
        ]
        if len(matches) != 1:
            names = ", ".join(str(t.get("tenantName")) for t in tenants if isinstance(t, dict))
            raise PermanentError(
                "Xero tenant ambiguous: set tenant_id or tenant_name in the credentials",
                vendor_message=f"Connected organisations: {names or 'none'}",
            )
        tenant = str(matches[0]["tenantId"])
        with _lock:
            _tenants[key] = tenant
        return tenant

    def _headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Xero-Tenant-Id": self.tenant_id()}
        if idempotency_key:
            headers["Idempotency-Key"] = _key(idempotency_key)
        return headers

    # -- writes ------------------------------------------------------------------------------

    def write(
        self,
        operation: str,
        items: list[dict[str, Any]],
        *,
        idempotency_key: str,
        message_ids: list[int] | None = None,
    ) -> list[ItemResult]:
        results = self._write(operation, items, idempotency_key, list(message_ids or []))
        return written_checked(
            vendor="Xero", answer=ANSWERS.get(operation), items=items, results=results
        )

    def _write(
        self, operation: str, items: list[dict[str, Any]], idempotency_key: str, ids: list[int]
    ) -> list[ItemResult]:
        if not items:
            return []
        if operation == "put_tracking_options":
            return self._put_tracking_options(items, idempotency_key, ids)
        if operation == "post_invoice":
            return [
                self._post_invoice(item, f"{idempotency_key}:{n}" if n else idempotency_key, ids)
                for n, item in enumerate(items)
            ]
        collection, method = WRITES.get(operation, ("", ""))
        if not collection:
            raise self.unknown("operation", operation)
        results: list[ItemResult] = []
        for n, start in enumerate(range(0, len(items), MAX_BATCH)):
            key = f"{idempotency_key}:{n}" if n else idempotency_key
            batch = items[start : start + MAX_BATCH]
            results += self._put(collection, batch, key, ids, operation, method=method)
        return results

    def _put(
        self,
        collection: str,
        items: list[dict[str, Any]],
        key: str,
        message_ids: list[int],
        operation: str,
        *,
        method: str = "PUT",
    ) -> list[ItemResult]:
        result = self.http.call(
            method,
            f"/{collection}",
            operation=operation,
            params={"summarizeErrors": "false"},
            json_body={collection: items},
            headers=self._headers(key),
            message_ids=message_ids,
        )
        elements = (result.json() or {}).get(collection)
        if not isinstance(elements, list) or len(elements) != len(items):
            raise PermanentError(
                f"Xero answered with a different number of {collection} than were sent",
                attempt_id=result.attempt_id,
                response_text=result.response.text,
            )
        results = [self._element(collection, el) for el in elements]
        self._note_refusals(result.attempt_id, collection, results)
        return results

    def _note_refusals(
        self, attempt_id: int | None, collection: str, results: list[ItemResult]
    ) -> None:
        refused = [r for r in results if not r.ok and r.error is not None]
        if refused:
            reasons = "; ".join(sorted({r.error.vendor_message for r in refused if r.error}))
            self.http.note_outcome(
                attempt_id,
                outcome="business",
                error=f"{len(refused)} of {len(results)} {collection} refused: {reasons}",
            )

    def _element(self, collection: str, element: Any) -> ItemResult:
        if not isinstance(element, dict):
            return ItemResult(ok=False, error=PermanentError("Xero element is not an object"))
        messages = validation_messages(element)
        if messages or element.get("StatusAttributeString") == "ERROR":
            return ItemResult(
                ok=False,
                error=BusinessError(
                    "Xero validation error",
                    status_code=200,
                    vendor_message="; ".join(messages) or "refused without a message",
                ),
                data=element,
            )
        id_field = PAGED_ID.get(collection, "")
        return ItemResult(
            ok=True,
            external_id=str(element.get(id_field) or ""),
            external_version=str(element.get("UpdatedDateUTC") or ""),
            data=element,
        )

    def _post_invoice(self, item: dict[str, Any], key: str, message_ids: list[int]) -> ItemResult:
        invoice_id = str(item.get("InvoiceID") or "")
        if not invoice_id:
            return ItemResult(
                ok=False, error=PermanentError("post_invoice needs the InvoiceID to update")
            )
        try:
            result = self.http.call(
                "POST",
                f"/Invoices/{invoice_id}",
                operation="post_invoice",
                params={"summarizeErrors": "false"},
                json_body={"Invoices": [item]},
                headers=self._headers(key),
                message_ids=message_ids,
            )
        except (BusinessError, PermanentError) as exc:
            if exc.status_code in (400, 404):
                return ItemResult(ok=False, error=exc)
            raise
        elements = (result.json() or {}).get("Invoices") or [None]
        outcome = self._element("Invoices", elements[0])
        self._note_refusals(result.attempt_id, "Invoices", [outcome])
        return outcome

    def _categories(self) -> list[dict[str, Any]]:
        result = self.http.call(
            "GET",
            "/TrackingCategories",
            operation="read:TrackingCategories",
            headers=self._headers(),
        )
        return list((result.json() or {}).get("TrackingCategories") or [])

    def _category_of(
        self, item: dict[str, Any], categories: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        wanted_id = str(item.get("TrackingCategoryID") or "").lower()
        wanted_name = str(item.get("TrackingCategoryName") or "").casefold()
        for category in categories:
            if wanted_id and str(category.get("TrackingCategoryID", "")).lower() == wanted_id:
                return category
            if wanted_name and str(category.get("Name", "")).casefold() == wanted_name:
                return category
        return None

    def _existing_options(
        self, items: list[dict[str, Any]], categories: list[dict[str, Any]]
    ) -> list[ItemResult | None]:
        found: list[ItemResult | None] = []
        for item in items:
            category = self._category_of(item, categories)
            name = str(item.get("Name") or "").casefold()
            option = next(
                (
                    o
                    for o in (category or {}).get("Options") or []
                    if str(o.get("Name", "")).casefold() == name
                ),
                None,
            )
            found.append(
                None
                if option is None
                else ItemResult(ok=True, external_id=str(option["TrackingOptionID"]), data=option)
            )
        return found

    def _put_tracking_options(
        self, items: list[dict[str, Any]], key: str, message_ids: list[int]
    ) -> list[ItemResult]:
        categories = self._categories()
        results: list[ItemResult | None] = list(self._existing_options(items, categories))
        by_category: dict[str, list[int]] = {}
        for n, item in enumerate(items):
            if results[n] is not None:
                continue
            category = self._category_of(item, categories)
            if category is None:
                named = item.get("TrackingCategoryName") or item.get("TrackingCategoryID")
                results[n] = ItemResult(
                    ok=False,
                    error=BusinessError(
                        "Xero tracking category missing",
                        vendor_message=f"Tracking category '{named}' does not exist in Xero",
                    ),
                )
                continue
            by_category.setdefault(str(category["TrackingCategoryID"]), []).append(n)
        for number, (category_id, positions) in enumerate(by_category.items()):
            body = {"Options": [{"Name": items[n]["Name"]} for n in positions]}
            try:
                result = self.http.call(
                    "PUT",
                    f"/TrackingCategories/{category_id}/Options",
                    operation="put_tracking_options",
                    json_body=body,
                    headers=self._headers(f"{key}:{number}" if number else key),
                    message_ids=message_ids,
                )
            except BusinessError as exc:
                # Xero checks option names as a whole request: all of them share the refusal.
                for n in positions:
                    results[n] = ItemResult(ok=False, error=exc)
                continue
            options = (result.json() or {}).get("Options") or []
            for n, option in zip(positions, options, strict=False):
                results[n] = ItemResult(
                    ok=True, external_id=str(option.get("TrackingOptionID", "")), data=option
                )
            for n in positions[len(options) :]:
                results[n] = ItemResult(
                    ok=False, error=PermanentError("Xero did not return the created option")
                )
        return [
            r
            if r is not None
            else ItemResult(ok=False, error=PermanentError("no answer for this item"))
            for r in results
        ]

    # -- look-up-before-create ----------------------------------------------------------------

    def find_existing(self, operation: str, items: list[dict[str, Any]]) -> list[ItemResult | None]:
        found = self._find_existing(operation, items)
        return found_checked(
            vendor="Xero", answer=ANSWERS.get(operation), items=items, results=found
        )

    def _find_existing(
        self, operation: str, items: list[dict[str, Any]]
    ) -> list[ItemResult | None]:
        if operation in ("post_invoice", "post_contacts"):
            return [None] * len(items)  # an update is safe to repeat
        if operation == "put_tracking_options":
            return self._existing_options(items, self._categories())
        if operation == "put_invoices":
            return self._lookup(
                "Invoices",
                "Reference",
                items,
                lambda item, record: (
                    bool(item.get("Reference"))
                    and record.get("Reference") == item.get("Reference")
                    and record.get("Type", "ACCREC") == item.get("Type", "ACCREC")
                ),
            )
        if operation == "put_contacts":
            return self._lookup(
                "Contacts",
                "Name",
                items,
                lambda item, record: (
                    bool(item.get("Name"))
                    and str(record.get("Name", "")).casefold() == str(item["Name"]).casefold()
                    and (
                        not item.get("AccountNumber")
                        or record.get("AccountNumber") == item.get("AccountNumber")
                    )
                ),
            )
        raise self.unknown("operation", operation)

    def _lookup(
        self,
        collection: str,
        field_name: str,
        items: list[dict[str, Any]],
        matches: Any,
    ) -> list[ItemResult | None]:
        values = sorted({str(i[field_name]) for i in items if i.get(field_name)})
        records: list[dict[str, Any]] = []
        base = str(self.connection.base_url)
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = [q for q in (_quote(v) for v in values[start : start + LOOKUP_CHUNK]) if q]
            if base not in _no_where_or and len(chunk) > 1:
                try:
                    records += self._query(
                        collection, " OR ".join(f"{field_name}=={q}" for q in chunk)
                    )
                    continue
                except PermanentError as exc:
                    if "QueryParseException" not in str(exc):
                        raise
                    with _lock:
                        _no_where_or.add(base)
            scanned = self._scan_prefix(collection, values[start : start + LOOKUP_CHUNK])
            if scanned is not None:
                records += scanned
                continue
            for q in chunk:
                records += self._query(collection, f"{field_name}=={q}")
        id_field = PAGED_ID[collection]
        found: list[ItemResult | None] = []
        for item in items:
            record = next((r for r in records if matches(item, r)), None)
            found.append(
                None
                if record is None
                else ItemResult(
                    ok=True,
                    external_id=str(record.get(id_field) or ""),
                    external_version=str(record.get("UpdatedDateUTC") or ""),
                    data=record,
                )
            )
        return found

    def _scan_prefix(self, collection: str, values: list[str]) -> list[dict[str, Any]] | None:
        """Without ``OR``: one ``searchTerm`` scan for the values' common prefix (Concord's
        references share one, e.g. ``concord-<process>-``), matched exactly by the caller.
        At 60 calls a minute a few pages beat one call per value; None if it would not."""
        prefix = _common_prefix(values)
        if len(values) < 2 or len(prefix) < MIN_SCAN_PREFIX:
            return None
        records: list[dict[str, Any]] = []
        for page in range(1, MAX_SCAN_PAGES + 1):
            result = self.http.call(
                "GET",
                f"/{collection}",
                operation=f"find:{collection}",
                params={"searchTerm": prefix, "page": page, "pageSize": self.page_size},
                headers=self._headers(),
            )
            batch = list((result.json() or {}).get(collection) or [])
            records += batch
            if len(batch) < self.page_size:
                return records
        return None

    def _query(self, collection: str, where: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"where": where, "page": 1, "pageSize": self.page_size}
        if collection == "Contacts":
            params["includeArchived"] = "true"
        result = self.http.call(
            "GET",
            f"/{collection}",
            operation=f"find:{collection}",
            params=params,
            headers=self._headers(),
        )
        return list((result.json() or {}).get(collection) or [])

    # -- reads -------------------------------------------------------------------------------

    def read_page(self, object_type: str, since: str | None, cursor: str | None) -> Page:
        """Keyset paging: each page asks ``If-Modified-Since`` the newest ``UpdatedDateUTC`` of
        the page before (ordered by it), skipping records already returned. A record updated
        during the read moves to the end and is returned again with its new version; none is
        skipped, as page numbers would whenever an earlier record moved to the end mid-read.

        The watermark is sent to the millisecond (Xero's precision). A server that reads it to
        the second only returns a few records again; those are skipped by id."""
        if object_type in UNPAGED_ID:
            result = self.http.call(
                "GET",
                f"/{object_type}",
                operation=f"read:{object_type}",
                headers=self._headers(),
            )
            return Page(list((result.json() or {}).get(object_type) or []), None)
        id_field = PAGED_ID.get(object_type)
        if id_field is None:
            raise self.unknown("object", object_type)
        floor_us = micros_of(since) if since else 0
        # since_us: the watermark; seen: id -> version of records returned at or after the
        # watermark's second; page: > 1 only while a whole page shares one watermark.
        state: dict[str, Any] = (
            json.loads(cursor) if cursor else {"since_us": floor_us, "page": 1, "seen": {}}
        )
        headers = self._headers()
        if state["since_us"]:
            headers["If-Modified-Since"] = _if_modified_since(state["since_us"])
        params: dict[str, Any] = {
            "page": state["page"],
            "pageSize": self.page_size,
            "order": "UpdatedDateUTC ASC",
        }
        if object_type == "Contacts":
            params["includeArchived"] = "true"  # an archived contact is a change too
        result = self.http.call(
            "GET",
            f"/{object_type}",
            operation=f"read:{object_type}",
            params=params,
            headers=headers,
        )
        records = [r for r in (result.json() or {}).get(object_type) or [] if isinstance(r, dict)]
        seen: dict[str, int] = dict(state["seen"])
        versions = [self.version_of(object_type, r) for r in records]
        fresh = [
            r
            for r, (rid, version) in zip(records, versions, strict=True)
            if seen.get(rid) != version and version >= floor_us
        ]
        if len(records) < self.page_size:
            return Page(fresh, None)
        seen.update(dict(versions))
        last = max(v for _, v in versions)
        if last > state["since_us"]:
            second = last // 1_000_000 * 1_000_000
            state = {
                "since_us": last,
                "page": 1,
                "seen": {rid: v for rid, v in seen.items() if v >= second},
            }
        else:
            # A whole page at one watermark: step through it by page number.
            state = {"since_us": state["since_us"], "page": state["page"] + 1, "seen": seen}
        return Page(fresh, json.dumps(state))

    def base_currency(self) -> str | None:
        """The organisation's ``BaseCurrency`` (``GET /Organisation``): what a contact without
        a ``DefaultCurrency`` is invoiced in."""
        currency = self._organisation().get("BaseCurrency")
        return str(currency) if currency else None

    def organisation_country(self) -> str | None:
        """The organisation's ``CountryCode`` (``GET /Organisation``): the country of its tax
        rates, which name none themselves."""
        country = self._organisation().get("CountryCode")
        return str(country) if country else None

    def _organisation(self) -> dict[str, Any]:
        result = self.http.call(
            "GET", "/Organisation", operation="read:Organisation", headers=self._headers()
        )
        organisations = (result.json() or {}).get("Organisations") or []
        return organisations[0] if organisations and isinstance(organisations[0], dict) else {}

    def probe(self) -> Probe:
        """``GET /Organisation`` of the connection's tenant: the organisation the client
        credentials and tenant open (its name, country and base currency)."""
        result = self.http.call(
            "GET", "/Organisation", operation="test:Organisation", headers=self._headers()
        )
        organisations = (result.json() or {}).get("Organisations") or []
        found = organisations[0] if organisations and isinstance(organisations[0], dict) else {}
        return Probe(
            request="GET /Organisation",
            status_code=result.status_code,
            summary=f"Xero organisation {found.get('Name') or '(no name)'} "
            f"({found.get('CountryCode') or 'no country'}, base currency "
            f"{found.get('BaseCurrency') or 'not set'}).",
            facts=probe_facts(
                found,
                ("Name", "LegalName", "CountryCode", "BaseCurrency", "OrganisationType", "Version"),
            ),
            attempt_id=result.attempt_id,
        )

    def fetch_one(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        if object_type not in PAGED_ID:
            raise self.unknown("object", object_type)
        result = self.http.call(
            "GET",
            f"/{object_type}/{external_id}",
            operation=f"fetch:{object_type}",
            headers=self._headers(),
        )
        records = (result.json() or {}).get(object_type) or []
        return records[0] if records and isinstance(records[0], dict) else None

    def version_of(self, object_type: str, record: dict[str, Any]) -> tuple[str, int]:
        id_field = PAGED_ID.get(object_type) or UNPAGED_ID.get(object_type)
        if id_field is None:
            raise self.unknown("object", object_type)
        stamp = _stamp(record)
        return str(record.get(id_field) or ""), to_micros(stamp) if stamp else 0


def _common_prefix(values: list[str]) -> str:
    """The longest string every value starts with (the sorted extremes decide it)."""
    if not values:
        return ""
    first, last = min(values), max(values)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _key(key: str) -> str:
    """Xero takes keys of at most 128 characters; a longer one is hashed (same key, same hash)."""
    if len(key) <= 128:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
