"""Which canonical models and fields a mapping may target (model metadata only, no queries).

A canonical model is a concrete `CanonicalRecord` subclass of the integrations app, named by its
lower-case model name (``customer``, ``timeentry``). A field is one of its concrete fields, except
the sync bookkeeping (ids, source version, timestamps), or ``<relation>__<attr>`` for a foreign key
given by the vendor's identifier: ``attr`` is ``external_id`` (resolved through the
cross-reference table) or a unique field of the related model (``legal_entity__code``).

``opportunity`` has no table: the CRM opportunity is the trigger and input of project
provisioning, which reads the mapped fields directly. It is declared here so its mapping can be
validated like any other; if an Opportunity model is added, remove it from VIRTUAL_MODELS.
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
        }
    ),
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


def canonical_field_problem(model_name: str, field_name: str) -> str | None:
    """Why `field_name` cannot be mapped on `model_name`, or None when it can."""
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
