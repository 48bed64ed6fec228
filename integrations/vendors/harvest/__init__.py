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
    # Status back-sync (integrations/workflows/back_sync.py): the ERP invoice mirrored in
    # Harvest, its payments recorded there, its time entries marked billed.
    ("psa_invoice", "create"): VendorOperation(
        "create_invoice", "invoices", requires=("client_id", "number")
    ),
    ("psa_payment", "create"): VendorOperation(
        "create_invoice_payment", "invoice_payments", requires=("invoice_id", "amount")
    ),
    ("timeentry", "update"): VendorOperation(
        "update_time_entry", "time_entries", requires=("id", "is_billed")
    ),
    # A milestone marked invoiced once its ERP invoice exists (workflows/milestones.py).
    ("milestone", "update"): VendorOperation("update_milestone", "x_milestones", requires=("id",)),
    # Project provisioning (workflows/provisioning.py): a fixed-fee contract's milestones, and
    # the firm's standard tasks (Harvest's default tasks) assigned to the new project: one row
    # per project, the connector assigns each task it does not find assigned already.
    ("milestone", "create"): VendorOperation(
        "create_milestone", "x_milestones", requires=("project_id", "name", "amount")
    ),
    ("psa_user_assignment", "create"): VendorOperation(
        "create_user_assignment", "user_assignments", requires=("project_id", "user_id")
    ),
    ("project_tasks", "create"): VendorOperation(
        "create_task_assignments", "task_assignments", requires=("project_id",)
    ),
}
WEBHOOK = CHANGE_FEED

__all__ = ["MAPPINGS", "OPERATIONS", "VALUE_MAPS", "WEBHOOK", "HarvestConnector"]
