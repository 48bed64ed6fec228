"""Xero: identity (token, connections) and the Accounting API under ``/xero/api.xro/2.0``.

Follows ../shared/specs/xero-accounting.yaml and xero-identity.yaml. The quirks a connector
must handle are kept: PUT creates and POST creates-or-updates; ``Xero-Tenant-Id`` on every
Accounting call; dates as ``/Date(1700000000000+0000)/``; ``If-Modified-Since`` (inclusive);
``page`` + ``pageSize`` (without ``page`` every record is returned, as Xero does for
Contacts); ``summarizeErrors``; ``Idempotency-Key`` (replay returns the first response,
the same key with another body is refused); validation errors as ``ValidationException``
with ``Elements[].ValidationErrors[]``; batch writes of up to 50 elements.

Two tenants (organisations) are always connected: a legacy ERP (US and German legal
entities, base USD) and a new ERP (UK, base GBP). See README.md for the credentials.

The ``Xero`` class is assembled from one mixin per resource family, all on ``XeroBase``
(``base.py``: gate hooks, errors, envelope, idempotency, batches, list filters and paging,
indexed writes): ``identity.py`` (token, connections), ``reference.py`` (organisation,
accounts, tax rates, currencies), ``contacts.py``, ``invoices.py``, ``payments.py`` and
``tracking.py``. ``formats.py`` (dates, money, problem bodies), ``where.py`` (the ``where``
filter) and ``tenants.py`` (the two organisations) hold no handlers.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route

from ..gate import Sandbox
from ..store import Row
from .base import API, SYSTEM
from .identity import Identity
from .invoices import Invoices
from .reference import ReferenceData
from .tenants import TENANTS


class Xero(Invoices, ReferenceData, Identity):
    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        sandbox.reset_hooks.append(self.install_reference_data)
        self.install_reference_data()

    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        w = self.writes
        return [
            Route("/connect/token", self.token, methods=["POST"]),
            Route("/connections", self.connections, methods=["GET"]),
            Route("/Connections", self.connections, methods=["GET"]),
            Route(f"{API}/Organisation", self.organisation, methods=["GET"]),
            Route(f"{API}/Accounts", self.accounts, methods=["GET"]),
            Route(f"{API}/TaxRates", self.tax_rates, methods=["GET"]),
            Route(f"{API}/Currencies", self.currencies, methods=["GET"]),
            Route(
                f"{API}/Contacts", w(self.list_or_write_contacts), methods=["GET", "PUT", "POST"]
            ),
            Route(f"{API}/Contacts/{{id}}", w(self.one_contact), methods=["GET", "POST"]),
            Route(
                f"{API}/Invoices", w(self.list_or_write_invoices), methods=["GET", "PUT", "POST"]
            ),
            Route(f"{API}/Invoices/{{id}}", w(self.one_invoice), methods=["GET", "POST"]),
            Route(f"{API}/Payments", w(self.list_or_write_payments), methods=["GET", "PUT"]),
            Route(f"{API}/Payments/{{id}}", w(self.one_payment), methods=["GET", "POST"]),
            Route(f"{API}/TrackingCategories", w(self.tracking_categories), methods=["GET", "PUT"]),
            Route(
                f"{API}/TrackingCategories/{{id}}",
                w(self.tracking_category),
                methods=["GET", "POST"],
            ),
            Route(
                f"{API}/TrackingCategories/{{id}}/Options",
                w(self.tracking_options),
                methods=["PUT"],
            ),
            Route(
                f"{API}/TrackingCategories/{{id}}/Options/{{option}}",
                w(self.tracking_option),
                methods=["POST"],
            ),
        ]

    def patch_raw(self, obj: str, row: Row, changes: dict[str, Any], scope: str = "") -> None:
        data = {**row.data, **changes}
        if obj == "Invoices" and {"LineItems", "LineAmountTypes"} & changes.keys():
            # Lines and totals as Xero computes them; a total the change sets itself wins.
            data["LineItems"] = [
                self._line(line, data["LineAmountTypes"], TENANTS[scope])
                for line in data.get("LineItems") or []
            ]
            totals = self.totals(data["LineItems"])
            data.update({k: v for k, v in totals.items() if k not in changes})
        settle = obj == "Payments" and bool(
            {"Amount", "Date", "InvoiceID", "Status"} & changes.keys()
        )
        if settle and (
            not isinstance(data.get("Amount"), int | float) or isinstance(data["Amount"], bool)
        ):
            raise ValueError("a payment's Amount must be a number")
        before = row.data.get("InvoiceID")
        self.replace(obj, row, data, scope)
        if settle:
            for invoice_id in dict.fromkeys((before, data.get("InvoiceID"))):
                invoice = self.store.get(SYSTEM, "Invoices", invoice_id, scope)
                if invoice is None:
                    continue
                paid_by = invoice.data.get("PaymentIDs") or []
                if invoice.key == data.get("InvoiceID") and row.key not in paid_by:
                    invoice.data["PaymentIDs"] = [*paid_by, row.key]
                self._settle(invoice, scope)

    def create_raw(self, obj: str, data: dict[str, Any], scope: str = "") -> tuple[Row, str]:
        """A payment received, entered in Xero's own UI: the same rules and effects as ``PUT
        /Payments`` (an authorised invoice, a bank account, no more than the amount due; the
        invoice settled and announced by its INVOICE webhook). Without ``scope`` the tenant is
        the one holding the invoice named by ``Invoice.InvoiceID`` or ``InvoiceNumber``."""
        if obj != "Payments":
            raise NotImplementedError(f"the control API creates Xero Payments only, not {obj}")
        tenant = TENANTS.get(scope) if scope else self._tenant_of_payment(data)
        if tenant is None:
            raise ValueError(f"unknown tenant {scope!r}" if scope else "Invoice could not be found")
        errors = self._payment_errors(data, tenant, {})
        if errors:
            raise ValueError("; ".join(errors))
        return self._apply_payment(data, None, tenant), tenant.id
