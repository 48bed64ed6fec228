"""Reference data every tenant has: the organisation, its accounts, tax rates and currencies.

Installed at start and re-created after every reset; read-only through the API.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..store import Row
from .base import SYSTEM, XeroBase
from .formats import day_to_ts
from .tenants import ACCOUNTS, TENANTS


class ReferenceData(XeroBase):
    def install_reference_data(self) -> None:
        """Tax rates, currencies and accounts every tenant has; recreated after a reset."""
        for tenant in TENANTS.values():
            if self.store.count(SYSTEM, "TaxRates", tenant.id):
                continue
            for tax_type, name, rate, report, needs_number in tenant.tax_rates:
                self.store.insert(
                    SYSTEM,
                    "TaxRates",
                    tax_type,
                    {
                        "Name": name,
                        "Rate": rate,
                        "ReportTaxType": report,
                        "RequiresTaxNumber": needs_number,
                    },
                    tenant.id,
                    at=day_to_ts("2024-01-01"),
                    seeded=True,
                )
            for code, description in tenant.currencies:
                self.store.insert(
                    SYSTEM, "Currencies", code, {"Description": description}, tenant.id, seeded=True
                )
            for code, name, kind in ACCOUNTS:
                account_id = str(uuid.uuid5(uuid.UUID(tenant.id), code))
                self.store.insert(
                    SYSTEM,
                    "Accounts",
                    code,
                    {"AccountID": account_id, "Name": name, "Type": kind},
                    tenant.id,
                    seeded=True,
                )

    async def organisation(self, request: Request) -> Response:
        tenant = self.tenant(request)
        return self.envelope(
            "Organisations",
            [
                {
                    "OrganisationID": tenant.id,
                    "Name": tenant.name,
                    "LegalName": tenant.name,
                    "BaseCurrency": tenant.base_currency,
                    "CountryCode": tenant.country,
                    "OrganisationType": "COMPANY",
                    "OrganisationStatus": "ACTIVE",
                    "IsDemoCompany": False,
                }
            ],
        )

    async def accounts(self, request: Request) -> Response:
        tenant = self.tenant(request)
        return self.envelope(
            "Accounts",
            [
                {
                    "AccountID": r.data["AccountID"],
                    "Code": r.key,
                    "Name": r.data["Name"],
                    "Type": r.data["Type"],
                    "Status": "ACTIVE",
                    "EnablePaymentsToAccount": r.data["Type"] == "BANK",
                }
                for r in self.store.rows(SYSTEM, "Accounts", tenant.id)
            ],
        )

    async def tax_rates(self, request: Request) -> Response:
        tenant = self.tenant(request)
        return self.envelope(
            "TaxRates",
            [self.render_tax_rate(r) for r in self.store.rows(SYSTEM, "TaxRates", tenant.id)],
        )

    @staticmethod
    def render_tax_rate(row: Row) -> dict[str, Any]:
        d = row.data
        return {
            "Name": d["Name"],
            "TaxType": row.key,
            "ReportTaxType": d["ReportTaxType"],
            "Status": "ACTIVE",
            "TaxComponents": [
                {
                    "Name": d["Name"],
                    "Rate": d["Rate"],
                    "IsCompound": False,
                    "IsNonRecoverable": False,
                }
            ],
            "CanApplyToAssets": True,
            "CanApplyToEquity": True,
            "CanApplyToExpenses": True,
            "CanApplyToLiabilities": True,
            "CanApplyToRevenue": True,
            "DisplayTaxRate": d["Rate"],
            "EffectiveRate": d["Rate"],
        }

    async def currencies(self, request: Request) -> Response:
        tenant = self.tenant(request)
        rows = self.store.rows(SYSTEM, "Currencies", tenant.id)
        return self.envelope(
            "Currencies", [{"Code": r.key, "Description": r.data["Description"]} for r in rows]
        )
