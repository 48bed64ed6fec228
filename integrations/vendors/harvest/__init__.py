"""Harvest v2, the PSA: connector, default mappings; webhooks come through the signed change
feed it shares with Salesforce (integrations/vendors/changefeed.py)."""

from __future__ import annotations

from integrations.vendors.changefeed import CHANGE_FEED
from integrations.vendors.harvest.connector import HarvestConnector
from integrations.vendors.harvest.mappings import MAPPINGS, VALUE_MAPS
from integrations.vendors.spec import VendorOperation

# (canonical model, action) -> the connector operation and the object whose mapping renders it.
# Harvest has no batch endpoint: one item per call; updates carry Harvest's ``id``.
OPERATIONS = {
    ("customer", "create"): VendorOperation("create_client", "clients", requires=("name",)),
    ("customer", "update"): VendorOperation("update_client", "clients", requires=("id",)),
    ("project", "create"): VendorOperation(
        "create_project", "projects", requires=("name", "client_id")
    ),
    ("project", "update"): VendorOperation("update_project", "projects", requires=("id",)),
}
WEBHOOK = CHANGE_FEED

__all__ = ["MAPPINGS", "OPERATIONS", "VALUE_MAPS", "WEBHOOK", "HarvestConnector"]
