"""The vendor registry: one entry per vendor, each naming things its folder really has."""

from __future__ import annotations

import pytest

from integrations.connectors.errors import PermanentError
from integrations.models import Vendor
from integrations.vendors import VENDORS, connector_for, vendor_entry, vendor_operation
from integrations.vendors.spec import VendorOperation


def test_every_vendor_a_connection_can_have_is_registered() -> None:
    assert set(VENDORS) == set(Vendor.values)


@pytest.mark.parametrize("code", sorted(VENDORS))
def test_registered_operations_are_ones_the_connector_performs(code: str) -> None:
    entry = VENDORS[code]
    performed = set(getattr(entry.connector, "batch_size", {}))
    assert {op.name for op in entry.operations.values()} <= performed
    # Each renders with a default mapping of the vendor, for the same canonical model.
    defaults = {m.object_type: m.canonical_model for m in entry.mappings}
    for (model, _action), op in entry.operations.items():
        assert defaults.get(op.object_type) == model, (code, op)


def test_an_invoice_is_created_in_xero_by_put_invoices() -> None:
    assert vendor_operation("xero", "invoice", "create") == VendorOperation(
        "put_invoices", "Invoices", requires=("Type", "Contact", "Reference", "LineItems")
    )
    assert vendor_operation("harvest", "invoice", "create") is None


def test_an_unknown_vendor_has_no_connector() -> None:
    class Stranger:
        vendor = "sap"

    with pytest.raises(PermanentError, match="no connector for vendor sap"):
        connector_for(Stranger())
    with pytest.raises(PermanentError, match="no connector for vendor sap"):
        vendor_entry("sap")
