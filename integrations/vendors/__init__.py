"""The vendor registry: everything Concord knows about one vendor, by its code.

Each vendor is a folder (``xero/``, ``harvest/``, ``salesforce/``) holding its connector (the only
code that speaks to it), its webhook verification and its default mappings and value maps; an
entry here names them, with the operations the vendor offers per (canonical model, action). A
fourth system is one more folder and one more entry.

Layering: the vendors sit with the connectors, below the mapping layer, so nothing here imports
``integrations.mapping``. The mapping layer compiles the defaults (plain data from ``spec``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from integrations.connectors.base import Connector
from integrations.connectors.errors import PermanentError
from integrations.vendors import harvest, salesforce, xero
from integrations.vendors.spec import MappingDefault, ValueMapDefault, VendorOperation
from integrations.vendors.webhook import WebhookScheme


@dataclass(frozen=True, slots=True)
class VendorEntry:
    code: str
    connector: Callable[..., Connector]
    webhook: WebhookScheme
    mappings: tuple[MappingDefault, ...]
    value_maps: tuple[ValueMapDefault, ...]
    # (canonical model, action) -> how the vendor does it; see VendorOperation.
    operations: Mapping[tuple[str, str], VendorOperation]


VENDORS: dict[str, VendorEntry] = {
    entry.code: entry
    for entry in (
        VendorEntry(
            "xero",
            xero.XeroConnector,
            xero.WEBHOOK,
            xero.MAPPINGS,
            xero.VALUE_MAPS,
            xero.OPERATIONS,
        ),
        VendorEntry(
            "harvest",
            harvest.HarvestConnector,
            harvest.WEBHOOK,
            harvest.MAPPINGS,
            harvest.VALUE_MAPS,
            harvest.OPERATIONS,
        ),
        VendorEntry(
            "salesforce",
            salesforce.SalesforceConnector,
            salesforce.WEBHOOK,
            salesforce.MAPPINGS,
            salesforce.VALUE_MAPS,
            salesforce.OPERATIONS,
        ),
    )
}


def vendor_entry(code: str) -> VendorEntry:
    entry = VENDORS.get(str(code))
    if entry is None:
        raise PermanentError(f"no connector for vendor {code}")
    return entry


def connector_for(connection: Any, **options: Any) -> Connector:
    """The connector for a ``Connection``. Options (tests, benchmarks): ``timeout``,
    ``acquire_timeout``, ``limits``, ``page_size``, ``transport``."""
    return vendor_entry(connection.vendor).connector(connection, **options)


def vendor_operation(code: str, canonical_model: str, action: str) -> VendorOperation | None:
    """How the vendor carries out `action` ("create", "update") on a canonical model, or None
    when it does not."""
    entry = VENDORS.get(str(code))
    return entry.operations.get((canonical_model, action)) if entry else None


__all__ = [
    "VENDORS",
    "VendorEntry",
    "connector_for",
    "vendor_entry",
    "vendor_operation",
]
