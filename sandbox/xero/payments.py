"""Xero payments against authorised invoices: created by PUT, deleted by POST
``{"Status": "DELETED"}``; each one settles its invoice (amount paid, PAID and back)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..store import Row
from .base import SYSTEM, XeroBase
from .formats import day_to_ts, money, ms_date, parse_day
from .tenants import TENANTS, Tenant

PAYMENT_TYPES = {"ACCREC": "ACCRECPAYMENT", "ACCPAY": "ACCPAYPAYMENT"}  # by invoice Type


class Payments(XeroBase):
    def payment_summary(self, payment_id: str, tenant_id: str) -> dict[str, Any]:
        row = self.store.get(SYSTEM, "Payments", payment_id, tenant_id)
        if row is None:
            return {"PaymentID": payment_id}
        return {
            "PaymentID": row.key,
            "Date": ms_date(day_to_ts(row.data["Date"])),
            "Amount": row.data["Amount"],
            "Reference": row.data.get("Reference") or "",
            "CurrencyRate": row.data.get("CurrencyRate") or 1.0,
            "HasAccount": True,
            "HasValidationErrors": False,
        }

    def render_payment(self, row: Row, tenant: Tenant | None = None) -> dict[str, Any]:
        d = row.data
        invoice = self.store.get(SYSTEM, "Invoices", d["InvoiceID"], d["TenantID"])
        account = self.store.get(SYSTEM, "Accounts", d["AccountCode"], d["TenantID"])
        contact = (
            self.store.get(SYSTEM, "Contacts", invoice.data["ContactID"], d["TenantID"])
            if invoice
            else None
        )
        return {
            "PaymentID": row.key,
            "Date": ms_date(day_to_ts(d["Date"])),
            "Amount": d["Amount"],
            "BankAmount": d["Amount"],
            "Reference": d.get("Reference") or "",
            "CurrencyRate": d.get("CurrencyRate") or 1.0,
            "PaymentType": PAYMENT_TYPES.get(
                invoice.data["Type"] if invoice else "ACCREC", "ACCRECPAYMENT"
            ),
            "Status": d["Status"],
            "IsReconciled": bool(d.get("IsReconciled")),
            "UpdatedDateUTC": ms_date(row.updated),
            "HasAccount": True,
            "HasValidationErrors": False,
            "Account": {
                "AccountID": account.data["AccountID"] if account else None,
                "Code": d["AccountCode"],
            },
            "Invoice": {
                "InvoiceID": d["InvoiceID"],
                "InvoiceNumber": invoice.data.get("InvoiceNumber", "") if invoice else "",
                "Type": invoice.data["Type"] if invoice else "ACCREC",
                "CurrencyCode": invoice.data["CurrencyCode"] if invoice else "USD",
                "Contact": {"ContactID": contact.key, "Name": contact.data["Name"]}
                if contact
                else {},
            },
        }

    async def list_or_write_payments(self, request: Request) -> Response:
        if request.method == "GET":
            return self.select(request, "Payments", self.render_payment)
        tenant = self.tenant(request)
        items = await self.elements(request, "Payments")
        if isinstance(items, Response):
            return items
        plans: list[tuple[dict[str, Any], Row | None, list[str]]] = []
        owed: dict[Any, float] = {}
        for item in items:
            plans.append((item, None, self._payment_errors(item, tenant, owed)))
        return self._commit(
            request, "Payments", plans, self._apply_payment, self.render_payment, tenant
        )

    def _payment_invoice(self, item: dict[str, Any], tenant: Tenant) -> Row | None:
        ref: dict[str, Any] = item["Invoice"] if isinstance(item.get("Invoice"), dict) else {}
        table = self.store.table(SYSTEM, "Invoices", tenant.id)
        if ref.get("InvoiceID"):
            return table.rows.get(str(ref["InvoiceID"]).lower())
        if ref.get("InvoiceNumber"):
            return table.index_get("number", str(ref["InvoiceNumber"]))
        return None

    def _tenant_of_payment(self, item: dict[str, Any]) -> Tenant | None:
        """The tenant holding the invoice a payment names (Xero's ids are unique across
        organisations), for a payment entered without one."""
        for tenant in TENANTS.values():
            if self._payment_invoice(item, tenant) is not None:
                return tenant
        return None

    def _payment_errors(
        self, item: dict[str, Any], tenant: Tenant, owed: dict[Any, float]
    ) -> list[str]:
        invoice = self._payment_invoice(item, tenant)
        if invoice is None:
            return ["Invoice could not be found"]
        errors: list[str] = []
        if invoice.data["Status"] != "AUTHORISED":
            errors.append("Payments can only be made against Authorised documents")
        account: dict[str, Any] = item["Account"] if isinstance(item.get("Account"), dict) else {}
        code = account.get("Code")
        if not code and account.get("AccountID"):
            code = next(
                (
                    r.key
                    for r in self.store.rows(SYSTEM, "Accounts", tenant.id)
                    if r.data["AccountID"] == account["AccountID"]
                ),
                None,
            )
        acct = self.store.get(SYSTEM, "Accounts", str(code), tenant.id) if code else None
        if acct is None or acct.data["Type"] != "BANK":
            errors.append("Account must be a bank account or have payments enabled")
        amount = item.get("Amount")
        if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
            errors.append("Payment amount must be greater than zero")
        else:
            due = owed.get(invoice.key, money(invoice.data["Total"] - invoice.data["AmountPaid"]))
            if amount > due + 0.005:
                errors.append("Payment amount exceeds the amount outstanding on this document")
            owed[invoice.key] = money(due - amount)
        if "Date" in item and parse_day(item["Date"]) is None:
            errors.append("Date is not a valid date")
        return errors

    def _apply_payment(self, item: dict[str, Any], row: Row | None, tenant: Tenant) -> Row:
        invoice = self._payment_invoice(item, tenant)
        if invoice is None:  # checked by _payment_errors before any apply
            raise LookupError("payment without an invoice")
        account = item.get("Account") or {}
        code = account.get("Code") or next(
            r.key
            for r in self.store.rows(SYSTEM, "Accounts", tenant.id)
            if r.data["AccountID"] == account.get("AccountID")
        )
        day = parse_day(item.get("Date")) or datetime.now(UTC).date().isoformat()
        data = {
            "InvoiceID": invoice.key,
            "AccountCode": str(code),
            "Date": day,
            "Amount": money(float(item["Amount"])),
            "Reference": item.get("Reference"),
            "CurrencyRate": item.get("CurrencyRate"),
            "Status": "AUTHORISED",
            "TenantID": tenant.id,
        }
        table = self.store.table(SYSTEM, "Payments", tenant.id)
        if table.index_get("same", self.index_keys("Payments", data)["same"]) is not None:
            self.store.stats.of(SYSTEM, "Payments").duplicates_detected += 1
        payment = self.insert("Payments", str(uuid.uuid4()), data, tenant.id)
        invoice.data["PaymentIDs"] = [*invoice.data.get("PaymentIDs", []), payment.key]
        self._settle(invoice, tenant.id, day)
        return payment

    def _settle(self, invoice: Row, tenant_id: str, day: str | None = None) -> None:
        """Amount paid, status and the payment list from the invoice's live payments."""
        payments = self.store.table(SYSTEM, "Payments", tenant_id).rows
        live = [
            p
            for p in (payments.get(key) for key in invoice.data.get("PaymentIDs", []))
            if p is not None
            and p.data["InvoiceID"] == invoice.key
            and p.data["Status"] == "AUTHORISED"
        ]
        invoice.data["PaymentIDs"] = [p.key for p in live]
        invoice.data["AmountPaid"] = money(sum(p.data["Amount"] for p in live))
        if invoice.data["AmountPaid"] >= invoice.data["Total"] - 0.005 and live:
            invoice.data["Status"] = "PAID"
            invoice.data["FullyPaidOnDate"] = day or max(p.data["Date"] for p in live)
        elif invoice.data["Status"] == "PAID":
            invoice.data["Status"] = "AUTHORISED"
            invoice.data.pop("FullyPaidOnDate", None)
        self.store.touch(SYSTEM, "Invoices", invoice, tenant_id)

    async def one_payment(self, request: Request) -> Response:
        tenant = self.tenant(request)
        row = self.store.get(SYSTEM, "Payments", request.path_params["id"].lower(), tenant.id)
        if row is None:
            return self.not_found(request)
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return self.bad_request(request, "The request body is not valid JSON")
            items = (
                body.get("Payments") if isinstance(body, dict) and "Payments" in body else [body]
            )
            if not items or not isinstance(items[0], dict) or items[0].get("Status") != "DELETED":
                return self.bad_request(
                    request, "A payment can only be deleted (Status DELETED)", "validation"
                )
            row.data["Status"] = "DELETED"
            self.store.touch(SYSTEM, "Payments", row, tenant.id)
            invoice = self.store.get(SYSTEM, "Invoices", row.data["InvoiceID"], tenant.id)
            if invoice is not None:
                self._settle(invoice, tenant.id)
        return self.envelope("Payments", [self.render_payment(row)])
