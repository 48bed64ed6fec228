"""Harvest projects: one client each, names unique per client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import SYSTEM, Invalid, Kind

if TYPE_CHECKING:
    from .base import HarvestBase


def _validate(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    h.need("clients", data["client_id"], "Client")
    if "name" in changes or "client_id" in changes:
        other = h.store.table(SYSTEM, "projects").index_get(
            "client_name", (data["client_id"], data["name"].casefold())
        )
        if other is not None and other is not existing:
            h.store.stats.of(SYSTEM, "projects").duplicates_detected += 1
            raise Invalid("Name has already been taken", "duplicate")


def _render(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "client_id"}
    out["client"] = h.ref("clients", d["client_id"], "name", "currency")
    out["over_budget_notification_date"] = None
    return out


PROJECTS = Kind(
    "projects",
    {
        "client_id": "int",
        "name": "str",
        "code": "str",
        "is_active": "bool",
        "is_billable": "bool",
        "is_fixed_fee": "bool",
        "bill_by": "str",
        "hourly_rate": "float",
        "budget": "float",
        "budget_by": "str",
        "budget_is_monthly": "bool",
        "notify_when_over_budget": "bool",
        "over_budget_notification_percentage": "float",
        "show_budget_to_all": "bool",
        "cost_budget": "float",
        "cost_budget_include_expenses": "bool",
        "fee": "float",
        "notes": "str",
        "starts_on": "date",
        "ends_on": "date",
    },
    ("client_id", "name", "is_billable", "bill_by", "budget_by"),
    {
        "code": None,
        "is_active": True,
        "is_fixed_fee": False,
        "hourly_rate": None,
        "budget": None,
        "budget_is_monthly": False,
        "notify_when_over_budget": False,
        "over_budget_notification_percentage": 80.0,
        "show_budget_to_all": False,
        "cost_budget": None,
        "cost_budget_include_expenses": False,
        "fee": None,
        "notes": "",
        "starts_on": None,
        "ends_on": None,
    },
    ("client_id", "is_active"),
    validate=_validate,
    index_keys=lambda data: {"client_name": (data["client_id"], str(data["name"]).casefold())},
    render=_render,
)
