"""Harvest invoices: line items per project, with amounts, tax, discount and totals derived."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import Invalid, Kind

if TYPE_CHECKING:
    from .base import HarvestBase

STATES = ("draft", "open", "paid", "closed")


def _validate(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    h.need("clients", data["client_id"], "Client")
    if data.get("state") not in STATES:
        raise Invalid("State is invalid")
    for item in data.get("line_items") or []:
        if not isinstance(item, dict):
            raise Invalid("Line items are invalid")
        if item.get("project_id") is not None:
            h.need("projects", item["project_id"], "Line item project")


def _derive(h: HarvestBase, data: dict[str, Any], changes: dict[str, Any]) -> None:
    """Line amounts, tax, discount and the totals, as Harvest computes them."""
    subtotal = taxed = taxed2 = 0.0
    items = []
    for n, item in enumerate(data.get("line_items") or [], start=1):
        quantity = float(item.get("quantity") or 1)
        unit_price = float(item.get("unit_price") or 0)
        amount = round(quantity * unit_price, 2)
        items.append(
            {
                **item,
                "id": item.get("id") or n,
                "quantity": quantity,
                "unit_price": unit_price,
                "amount": amount,
            }
        )
        subtotal += amount
        taxed += amount if item.get("taxed") else 0.0
        taxed2 += amount if item.get("taxed2") else 0.0
    data["line_items"] = items
    discount_amount = round(subtotal * (data.get("discount") or 0) / 100, 2)
    tax_amount = (
        round(taxed * (data.get("tax") or 0) / 100, 2) if data.get("tax") is not None else None
    )
    tax2_amount = (
        round(taxed2 * (data.get("tax2") or 0) / 100, 2) if data.get("tax2") is not None else None
    )
    total = round(subtotal - discount_amount + (tax_amount or 0) + (tax2_amount or 0), 2)
    data.update(
        amount=total,
        due_amount=0.0 if data.get("state") in ("paid", "closed") else total,
        discount_amount=discount_amount,
        tax_amount=tax_amount,
        tax2_amount=tax2_amount,
    )


def _render(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k not in ("client_id", "line_items", "creator_id")}
    out["client"] = h.ref("clients", d["client_id"], "name")
    out["creator"] = h.ref("users", d.get("creator_id") or h.admin_id())
    out["line_items"] = [
        {
            **{k: v for k, v in item.items() if k != "project_id"},
            "project": h.project_ref(item.get("project_id")),
        }
        for item in d.get("line_items") or []
    ]
    out.setdefault("client_key", None)
    for name in ("sent_at", "paid_at", "paid_date", "closed_at"):
        out.setdefault(name, None)
    out.update(estimate=None, retainer=None, recurring_invoice_id=None, payment_options=[])
    return out


INVOICES = Kind(
    "invoices",
    {
        "client_id": "int",
        "number": "str",
        "purchase_order": "str",
        "tax": "float",
        "tax2": "float",
        "discount": "float",
        "subject": "str",
        "notes": "str",
        "currency": "str",
        "issue_date": "date",
        "due_date": "date",
        "payment_term": "str",
        "period_start": "date",
        "period_end": "date",
        "line_items": "list",
        "state": "str",
    },
    ("client_id",),
    {
        "number": None,
        "purchase_order": None,
        "tax": None,
        "tax2": None,
        "discount": None,
        "subject": None,
        "notes": None,
        "currency": None,
        "issue_date": None,
        "due_date": None,
        "payment_term": "custom",
        "period_start": None,
        "period_end": None,
        "line_items": [],
        "state": "draft",
    },
    ("client_id", "state"),
    "issue_date",
    validate=_validate,
    derive=_derive,
    render=_render,
)
