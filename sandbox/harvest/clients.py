"""Harvest clients and their contacts. Client names are unique (a duplicate is a 422)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import SYSTEM, Invalid, Kind

if TYPE_CHECKING:
    from .base import HarvestBase


def _validate_client(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    if "name" in changes:
        other = h.store.table(SYSTEM, "clients").index_get("name", data["name"].casefold())
        if other is not None and other is not existing:
            h.store.stats.of(SYSTEM, "clients").duplicates_detected += 1
            raise Invalid("Name has already been taken", "duplicate")


def _derive_client(h: HarvestBase, data: dict[str, Any], changes: dict[str, Any]) -> None:
    data.setdefault("statement_key", secrets.token_hex(16))


CLIENTS = Kind(
    "clients",
    {"name": "str", "is_active": "bool", "address": "str", "currency": "str"},
    ("name",),
    {"is_active": True, "address": None, "currency": "USD"},
    ("is_active",),
    validate=_validate_client,
    derive=_derive_client,
    index_keys=lambda data: {"name": str(data["name"]).casefold()},
)


def _validate_contact(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    h.need("clients", data["client_id"], "Client")


def _render_contact(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    return {
        "client": h.ref("clients", d["client_id"], "name"),
        **{k: v for k, v in d.items() if k != "client_id"},
    }


CONTACTS = Kind(
    "contacts",
    {
        "client_id": "int",
        "title": "str",
        "first_name": "str",
        "last_name": "str",
        "email": "str",
        "phone_office": "str",
        "phone_mobile": "str",
        "fax": "str",
    },
    ("client_id", "first_name"),
    {
        "title": None,
        "last_name": None,
        "email": None,
        "phone_office": "",
        "phone_mobile": "",
        "fax": "",
    },
    ("client_id",),
    validate=_validate_contact,
    render=_render_contact,
)
