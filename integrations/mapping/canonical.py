"""Which canonical models and fields a mapping may target (model metadata only, no queries).

A canonical model is a concrete `CanonicalRecord` subclass of the integrations app, named by its
lower-case model name (``customer``, ``timeentry``). A field is one of its concrete fields, except
the sync bookkeeping (ids, source version, timestamps), or ``<relation>__<attr>`` for a foreign key
given by the vendor's identifier: ``attr`` is ``external_id`` (resolved through the
cross-reference table) or a unique field of the related model (``legal_entity__code``).

Outbound, a workflow hands the sync layer more than a model's own fields: values it works out,
attributes of related records sent by value, its lines, constants only the mapping supplies.
`OUTBOUND_FIELDS` declares them per model; they may be mapped in the "out" direction only.

``opportunity`` has no table: the CRM opportunity is the trigger and input of project
provisioning, which reads the mapped fields directly. It is declared here so its mapping can be
validated like any other; if an Opportunity model is added, remove it from VIRTUAL_MODELS.
``project_dimension`` (a project's tracking option in the ERP) has none either: provisioning
writes it and it is never read back as a record of its own (polls skip virtual models, except
those a workflow waits for: the opportunity, handed to provisioning, integrations/sync/polling.py).
"""

from __future__ import annotations

from django.apps import apps
from django.db import models

from integrations.models import CanonicalRecord

EXTERNAL_ID = "external_id"
BOOKKEEPING = frozenset(
    {"id", "source_system", "source_version", "field_sources", "created_at", "updated_at"}
)
VIRTUAL_MODELS: dict[str, frozenset[str]] = {
    "opportunity": frozenset(
        {
            "name",
            "stage",
            "is_won",
            "is_closed",
            "close_date",
            "amount",
            "currency",
            "billing_model",
            "region",
            "customer__external_id",
            "legal_entity__code",
            "psa_project_id",
            "erp_project_id",
            # Emails of who delivers the deal (the team's separated by semicolons).
            "delivery_lead",
            "delivery_team",
        }
    ),
    # A project's dimension in the ERP (a Xero tracking option): written by provisioning
    # (integrations/workflows/provisioning.py), never read back as a record of its own.
    "project_dimension": frozenset({"name", "category"}),
    # The ERP invoice mirrored in the PSA, and each of its payments recorded there, by status
    # back-sync (integrations/workflows/back_sync.py): written only, never read back as records
    # of their own (the ERP's invoice and payment are the canonical ones).
    "psa_invoice": frozenset(
        {
            "customer__external_id",
            "number",
            "currency",
            "issue_date",
            "due_date",
            "subject",
            "notes",
            "tax_percent",
            # A constant the mapping supplies (Harvest's invoice item category).
            "kind",
            "lines[].project",
            "lines[].description",
            "lines[].quantity",
            "lines[].unit_amount",
            "lines[].taxed",
        }
    ),
    "psa_payment": frozenset({"invoice__external_id", "amount", "date", "notes"}),
    # A contract's negotiated bill rate for a role as the CRM keeps it (a custom child object
    # of the contract): read by change orders (integrations/workflows/change_orders.py), which
    # give the contract's rate card in Concord the amended rate. No table of its own: the rate
    # card is the canonical record, and the PSA owns the firm's default ones.
    "contract_rate": frozenset(
        {"contract__external_id", "role", "currency", "bill_rate", "modified_at"}
    ),
    # The PSA's standard tasks assigned to a project provisioning created there
    # (integrations/workflows/provisioning.py): written once per project, never read back.
    "project_tasks": frozenset({"project__external_id", "active"}),
    # A person staffed on that project (the opportunity's delivery lead or team): the canonical
    # Assignment is the record; this is its PSA write, never read back.
    "psa_user_assignment": frozenset(
        {"project__external_id", "resource__external_id", "project_manager", "active"}
    ),
}


# What an outbound canonical dict carries besides the model's fields (direction "out" only):
OUTBOUND_FIELDS: dict[str, frozenset[str]] = {
    # The billing run's draft invoice (integrations/workflows/time_to_erp.py `_invoice_canonical`).
    "invoice": frozenset(
        {
            # "CONCORD-INV-<id>": how a retried create finds the invoice it already made.
            "reference",
            # Constants: Concord issues sales invoices with tax-exclusive lines; the workflow
            # sends neither, the mapping's default transform writes the vendor's value.
            "kind",
            "tax_mode",
            # The customer by value, for an ERP that does not know it yet.
            "customer__name",
            "customer__tax_number",
            # The tax rate the lines are taxed at (the contract's).
            "tax_rate__code",
            # One item per billing event.
            "lines[].description",
            "lines[].quantity",
            "lines[].unit_amount",
            "lines[].amount",
        }
    ),
    # The project provisioning creates in the PSA (integrations/workflows/provisioning.py).
    "project": frozenset(
        {
            # The contract's billing model, by value: how the PSA bills the project's time.
            "billing_model",
            # Constants the PSA needs on a new project (billable, what the budget counts).
            "billable",
            "budget_by",
            # Where the project came from and its ids in the other systems, in words (the
            # opportunity, the legal entity's code, the ERP's ids): the PSA has no fields for them.
            "notes",
        }
    ),
    # The ids provisioning writes back to the CRM contract it provisioned.
    # Status back-sync (integrations/workflows/back_sync.py): the contract's billing status,
    # summed from the ERP's invoices and payments.
    "contract": frozenset(
        {
            "psa_project_id",
            "erp_project_id",
            "billing_status",
            "amount_invoiced",
            "amount_paid",
            "amount_due",
            "last_invoice_number",
            "last_payment_date",
        }
    ),
    # Status back-sync (integrations/workflows/back_sync.py): a time entry marked billed in the
    # PSA once its ERP invoice is issued.
    "timeentry": frozenset({"is_billed"}),
}


def canonical_models() -> dict[str, type[models.Model]]:
    found: dict[str, type[models.Model]] = {}
    for model in apps.get_app_config("integrations").get_models():
        if issubclass(model, CanonicalRecord) and model._meta.model_name:
            found[model._meta.model_name] = model
    return found


def canonical_model_names() -> list[str]:
    return sorted([*canonical_models(), *VIRTUAL_MODELS])


def canonical_model_problem(model_name: str) -> str | None:
    if model_name in VIRTUAL_MODELS or model_name in canonical_models():
        return None
    return f"'{model_name}' is not a canonical model (one of: {', '.join(canonical_model_names())})"


def canonical_field_problem(
    model_name: str, field_name: str, *, outbound_only: bool = False
) -> str | None:
    """Why `field_name` cannot be mapped on `model_name`, or None when it can. `outbound_only`:
    the field is mapped in the "out" direction only, so `OUTBOUND_FIELDS` count too."""
    if outbound_only and field_name in OUTBOUND_FIELDS.get(model_name, ()):
        return None
    if field_name in OUTBOUND_FIELDS.get(model_name, ()):
        return f"'{field_name}' is sent by value and cannot be read back: map it outbound only"
    if model_name in VIRTUAL_MODELS:
        if field_name in VIRTUAL_MODELS[model_name]:
            return None
        return f"'{field_name}' is not a field of {model_name}"
    model = canonical_models().get(model_name)
    if model is None:
        return f"'{model_name}' is not a canonical model"
    relation, _, attr = field_name.partition("__")
    try:
        field = model._meta.get_field(relation)
    except Exception:  # FieldDoesNotExist
        return f"'{field_name}' is not a field of {model_name}"
    if not field.concrete or relation in BOOKKEEPING:
        return f"'{field_name}' is not a mappable field of {model_name}"
    if not attr:
        if field.is_relation:
            return (
                f"'{field_name}' is a relation: map the vendor's id to "
                f"'{field_name}__{EXTERNAL_ID}' (the upsert step resolves it)"
            )
        return None
    if not field.is_relation or field.related_model is None:
        return f"'{relation}' on {model_name} is not a relation, so '{field_name}' is invalid"
    if attr == EXTERNAL_ID:
        return None
    related: type[models.Model] = field.related_model
    try:
        target = related._meta.get_field(attr)
    except Exception:
        return f"'{attr}' is not a field of {related._meta.model_name}"
    if not getattr(target, "unique", False):
        return f"'{attr}' of {related._meta.model_name} is not unique, so it cannot identify one"
    return None
