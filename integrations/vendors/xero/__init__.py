"""Xero Accounting, the ERP: connector, webhook verification, default mappings."""

from __future__ import annotations

from integrations.vendors.spec import VendorOperation
from integrations.vendors.xero.connector import XeroConnector
from integrations.vendors.xero.mappings import MAPPINGS, VALUE_MAPS
from integrations.vendors.xero.webhook import XERO_WEBHOOK

# (canonical model, action) -> the connector operation and the object whose mapping renders it.
# Invoices and contacts go 50 to a call; an invoice update is one POST by InvoiceID, a contact
# update a POST by ContactID (50 to a call).
OPERATIONS = {
    ("invoice", "create"): VendorOperation(
        "put_invoices", "Invoices", requires=("Type", "Contact", "Reference", "LineItems")
    ),
    ("invoice", "update"): VendorOperation("post_invoice", "Invoices", requires=("InvoiceID",)),
    ("customer", "create"): VendorOperation("put_contacts", "Contacts", requires=("Name",)),
    # A contact update (a fixed tax number, billing e-mail): POST by ContactID, 50 to a call.
    ("customer", "update"): VendorOperation("post_contacts", "Contacts", requires=("ContactID",)),
    # A project's dimension: an option of a tracking category (project provisioning), 50 to a
    # call per category.
    ("project_dimension", "create"): VendorOperation(
        "put_tracking_options", "TrackingOptions", requires=("Name", "TrackingCategoryName")
    ),
}
WEBHOOK = XERO_WEBHOOK

__all__ = ["MAPPINGS", "OPERATIONS", "VALUE_MAPS", "WEBHOOK", "XeroConnector"]
