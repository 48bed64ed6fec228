"""Plain data shared by the vendor folders and the mapping layer: field mappings, the default
mappings and value maps a vendor ships, and the operations it offers.

Nothing here imports Django, the mapping code or a connector, so a vendor folder (connectors
layer) can declare its defaults and `integrations.mapping` (the layer above) can compile them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field mapping as plain data (what a FieldMapping row holds).

    Outbound lists: a vendor path with ``[]`` (``LineItems[].Quantity``) writes into every item
    of a list. With ``lines[].quantity`` as the canonical field each item takes its value from
    the matching item of the canonical ``lines`` list; with a plain canonical field
    (``legal_entity__code``) every item gets the same value. Lists are outbound only.
    """

    canonical_field: str
    vendor_path: str
    direction: str = "both"
    transform: str = "copy"
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = False

    @property
    def inbound(self) -> bool:
        return self.direction in ("in", "both")

    @property
    def outbound(self) -> bool:
        return self.direction in ("out", "both") and self.transform != "concat"


def F(  # a short name: the default mappings read as a table
    canonical_field: str,
    vendor_path: str,
    direction: str = "both",
    transform: str = "copy",
    required: bool = False,
    **options: object,
) -> FieldSpec:
    return FieldSpec(
        canonical_field=canonical_field,
        vendor_path=vendor_path,
        direction=direction,
        transform=transform,
        options=options,
        required=required,
    )


@dataclass(frozen=True, slots=True)
class ValueMapDefault:
    name: str
    description: str
    entries: dict[str, str]
    default: str = ""


@dataclass(frozen=True, slots=True)
class MappingDefault:
    object_type: str
    canonical_model: str
    external_id_path: str
    version_path: str
    fields: tuple[FieldSpec, ...]
    notes: str = ""
    # Rows an earlier release shipped that `fields` now supersede: `mapping_defaults_upgrade`
    # drops a published row equal to one of these (an admin's edited row differs, and stays).
    replaces: tuple[FieldSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class VendorOperation:
    """How a vendor carries out one action on one canonical model.

    `name` is the connector operation (the `OutboxMessage.operation` value), `object_type` the
    vendor object whose published mapping renders the payload, and `requires` the vendor paths
    a payload must have before it is worth sending (a mapping that leaves one out cannot
    render: the record goes to the integration admins instead of being refused by the vendor).
    """

    name: str
    object_type: str
    requires: tuple[str, ...] = ()
