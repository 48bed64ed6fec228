"""Salesforce, the CRM: connector, default mappings; webhooks come through the signed change
feed it shares with Harvest (integrations/vendors/changefeed.py)."""

from __future__ import annotations

from integrations.vendors.changefeed import CHANGE_FEED
from integrations.vendors.salesforce.connector import SalesforceConnector
from integrations.vendors.salesforce.mappings import MAPPINGS, VALUE_MAPS
from integrations.vendors.spec import VendorOperation

# (canonical model, action) -> the connector operation and the object whose mapping renders it.
# sObject collections take 200 records per call; updates carry the record's ``Id``.
OPERATIONS = {
    (model, action): VendorOperation(
        f"{action}_{sobject.lower()}", sobject, requires=("Id",) if action == "update" else ()
    )
    for model, sobject in (
        ("customer", "Account"),
        ("opportunity", "Opportunity"),
        ("contract", "Contract"),
    )
    for action in ("create", "update")
}
WEBHOOK = CHANGE_FEED

__all__ = ["MAPPINGS", "OPERATIONS", "VALUE_MAPS", "WEBHOOK", "SalesforceConnector"]
