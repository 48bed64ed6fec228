"""People's writes of ownership rules (which system owns an object, or one of its fields),
checked against the canonical models before they are stored, and audited.

A rule names a canonical model (``customer``, ``timeentry``; the models a mapping may target,
integrations/mapping/canonical.py) and, for a field rule, one of its fields as the ownership
check reads it (integrations/mapping/ownership.py): the field's own name, a relation by its name
(``legal_entity`` covers ``legal_entity__code``). A rule naming anything else would protect
nothing while looking as if it did, so it is refused in words. The console and the REST API
write through here; the audit row is the config rows' (integrations/services/config_rows.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import transaction

from integrations.mapping.canonical import (
    BOOKKEEPING,
    VIRTUAL_MODELS,
    canonical_model_names,
    canonical_models,
)
from integrations.models import OwnershipRule
from integrations.services.config_rows import (
    config_row_create,
    config_row_delete,
    config_row_update,
)

Actor = AbstractBaseUser | AnonymousUser | None


def ownership_fields(object_type: str) -> list[str]:
    """The fields of a canonical model a rule may name ([] for no such model)."""
    if object_type in VIRTUAL_MODELS:
        return sorted({name.partition("__")[0] for name in VIRTUAL_MODELS[object_type]})
    model = canonical_models().get(object_type)
    if model is None:
        return []
    return sorted(
        f.name for f in model._meta.concrete_fields if f.name not in BOOKKEEPING and f.name != "pk"
    )


def ownership_rule_problems(*, object_type: str, field: str) -> dict[str, str]:
    """Why a rule for ``object_type`` and ``field`` ("" for the whole object) would protect
    nothing, by form field; {} when it names real things."""
    if object_type not in canonical_model_names():
        return {
            "object_type": f"'{object_type}' is not a canonical model; choose one of: "
            f"{', '.join(canonical_model_names())}."
        }
    if field and field not in ownership_fields(object_type):
        return {
            "field": f"'{field}' is not a field of {object_type}; leave it empty for the whole "
            f"object, or choose one of: {', '.join(ownership_fields(object_type))}."
        }
    return {}


def _check(data: Mapping[str, Any], row: OwnershipRule | None = None) -> None:
    object_type = str(data.get("object_type", row.object_type if row else "") or "")
    field = str(data.get("field", row.field if row else "") or "")
    problems = ownership_rule_problems(object_type=object_type, field=field)
    if problems:
        raise ValidationError(problems)
    twin = OwnershipRule.objects.filter(object_type=object_type, field=field)
    if row is not None:
        twin = twin.exclude(pk=row.pk)
    found = twin.first()
    if found is not None:
        raise ValidationError(f"Rule #{found.pk} already covers {found}; change that rule instead.")


@transaction.atomic
def ownership_rule_create(*, data: Mapping[str, Any], actor: Actor) -> OwnershipRule:
    _check(data)
    return config_row_create(model=OwnershipRule, data=data, actor=actor)


@transaction.atomic
def ownership_rule_update(
    *, rule: OwnershipRule, data: Mapping[str, Any], actor: Actor
) -> OwnershipRule:
    _check(data, rule)
    return config_row_update(row=rule, data=data, actor=actor)


@transaction.atomic
def ownership_rule_delete(*, rule: OwnershipRule, actor: Actor) -> None:
    """Without the rule, the object (or field) falls back to its object's rule, or to no owner:
    every system's changes apply."""
    config_row_delete(row=rule, actor=actor)
