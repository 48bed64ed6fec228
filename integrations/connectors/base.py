"""The interface every vendor connector offers; ``integrations.vendors.connector_for`` gives the
one for a connection (the vendor registry also names each vendor's operations per action).

The sync engine only ever calls these four methods; operation names are a contract with the
``OutboxMessage.operation`` values the workflows write:

========== ======================================================================================
vendor     operations (``write`` / ``find_existing``)        objects (``read_changed``)
========== ======================================================================================
xero       put_invoices (50), put_contacts (50),              Invoices, Contacts, Payments
           post_invoice (1), put_tracking_options (50)        (incremental); TaxRates,
                                                              Currencies, TrackingCategories
harvest    create_client, update_client, create_project,      time_entries, expenses,
           update_project (1 each: Harvest has no batch)      projects, clients, users
salesforce create_account|opportunity|contract (200),         Account, Opportunity, Contract
           update_account|opportunity|contract (200)
========== ======================================================================================

``since`` for ``read_changed`` is an ISO-8601 timestamp (``2024-05-01T10:00:00.123Z``; no
zone means UTC) or None for everything; each connector turns it into the vendor's filter.
``read_pages`` is the same read as pages that carry their own cursor and the next one, and
starts at a given cursor: the poller reads a failed page again where it failed, and resumes an
unfinished read after the last page it stored. ``version_of`` gives the modstamp as
microseconds since the epoch, the unit of ``InboundMessage.source_version`` and of a write's
``ItemResult.external_version`` (converted from the vendor's stamp on assignment);
``integrations.timestamps`` reads the vendors' stamps and turns a version back into a
``since`` (``micros_to_iso``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from integrations.connectors.errors import ConnectorError, PermanentError
from integrations.connectors.http import VendorHTTP
from integrations.timestamps import version_micros


@dataclass
class ItemResult:
    """One per item of a batch write, same order as the items."""

    ok: bool
    external_id: str = ""
    # The vendor record's version in Concord's one unit: microseconds since the epoch, as
    # digits (what polls compare against; see ``__setattr__``).
    external_version: str = ""
    error: ConnectorError | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the vendor's record as returned

    def __setattr__(self, name: str, value: Any) -> None:
        # Connectors hand over the vendor's own stamp (Xero's ``/Date(1796153857772+0000)/``,
        # Harvest's ISO ``updated_at``, Salesforce's ``SystemModstamp``), at construction or
        # later; it is stored as microseconds here, the one place every write result passes,
        # so a cross-reference written after a push compares with a polled version (a poll
        # once did ``int()`` on Xero's string and failed every cycle).
        if name == "external_version":
            value = _version_text(value)
        object.__setattr__(self, name, value)


def _version_text(value: Any) -> str:
    """A vendor stamp as micros digits; "" for none, and for a stamp no reader knows (a
    version nobody can compare is no version: the next poll applies the record again)."""
    try:
        micros = version_micros(value if isinstance(value, str | int) else None)
    except ValueError:
        return ""
    return str(micros) if micros else ""


@dataclass
class Probe:
    """What one authenticated read made to test a connection found (the console's test button,
    integrations/vendors/connection_test.py): the request, the vendor's status, and the answer
    in a few words and facts a person recognises (an account's name, an organisation's base
    currency). Never a credential: the facts are chosen from the answer, not copied whole."""

    request: str  # "GET /company"
    status_code: int
    summary: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    attempt_id: int | None = None  # the SyncAttempt that recorded the read


@dataclass
class Page:
    records: list[dict[str, Any]]
    next_cursor: str | None  # opaque, for paging within one read; None at the end
    # The cursor this page was read at (None: the read's first page), so a reader that
    # stored the page before can ask for the one after it again.
    cursor: str | None = None


class Connector(Protocol):
    vendor: ClassVar[str]
    ordered_reads: ClassVar[bool]
    # Per operation, the vendor's batch size (Xero invoices 50, Salesforce collections 200).
    batch_size: dict[str, int]
    # Records one ``fetch_many`` call reads (Salesforce's collection read: 200); 1 where the
    # vendor reads one record a call.
    fetch_batch: int
    # How long the vendor answers a write sent again under the same Idempotency-Key with its
    # first answer instead of doing it twice (Xero: 24 h); 0 where it honours no such key.
    idempotency_window_s: float

    def write(
        self,
        operation: str,
        items: list[dict[str, Any]],
        *,
        idempotency_key: str,
        message_ids: list[int] | None = None,
    ) -> list[ItemResult]:
        """Batch write. Raises TransientError/PermanentError when the WHOLE call failed;
        per-item errors come back as ItemResult(ok=False, error=BusinessError(...))."""
        ...

    def find_existing(self, operation: str, items: list[dict[str, Any]]) -> list[ItemResult | None]:
        """Look-up-before-create: for each item, the record already created for it (by the
        item's idempotency reference) or None."""
        ...

    def read_changed(self, object_type: str, since: str | None) -> Iterator[list[dict[str, Any]]]:
        """Records changed since ``since`` (inclusive), page by page, to the end."""
        ...

    def read_page(self, object_type: str, since: str | None, cursor: str | None) -> Page:
        """One page of ``read_changed``; ``next_cursor`` None means the end."""
        ...

    def read_pages(
        self, object_type: str, since: str | None, cursor: str | None = None
    ) -> Iterator[Page]:
        """``read_changed`` as pages that say where they stand, starting at ``cursor`` (a
        ``next_cursor`` given earlier: the page to read again after a failure or a crash)."""
        ...

    def base_currency(self) -> str | None:
        """The currency the vendor account keeps its books in, where the vendor has one
        (Xero's organisation); None where it has not."""
        ...

    def version_of(self, object_type: str, record: dict[str, Any]) -> tuple[str, int]:
        """(external id, source version: the modstamp in microseconds since the epoch)."""
        ...

    def fetch(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        """One record by its id, as the vendor holds it now; None when it does not exist.
        Webhooks name what changed without the data: this reads it."""
        ...

    def fetch_many(self, object_type: str, external_ids: list[str]) -> dict[str, Any]:
        """Several records of one type by id, in as few calls as the vendor allows: id ->
        record, or None when it does not exist. Raises ``ConnectorError`` when the read
        failed as a whole (the caller reads one by one or tries later)."""
        ...

    def probe(self) -> Probe:
        """One small authenticated read that shows the credentials work and reach the right
        account (the console's test button). Raises ``ConnectorError`` like any call."""
        ...

    def close(self) -> None: ...


class BaseConnector:
    """Shared plumbing: one ``VendorHTTP``, operation dispatch, paging loop."""

    vendor: ClassVar[str] = ""
    batch_size: dict[str, int] = {}
    fetch_batch: int = 1
    idempotency_window_s: float = 0.0
    # Whether ``read_changed`` yields records in modstamp order across pages. A poller may
    # advance its cursor page by page only when this is True; otherwise only at the end.
    ordered_reads: ClassVar[bool] = True

    # Records per page of a read; the vendor's maximum unless a subclass says why not.
    page_size: int = 1000

    def __init__(
        self,
        connection: Any,
        *,
        http: VendorHTTP | None = None,
        page_size: int | None = None,
        **http_options: Any,
    ) -> None:
        """``http_options`` go to ``VendorHTTP``: ``timeout``, ``acquire_timeout``,
        ``limits``, ``transport``."""
        self.connection = connection
        self.credentials: dict[str, Any] = dict(connection.credentials or {})
        if page_size is not None:
            self.page_size = page_size
        self.http = http if http is not None else self.make_http(**http_options)

    def make_http(self, **http_options: Any) -> VendorHTTP:
        raise NotImplementedError

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BaseConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def credential(self, name: str) -> str:
        value = self.credentials.get(name)
        if not value:
            raise PermanentError(
                f"connection credentials incomplete: {name} missing",
                vendor_message=f"Set '{name}' in the connection's credentials.",
            )
        return str(value)

    def unknown(self, what: str, name: str) -> PermanentError:
        return PermanentError(f"unknown {self.vendor} {what}: {name}")

    def read_changed(self, object_type: str, since: str | None) -> Iterator[list[dict[str, Any]]]:
        for page in self.read_pages(object_type, since):
            if page.records:
                yield page.records

    def read_pages(
        self, object_type: str, since: str | None, cursor: str | None = None
    ) -> Iterator[Page]:
        while True:
            page = self.read_page(object_type, since, cursor)
            page.cursor = cursor
            yield page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def base_currency(self) -> str | None:
        return None

    def read_page(self, object_type: str, since: str | None, cursor: str | None) -> Page:
        raise NotImplementedError

    def fetch(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        try:
            return self.fetch_one(object_type, external_id)
        except PermanentError as exc:
            if exc.status_code == 404:
                return None
            raise

    def fetch_one(self, object_type: str, external_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def fetch_many(self, object_type: str, external_ids: list[str]) -> dict[str, Any]:
        # A vendor without a multi-record read: one call per record, as ``fetch`` does.
        return {i: self.fetch(object_type, i) for i in external_ids}

    def probe(self) -> Probe:
        raise NotImplementedError


def probe_facts(record: Any, fields: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(field, value)`` for the named fields of a vendor record that are set, as text."""
    if not isinstance(record, dict):
        return []
    facts = []
    for name in fields:
        value = record.get(name)
        if value is not None and value != "":
            facts.append((name, str(value)[:200]))
    return facts
