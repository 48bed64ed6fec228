"""System-of-record ownership applied to mapped fields: who may change what.

`load_ownership_rules()` reads the OwnershipRule table once into an immutable `OwnershipRules`;
callers hold it for a batch (one query per batch, not per record). `split_by_owner` is pure.

Which role owns a field: its field rule, else the object's rule. A field given as
``<relation>__<attr>`` (``legal_entity__code``) is owned like ``<relation>``. When neither rule
exists the object has no configured owner and any system may write it (nothing to protect).

The decision, for each mapped field from `source_role`:

- the source owns it -> `applied`;
- another role owns it, and the canonical record does not exist yet (`current` is None) ->
  `applied` as well, and listed in `filled`. Creating a record with the only values anyone has
  sent overwrites nothing; refusing them would leave e.g. a customer first seen in the ERP
  without a name until the CRM speaks. The owner's next update replaces them as usual.
- another role owns it and the record exists:
  - incoming value equal to the current one -> `unchanged` (not applied, not a conflict);
  - incoming value empty (None or "") -> `unchanged`: a non-owner not knowing a value does not
    contradict the owner;
  - otherwise -> `conflicts` {field: owner role}, never applied, even when the current value is
    empty: a non-owner filling a gap is still a change the data steward should decide on (it
    is typically real information, "the CRM has a VAT number the ERP lacks").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from integrations.models import OwnershipRule


@dataclass(frozen=True, slots=True)
class OwnershipRules:
    """object type -> owning role, and (object type, field) -> owning role."""

    objects: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    fields: Mapping[tuple[str, str], str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, rules: list[tuple[str, str, str]]) -> OwnershipRules:
        """From (object_type, field or "", owner_role) triples."""
        objects: dict[str, str] = {}
        fields: dict[tuple[str, str], str] = {}
        for object_type, field_name, owner_role in rules:
            if field_name:
                fields[(object_type, field_name)] = owner_role
            else:
                objects[object_type] = owner_role
        return cls(objects=MappingProxyType(objects), fields=MappingProxyType(fields))

    def owner_of(self, object_type: str, field_name: str) -> str | None:
        base = field_name.partition("__")[0]
        owner = self.fields.get((object_type, base))
        if owner is not None:
            return owner
        return self.objects.get(object_type)


@dataclass(frozen=True, slots=True)
class OwnershipDecision:
    applied: dict[str, Any]
    conflicts: dict[str, str]
    filled: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def has_conflicts(self) -> bool:
        return bool(self.conflicts)


def load_ownership_rules() -> OwnershipRules:
    """Selector: every ownership rule, in one query."""
    return OwnershipRules.build(
        list(OwnershipRule.objects.values_list("object_type", "field", "owner_role"))
    )


def _empty(value: Any) -> bool:
    return value is None or value == ""


def split_by_owner(
    rules: OwnershipRules,
    *,
    object_type: str,
    source_role: str,
    fields: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
) -> OwnershipDecision:
    """Split mapped fields into those `source_role` may apply and those another role owns.

    `current` is the canonical record's present values (None when it does not exist yet).
    """
    applied: dict[str, Any] = {}
    conflicts: dict[str, str] = {}
    filled: list[str] = []
    unchanged: list[str] = []
    for name, value in fields.items():
        owner = rules.owner_of(object_type, name)
        if owner is None or owner == source_role:
            applied[name] = value
        elif current is None:
            applied[name] = value
            filled.append(name)
        elif _empty(value) or current.get(name) == value:
            unchanged.append(name)
        else:
            conflicts[name] = owner
    return OwnershipDecision(
        applied=applied, conflicts=conflicts, filled=tuple(filled), unchanged=tuple(unchanged)
    )
