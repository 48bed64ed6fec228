"""Harvest invoices: line items per project, with amounts, tax, discount and totals derived;
and their payments (``/invoices/{id}/payments``): each lowers the invoice's ``due_amount``, and
the one that settles it marks the invoice paid (``paid_at``, ``paid_date``), as Harvest does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import SYSTEM, Invalid, Kind, iso

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
    paid = float(data.get("_paid") or 0.0)  # what its payments add up to (not rendered)
    data.update(
        amount=total,
        due_amount=0.0 if data.get("state") in ("paid", "closed") else round(total - paid, 2),
        discount_amount=discount_amount,
        tax_amount=tax_amount,
        tax2_amount=tax2_amount,
    )


def _render(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: v
        for k, v in d.items()
        if k not in ("client_id", "line_items", "creator_id") and not k.startswith("_")
    }
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


# -- payments ------------------------------------------------------------------------------------


def _validate_payment(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    invoice = h.need("invoices", data["invoice_id"], "Invoice")
    amount = data.get("amount")
    if not isinstance(amount, float) or amount <= 0:
        raise Invalid("Amount must be greater than 0")
    if invoice.data.get("state") in ("paid", "closed"):
        raise Invalid("Invoice is already paid or closed", "invoice_settled")
    if amount > float(invoice.data.get("due_amount") or 0.0) + 0.005:
        raise Invalid("Amount exceeds the amount due on the invoice", "overpaid")
    if data.get("paid_at") and data.get("paid_date"):
        raise Invalid("Pass either paid_at or paid_date, but not both")


def _derive_payment(h: HarvestBase, data: dict[str, Any], changes: dict[str, Any]) -> None:
    if data.get("paid_at"):
        data["paid_date"] = str(data["paid_at"])[:10]
    elif data.get("paid_date"):
        data["paid_at"] = f"{data['paid_date']}T00:00:00Z"
    else:
        now = iso(h.store.clock.now())
        data.update(paid_at=now, paid_date=now[:10])


def _render_payment(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    admin = h.store.get(SYSTEM, "users", h.admin_id())
    name = f"{admin.data['first_name']} {admin.data['last_name']}" if admin else None
    return {
        "amount": d["amount"],
        "paid_at": d.get("paid_at"),
        "paid_date": d.get("paid_date"),
        "recorded_by": name,
        "recorded_by_email": admin.data.get("email") if admin else None,
        "notes": d.get("notes"),
        "transaction_id": None,
        "payment_gateway": {"id": None, "name": None},
    }


def payment_settle(h: HarvestBase, payment: dict[str, Any]) -> None:
    """A payment recorded: the invoice owes that much less; settled, it is paid."""
    invoice = h.need("invoices", payment["invoice_id"], "Invoice")
    paid = round(float(invoice.data.get("_paid") or 0.0) + payment["amount"], 2)
    changes: dict[str, Any] = {"_paid": paid}
    if paid >= float(invoice.data.get("amount") or 0.0) - 0.005:
        changes.update(state="paid", paid_at=payment["paid_at"], paid_date=payment["paid_date"])
    h.patch_raw("invoices", invoice, changes)


# Served only under its invoice (``/invoices/{id}/payments``), never as a list of its own.
INVOICE_PAYMENTS = Kind(
    "invoice_payments",
    {
        "invoice_id": "int",
        "amount": "float",
        "paid_at": "str",
        "paid_date": "date",
        "notes": "str",
        "send_thank_you": "bool",
    },
    ("amount",),
    {"notes": None, "paid_at": None, "paid_date": None},
    ("invoice_id",),
    "paid_date",
    validate=_validate_payment,
    derive=_derive_payment,
    render=_render_payment,
)
