"""Harvest v2 (the PSA): the only module that speaks to Harvest.

``connection.base_url`` is the API root, ``https://api.harvestapp.com/v2`` for the real
service, ``http://127.0.0.1:8100/harvest/v2`` for the sandbox; paths are the spec's
(``harvest-v2.yaml``: ``/clients``, ``/projects``, ``/time_entries`` ...).

Credentials (``connection.credentials``):

* ``access_token``: a personal access token (``Authorization: Bearer``);
* ``account_id``: sent as ``Harvest-Account-Id``;
* optional ``user_agent``: Harvest requires one naming the integration and a contact.

Operations: ``create_client``, ``update_client``, ``create_project``, ``update_project`` (items
for updates carry the Harvest ``id``); for status back-sync (integrations/workflows/back_sync.py)
``create_invoice`` (an ERP invoice mirrored in Harvest, found again by its ``number`` within its
client), ``create_invoice_payment`` (``POST /invoices/{invoice_id}/payments``; found again by its
``notes``, which name the ERP's payment) and ``update_time_entry`` (``is_billed``: see
sandbox/README.md). Harvest has no batch endpoint and no Idempotency-Key, so
each item is one call. A create that may have reached Harvest before is looked up first by the
dispatcher (``find_existing``, integrations/sync/dispatch.py, for rows whose earlier attempt may
have landed): clients by name (Harvest keeps client names unique), projects by ``code`` within
the client, or by name within the client (also unique in Harvest); a first attempt posts
directly. A create that Harvest refuses as "already taken" is looked up again, so a create whose
response was lost is not doubled.

Reads: ``time_entries``, ``expenses``, ``projects``, ``clients``, ``users`` (and ``tasks``,
``task_assignments``, ``user_assignments``, ``invoices``, ``x_milestones``, ``x_rate_cards``) with
``updated_since`` (inclusive, whole seconds), 2,000 per page (Harvest's maximum) following
``links.next`` to the end: a ``cursor`` where the spec offers one (clients, users, projects,
tasks, the assignments; ``page`` is deprecated there), page numbers where it does not (time
entries, expenses, invoices). A page's ``next_cursor`` is that link's query, so a read can be
resumed at the page after the last one stored. Harvest lists newest first and cannot sort by
``updated_at``, so ``ordered_reads`` is False: a poller advances its cursor only after the
whole read (and keeps the page position meanwhile, see integrations/sync/polling.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
from integrations.vendors.echo import Answer, Echo, found_checked, written_checked

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
    # The sandbox's rate-card extension (Harvest has none): the firm's bill rate per role and
    # currency, read as reference data (integrations/vendors/harvest/mappings.py).
    "x_rate_cards",
)
CREATES = {
    "create_client": "clients",
    "create_project": "projects",
    "create_invoice": "invoices",
    # Nested under its invoice: the item's ``invoice_id`` names it (not sent in the body).
    "create_invoice_payment": "invoices/{invoice_id}/payments",
    # Project provisioning (integrations/workflows/provisioning.py): a contract's milestone
    # (the sandbox's x_milestones), and the project's standard tasks, one row per project
    # (``_assign_tasks``: one call per default task not assigned yet).
    "create_milestone": "x_milestones",
    "create_task_assignments": "projects/{project_id}/task_assignments",
    # A person staffed on a provisioned project (nested under it: the item's project_id).
    "create_user_assignment": "projects/{project_id}/user_assignments",
}
UPDATES = {
    "update_client": "clients",
    "update_project": "projects",
    "update_time_entry": "time_entries",
    # A milestone marked invoiced once its ERP invoice exists (workflows/milestones.py).
    "update_milestone": "x_milestones",
}
# What each write's answer must echo of what was sent (integrations/vendors/echo.py): Harvest
# has no external-id field, so a client is its (unique) name, a project its code within its
# client, an update the id it named.
_CLIENT = ("name", "id")
_PROJECT = ("code", "name", "id")
ANSWERS = {
    "create_client": Answer("client", _CLIENT, (Echo("name", compare="fold"),)),
    "update_client": Answer("client", _CLIENT, (Echo("id"),)),
    "create_project": Answer("project", _PROJECT, (Echo("code"), Echo("client_id", "client.id"))),
    "update_project": Answer("project", _PROJECT, (Echo("id"),)),
    "create_invoice": Answer(
        "invoice", ("number", "id"), (Echo("number"), Echo("client_id", "client.id"))
    ),
    "create_invoice_payment": Answer("invoice payment", ("notes", "id"), (Echo("notes"),)),
    "update_time_entry": Answer("time entry", ("spent_date", "id"), (Echo("id"),)),
    "update_milestone": Answer("milestone", ("name", "id"), (Echo("id"),)),
    "create_milestone": Answer(
        "milestone", ("name", "id"), (Echo("name"), Echo("project_id", "project.id"))
    ),
    "create_task_assignments": Answer("project's tasks", ("project_id",), (Echo("project_id"),)),
    "create_user_assignment": Answer(
        "user assignment", ("id",), (Echo("user_id", "user.id"), Echo("project_id", "project.id"))
    ),
}


def _create_path(operation: str, item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Where a create goes and what it sends: a nested create (an invoice's payment) takes its
    parent's id out of the item and into the path."""
    path = CREATES[operation]
    if "{project_id}" in path:  # a project's assignment (provisioning)
        body = {k: v for k, v in item.items() if k != "project_id"}
        return "/" + path.format(project_id=item.get("project_id")), body
    if "{invoice_id}" not in path:
        return f"/{path}", item
    body = {k: v for k, v in item.items() if k != "invoice_id"}
    return "/" + path.format(invoice_id=item.get("invoice_id")), body


def _next_query(body: dict[str, Any]) -> str | None:
    """The query of the next page's link (``cursor=...&per_page=2000`` or ``page=2&...``), or
    None on the last page. Only the query is kept: the request goes to the connection's own
    base URL, so a link naming another host never receives the token."""
    links = body.get("links")
    link = links.get("next") if isinstance(links, dict) else None
    if not isinstance(link, str) or not link:
        return None
    query = urlsplit(link).query
    return query or None


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
    batch_size = dict.fromkeys((*CREATES, *UPDATES), 1)

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
        results = self._write(operation, items, list(message_ids or []))
        return written_checked(
            vendor="Harvest", answer=ANSWERS.get(operation), items=items, results=results
        )

    def _write(
        self, operation: str, items: list[dict[str, Any]], ids: list[int]
    ) -> list[ItemResult]:
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
        if operation == "create_task_assignments":
            return self._assign_tasks(item, ids)
        # Posted directly: a create that may have reached Harvest before (a lost answer, a
        # worker killed mid-call) is looked up by the dispatcher first (``find_existing``, for
        # the rows it marks ``needs_lookup``); looking up every first attempt too cost 28% of
        # the calls to Harvest and found nothing.
        path, body = _create_path(operation, item)
        try:
            result = self.http.call(
                "POST", path, operation=operation, json_body=body, message_ids=ids
            )
        except BusinessError as exc:
            if "already been" in exc.vendor_message:
                # Created meanwhile (a lost response, another worker): it is ours. Harvest
                # says "has already been taken" (a name) or "already been assigned" (a person).
                again = self.find_existing(operation, [item])[0]
                if again is not None:
                    return again
            raise
        return self._ok(result.json())

    def _assign_tasks(self, item: dict[str, Any], ids: list[int]) -> ItemResult:
        """Assign the project the firm's standard tasks: Harvest's active default tasks
        (``is_default``: "added to future projects"), each billable as its
        ``billable_by_default`` says, one call each (Harvest has no batch endpoint). Posted
        directly: Harvest refuses a task already assigned to the project ("has already been
        assigned"), and only then are the project's assignments read, once, to take the one
        there, so a repeat after a lost answer makes nothing twice. No default task: nothing to
        assign (one call)."""
        operation = "create_task_assignments"
        project_id = item.get("project_id")
        # The task list is the firm's, the same for every project: read once per connector
        # (one dispatch task's batch of projects), not once per project.
        defaults: list[dict[str, Any]] | None = self.__dict__.get("_default_tasks")
        if defaults is None:
            defaults = [
                t
                for t in self._all("tasks", {"is_active": "true"}, f"find:{operation}")
                if t.get("is_default")
            ]
            self.__dict__["_default_tasks"] = defaults
        records: list[dict[str, Any]] = []
        nested = f"projects/{project_id}/task_assignments"
        assigned: dict[Any, dict[str, Any]] | None = None  # read on the first refusal
        for task in defaults:
            body = {
                "task_id": task.get("id"),
                "billable": bool(task.get("billable_by_default", True)),
                "is_active": bool(item.get("is_active", True)),
            }
            try:
                found = self.http.call(
                    "POST", f"/{nested}", operation=operation, json_body=body, message_ids=ids
                ).json()
            except BusinessError as exc:
                if "already been assigned" not in exc.vendor_message:
                    raise
                if assigned is None:
                    assigned = {
                        (a.get("task") or {}).get("id"): a
                        for a in self._all(nested, {}, f"find:{operation}", key="task_assignments")
                    }
                found = assigned.get(task.get("id"))
                if found is None:
                    raise
            records.append(found)
        # No id of its own: the project's cross-reference stays as the project's create left it.
        return ItemResult(ok=True, data={"project_id": project_id, "task_assignments": records})

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
        found = self._find_existing(operation, items)
        return found_checked(
            vendor="Harvest", answer=ANSWERS.get(operation), items=items, results=found
        )

    def _find_existing(
        self, operation: str, items: list[dict[str, Any]]
    ) -> list[ItemResult | None]:
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
        if operation == "create_invoice":
            invoices: dict[Any, list[dict[str, Any]]] = {}
            for client_id in {i.get("client_id") for i in items if i.get("client_id")}:
                invoices[client_id] = self._all(
                    "invoices", {"client_id": client_id}, f"find:{operation}"
                )
            return [
                self._found(
                    next(
                        (
                            r
                            for r in invoices.get(i.get("client_id"), [])
                            if i.get("number") and r.get("number") == i["number"]
                        ),
                        None,
                    )
                )
                for i in items
            ]
        if operation == "create_milestone":
            milestones: dict[Any, list[dict[str, Any]]] = {}
            for project_id in {i.get("project_id") for i in items if i.get("project_id")}:
                milestones[project_id] = self._all(
                    "x_milestones", {"project_id": project_id}, f"find:{operation}"
                )
            return [
                self._found(
                    next(
                        (
                            m
                            for m in milestones.get(i.get("project_id"), [])
                            if i.get("name") and m.get("name") == i["name"]
                        ),
                        None,
                    )
                )
                for i in items
            ]
        if operation == "create_task_assignments":
            return [None] * len(items)  # the write looks first, task by task
        if operation == "create_user_assignment":
            staffed: list[ItemResult | None] = []
            for item in items:
                assigned = self._all(
                    f"projects/{item.get('project_id')}/user_assignments",
                    {},
                    f"find:{operation}",
                    key="user_assignments",
                )
                staffed.append(
                    self._found(
                        next(
                            (
                                a
                                for a in assigned
                                if (a.get("user") or {}).get("id") == item.get("user_id")
                            ),
                            None,
                        )
                    )
                )
            return staffed
        if operation == "create_invoice_payment":
            found: list[ItemResult | None] = []
            for item in items:
                payments = self._all(
                    f"invoices/{item.get('invoice_id')}/payments",
                    {},
                    f"find:{operation}",
                    key="invoice_payments",
                )
                found.append(
                    self._found(
                        next(
                            (
                                p
                                for p in payments
                                if item.get("notes") and p.get("notes") == item["notes"]
                            ),
                            None,
                        )
                    )
                )
            return found
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

    def _all(
        self, kind: str, params: dict[str, Any], operation: str, *, key: str = ""
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = self._list_params(None, cursor, **params)
            result = self.http.call("GET", f"/{kind}", operation=operation, params=query)
            body = result.json() or {}
            records += body.get(key or kind) or []
            cursor = _next_query(body)
            if not cursor:
                return records

    # -- reads -------------------------------------------------------------------------------

    def read_pages(
        self, object_type: str, since: str | None, cursor: str | None = None
    ) -> Iterator[Page]:
        """Page by page from ``cursor`` (None: the first page), with the next page already on
        its way while the caller stores this one (``links.next`` says what comes next as soon
        as a page arrives)."""
        pending: PendingRead | None = self._start_page(object_type, since, cursor)
        try:
            while pending is not None:
                current, pending = pending, None  # finished once, even when it raises
                page = self._page_from(object_type, current.result())
                page.cursor = cursor
                if page.next_cursor:
                    cursor = page.next_cursor
                    pending = self._start_page(object_type, since, cursor)
                yield page
        finally:
            if pending is not None:  # the caller stopped early: finish (and record) the call
                with contextlib.suppress(ConnectorError):
                    pending.result()

    def read_page(self, object_type: str, since: str | None, cursor: str | None) -> Page:
        pending = self._start_page(object_type, since, cursor)
        page = self._page_from(object_type, pending.result())
        page.cursor = cursor
        return page

    def _start_page(self, object_type: str, since: str | None, cursor: str | None) -> PendingRead:
        if object_type not in READS:
            raise self.unknown("object", object_type)
        params = self._list_params(since, cursor)
        return self.http.start(f"/{object_type}", operation=f"read:{object_type}", params=params)

    def _list_params(self, since: str | None, cursor: str | None, **filters: Any) -> dict[str, Any]:
        """A list request's query: the first page asks with neither ``page`` nor ``cursor``
        (Harvest's default is the first page, and ``page`` is deprecated where the spec offers
        ``cursor``); every later one asks exactly what the previous page's ``links.next``
        says, so the connector pages by ``cursor`` where Harvest gives one and by page number
        where it does not (time entries, expenses, invoices), without knowing which."""
        if cursor:
            return dict(parse_qsl(cursor, keep_blank_values=True))
        params: dict[str, Any] = {**filters, "per_page": self.page_size}
        if since:
            params["updated_since"] = parse_timestamp(since).strftime("%Y-%m-%dT%H:%M:%SZ")
        return params

    def _page_from(self, object_type: str, result: CallResult) -> Page:
        body = result.json() or {}
        records = [r for r in body.get(object_type) or [] if isinstance(r, dict)]
        # Newest first within the page, as Harvest lists; reversed to oldest first.
        records.reverse()
        return Page(records, _next_query(body))

    def fetch_one(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        if object_type not in READS:
            raise self.unknown("object", object_type)
        result = self.http.call(
            "GET", f"/{object_type}/{external_id}", operation=f"fetch:{object_type}"
        )
        body = result.json()
        return body if isinstance(body, dict) else None

    def probe(self) -> Probe:
        """``GET /company``: the account the token and account id open (its name and domain)."""
        result = self.http.call("GET", "/company", operation="test:company")
        body = result.json()
        company = body if isinstance(body, dict) else {}
        name = company.get("name") or "(no name)"
        state = "active" if company.get("is_active") else "not active"
        return Probe(
            request="GET /company",
            status_code=result.status_code,
            summary=f"Harvest account {name} ({company.get('full_domain') or 'no domain'}), "
            f"{state}.",
            facts=probe_facts(
                company,
                ("name", "full_domain", "is_active", "plan_type", "time_format", "week_start_day"),
            ),
            attempt_id=result.attempt_id,
        )

    def version_of(self, object_type: str, record: dict[str, Any]) -> tuple[str, int]:
        return str(record.get("id", "")), micros_of(record.get("updated_at"))
