"""Harvest users (the firm's people, with cost and default bill rates) and roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import Kind

if TYPE_CHECKING:
    from .base import HarvestBase

USERS = Kind(
    "users",
    {
        "first_name": "str",
        "last_name": "str",
        "email": "str",
        "telephone": "str",
        "timezone": "str",
        "is_contractor": "bool",
        "is_active": "bool",
        "weekly_capacity": "int",
        "default_hourly_rate": "float",
        "cost_rate": "float",
        "roles": "list",
        "access_roles": "list",
        "has_access_to_all_future_projects": "bool",
    },
    ("first_name", "last_name", "email"),
    {
        "telephone": "",
        "timezone": "Etc/UTC",
        "is_contractor": False,
        "is_active": True,
        "weekly_capacity": 144000,  # 40 h in seconds, Harvest's unit
        "default_hourly_rate": None,
        "cost_rate": None,
        "roles": [],
        "access_roles": ["member"],
        "has_access_to_all_future_projects": False,
    },
    ("is_active",),
)


def _validate_role(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    for user_id in data.get("user_ids") or []:
        h.need("users", user_id, "User")


ROLES = Kind(
    "roles",
    {"name": "str", "user_ids": "list"},
    ("name",),
    {"user_ids": []},
    validate=_validate_role,
    render=lambda h, d: dict(d),  # user_ids stay: a role lists its users by id
)
