"""Harvest v2 (the PSA): the only module that speaks to Harvest.

``connection.base_url`` is the API root, ``https://api.harvestapp.com/v2`` for the real
service, ``http://127.0.0.1:8100/harvest/v2`` for the sandbox; paths are the spec's
(``harvest-v2.yaml``: ``/clients``, ``/projects``, ``/time_entries`` ...).

Credentials (``connection.credentials``):

* ``access_token``: a personal access token (``Authorization: Bearer``);
* ``account_id``: sent as ``Harvest-Account-Id``;
* optional ``user_agent``: Harvest requires one naming the integration and a contact.

Operations: ``create_client``, ``update_client``, ``create_project``, ``update_project`` (items
for updates carry the Harvest ``id``). Harvest has no batch endpoint and no Idempotency-Key, so
each item is one call and a create looks first (``find_existing``): clients by name (Harvest
keeps client names unique), projects by ``code`` within the client, or by name within the client
(also unique in Harvest). A create that Harvest refuses as "already taken" is looked up again, so
a create whose response was lost is not doubled.

Reads: ``time_entries``, ``expenses``, ``projects``, ``clients``, ``users`` (and ``tasks``,
``task_assignments``, ``user_assignments``, ``invoices``, ``x_milestones``) with
``updated_since`` (inclusive, whole seconds), 2,000 per page (Harvest's maximum) following
``next_page`` to the end. Harvest lists newest first and cannot sort by ``updated_at``, so
``ordered_reads`` is False: a poller advances its cursor only after the whole read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from integrations.connectors.base import (
    BaseConnector,
    ItemResult,
    Page,
)
from integrations.connectors.errors import (
    BusinessError,
    ConnectorError,
    PermanentError,
)
from integrations.connectors.http import (
    USER_AGENT,
    CallResult,
    PendingRead,
    StaticAuth,
    VendorHTTP,
    default_error,
)
from integrations.timestamps import micros_of, parse_timestamp

# Harvest's maximum per_page: reads are page-count bound (100 requests per 15 s).
PAGE_SIZE = 2000
READS = (
    "time_entries",
    "expenses",
    "projects",
    "clients",
    "users",
    "tasks",
    "task_assignments",
    "user_assignments",
    "invoices",
    "x_milestones",
)
CREATES = {"create_client": "clients", "create_project": "projects"}
UPDATES = {"update_client": "clients", "update_project": "projects"}


def classify(response: httpx.Response) -> ConnectorError | None:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = ""
    if isinstance(body, dict):
        message = str(
            body.get("message") or body.get("error_description") or body.get("error") or ""
        )
    status = response.status_code
    if status == 422:
        return BusinessError("Harvest validation error", vendor_message=message)
    if status == 401:
        return PermanentError("Harvest authentication failed", vendor_message=message)
    if status == 403:
        return PermanentError("Harvest refused access", vendor_message=message)
    if status == 404:
        return PermanentError("Harvest record not found", vendor_message=message)
    return default_error(response, message)


class HarvestConnector(BaseConnector):
    vendor = "harvest"
    page_size = PAGE_SIZE
    ordered_reads = False
    batch_size = {"create_client": 1, "update_client": 1, "create_project": 1, "update_project": 1}

    def make_http(self, **http_options: Any) -> VendorHTTP:
        auth = StaticAuth(
            {
                "Authorization": f"Bearer {self.credential('access_token')}",
                "Harvest-Account-Id": self.credential("account_id"),
                "User-Agent": str(self.credentials.get("user_agent") or USER_AGENT),
            }
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
        if operation not in CREATES and operation not in UPDATES:
            raise self.unknown("operation", operation)
        ids = list(message_ids or [])
        results: list[ItemResult] = []
        for n, item in enumerate(items):
            try:
                results.append(self._write_one(operation, item, ids))
            except (BusinessError, PermanentError) as exc:
                if exc.status_code in (401, 403):
                    if not results:
                        raise
                    results += [ItemResult(ok=False, error=exc)] * (len(items) - n)
                    break
                results.append(ItemResult(ok=False, error=exc))
            except ConnectorError as exc:
                # Transient: stop here. Nothing done yet means the whole call failed.
                if not results:
                    raise
                results += [ItemResult(ok=False, error=exc)] * (len(items) - n)
                break
        return results

    def _write_one(self, operation: str, item: dict[str, Any], ids: list[int]) -> ItemResult:
        if operation in UPDATES:
            record_id = item.get("id")
            if not record_id:
                return ItemResult(
                    ok=False, error=PermanentError(f"{operation} needs the Harvest id")
                )
            body = {k: v for k, v in item.items() if k != "id"}
            result = self.http.call(
                "PATCH",
                f"/{UPDATES[operation]}/{record_id}",
                operation=operation,
                json_body=body,
                message_ids=ids,
            )
            return self._ok(result.json())
        existing = self.find_existing(operation, [item])[0]
        if existing is not None:
            return existing
        try:
            result = self.http.call(
                "POST",
                f"/{CREATES[operation]}",
                operation=operation,
                json_body=item,
                message_ids=ids,
            )
        except BusinessError as exc:
            if "already been taken" in exc.vendor_message:
                # Created meanwhile (a lost response, another worker): it is ours.
                again = self.find_existing(operation, [item])[0]
                if again is not None:
                    return again
            raise
        return self._ok(result.json())

    @staticmethod
    def _ok(record: Any) -> ItemResult:
        if not isinstance(record, dict):
            return ItemResult(ok=False, error=PermanentError("Harvest answer is not an object"))
        return ItemResult(
            ok=True,
            external_id=str(record.get("id", "")),
            external_version=str(record.get("updated_at") or ""),
            data=record,
        )

    # -- look-up-before-create ----------------------------------------------------------------

    def find_existing(self, operation: str, items: list[dict[str, Any]]) -> list[ItemResult | None]:
        if operation in UPDATES:
            return [None] * len(items)  # an update is safe to repeat
        if operation == "create_client":
            clients = self._all("clients", {}, f"find:{operation}")
            by_name = {str(c.get("name", "")).casefold(): c for c in clients}
            return [self._found(by_name.get(str(i.get("name", "")).casefold())) for i in items]
        if operation == "create_project":
            projects: dict[Any, list[dict[str, Any]]] = {}
            for client_id in {i.get("client_id") for i in items if i.get("client_id")}:
                projects[client_id] = self._all(
                    "projects", {"client_id": client_id}, f"find:{operation}"
                )
            return [self._found(self._project_match(i, projects)) for i in items]
        raise self.unknown("operation", operation)

    @staticmethod
    def _project_match(
        item: dict[str, Any], projects: dict[Any, list[dict[str, Any]]]
    ) -> dict[str, Any] | None:
        candidates = projects.get(item.get("client_id"), [])
        if item.get("code"):
            return next((p for p in candidates if p.get("code") == item["code"]), None)
        name = str(item.get("name", "")).casefold()
        return next((p for p in candidates if str(p.get("name", "")).casefold() == name), None)

    def _found(self, record: dict[str, Any] | None) -> ItemResult | None:
        return None if record is None else self._ok(record)

    def _all(self, kind: str, params: dict[str, Any], operation: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        page: int | None = 1
        while page:
            result = self.http.call(
                "GET",
                f"/{kind}",
                operation=operation,
                params={**params, "page": page, "per_page": self.page_size},
            )
            body = result.json() or {}
            records += body.get(kind) or []
            page = body.get("next_page")
        return records

    # -- reads -------------------------------------------------------------------------------

    def read_changed(self, object_type: str, since: str | None) -> Iterator[list[dict[str, Any]]]:
        """Page by page, with the next page already on its way while the caller stores this
        one (Harvest's page numbers say what comes next as soon as a page arrives)."""
        pending: PendingRead | None = self._start_page(object_type, since, 1)
        try:
            while pending is not None:
                page = self._page_from(object_type, pending.result())
                pending = None
                if page.next_cursor:
                    pending = self._start_page(object_type, since, int(page.next_cursor))
                if page.records:
                    yield page.records
        finally:
            if pending is not None:  # the caller stopped early: finish (and record) the call
                with contextlib.suppress(ConnectorError):
                    pending.result()

    def read_page(self, object_type: str, since: str | None, cursor: str | None) -> Page:
        pending = self._start_page(object_type, since, int(cursor or 1))
        return self._page_from(object_type, pending.result())

    def _start_page(self, object_type: str, since: str | None, page: int) -> PendingRead:
        params = self._page_params(object_type, since, page)
        return self.http.start(f"/{object_type}", operation=f"read:{object_type}", params=params)

    def _page_params(self, object_type: str, since: str | None, page: int) -> dict[str, Any]:
        if object_type not in READS:
            raise self.unknown("object", object_type)
        params: dict[str, Any] = {"page": page, "per_page": self.page_size}
        if since:
            stamp = parse_timestamp(since)
            params["updated_since"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        return params

    def _page_from(self, object_type: str, result: CallResult) -> Page:
        body = result.json() or {}
        records = [r for r in body.get(object_type) or [] if isinstance(r, dict)]
        # Newest first within the page, as Harvest lists; reversed to oldest first.
        records.reverse()
        next_page = body.get("next_page")
        return Page(records, str(next_page) if next_page else None)

    def fetch_one(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        if object_type not in READS:
            raise self.unknown("object", object_type)
        result = self.http.call(
            "GET", f"/{object_type}/{external_id}", operation=f"fetch:{object_type}"
        )
        body = result.json()
        return body if isinstance(body, dict) else None

    def version_of(self, object_type: str, record: dict[str, Any]) -> tuple[str, int]:
        return str(record.get("id", "")), micros_of(record.get("updated_at"))
