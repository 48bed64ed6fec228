"""Harvest expenses and their categories (a unit price turns ``units`` into a total cost)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .approval import check_work, count_repeated_reference, derive_approval, reference_keys
from .schema import SYSTEM, Invalid, Kind

if TYPE_CHECKING:
    from .base import HarvestBase

EXPENSE_CATEGORIES = Kind(
    "expense_categories",
    {"name": "str", "unit_name": "str", "unit_price": "float", "is_active": "bool"},
    ("name",),
    {"unit_name": None, "unit_price": None, "is_active": True},
    ("is_active",),
)


def _validate(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    check_work(h, "expenses", data, existing, changes)
    h.need("expense_categories", data["expense_category_id"], "Expense category")
    if data.get("total_cost") is None and data.get("units") is None:
        raise Invalid("Total cost can't be blank")
    count_repeated_reference(h, "expenses", data, existing, changes)


def _derive(h: HarvestBase, data: dict[str, Any], changes: dict[str, Any]) -> None:
    derive_approval(data)
    if data.get("total_cost") is None and data.get("units") is not None:
        category = h.store.get(SYSTEM, "expense_categories", data["expense_category_id"])
        unit_price = category.data.get("unit_price") if category else None
        data["total_cost"] = round((unit_price or 0.0) * data["units"], 2)


def _render(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    approved = d.get("approval_status") == "approved"
    category = h.store.get(SYSTEM, "expense_categories", d["expense_category_id"])
    ua = h.store.table(SYSTEM, "user_assignments").index_get(
        "pu", (d["project_id"], d.get("user_id"))
    )
    return {
        "client": h.client_of(d["project_id"]),
        "project": h.project_ref(d["project_id"]),
        "expense_category": None
        if category is None
        else {
            "id": category.key,
            "name": category.data["name"],
            "unit_price": None
            if category.data.get("unit_price") is None
            else str(category.data["unit_price"]),
            "unit_name": category.data.get("unit_name"),
        },
        "user": h.ref("users", d.get("user_id")),
        "user_assignment": h.rendered("user_assignments", ua) if ua else None,
        "receipt": d.get("receipt"),
        "invoice": d.get("invoice"),
        "notes": d.get("notes"),
        "units": d.get("units"),
        "total_cost": d.get("total_cost"),
        "billable": bool(d.get("billable")),
        "is_closed": approved,
        "approval_status": d.get("approval_status"),
        "is_locked": approved or bool(d.get("is_billed")),
        "is_billed": bool(d.get("is_billed")),
        "locked_reason": "Item Approved and Locked for this Time Period" if approved else None,
        "spent_date": d["spent_date"],
    }


EXPENSES = Kind(
    "expenses",
    {
        "user_id": "int",
        "project_id": "int",
        "expense_category_id": "int",
        "spent_date": "date",
        "notes": "str",
        "units": "int",
        "total_cost": "float",
        "billable": "bool",
        "approval_status": "str",
        "is_billed": "bool",
        "receipt": "dict",
    },
    ("project_id", "expense_category_id", "spent_date"),
    {"notes": None, "units": None, "billable": True, "receipt": None},
    ("user_id", "project_id", "client_id", "is_billed", "approval_status", "is_closed"),
    "spent_date",
    validate=_validate,
    derive=_derive,
    index_keys=reference_keys,
    render=_render,
)
