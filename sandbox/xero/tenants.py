"""The two organisations (tenants) every Xero token is connected to, and the chart of accounts
each of them has.

A legacy ERP (US and German legal entities, base USD) and a new ERP (UK, base GBP); see
README.md for the credentials.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tenant:
    id: str
    connection_id: str
    name: str
    base_currency: str
    country: str
    currencies: tuple[tuple[str, str], ...]
    # (TaxType, Name, rate %, ReportTaxType, requires the contact's TaxNumber)
    tax_rates: tuple[tuple[str, str, float, str, bool], ...]


LEGACY = Tenant(
    id="6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01",
    connection_id="0c9a3b44-7e21-4d8f-8b55-2f1e6a7c9d01",
    name="Concord Legacy ERP",
    base_currency="USD",
    country="US",
    currencies=(("USD", "United States Dollar"), ("EUR", "Euro")),
    tax_rates=(
        ("NONE", "Tax Exempt", 0.0, "NONE", False),
        ("OUTPUT", "Umsatzsteuer 19%", 19.0, "OUTPUT", False),
        ("TAX001", "US Sales Tax 8.875%", 8.875, "OUTPUT", False),
        # EU reverse charge: the customer accounts for VAT, so its VAT id must be on file.
        ("TAX002", "Reverse Charge EU Services", 0.0, "REVERSECHARGES", True),
    ),
)
NEW = Tenant(
    id="9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02",
    connection_id="1d0b4c55-8f32-4e9a-9c66-3a2f7b8d0e02",
    name="Concord ERP",
    base_currency="GBP",
    country="GB",
    currencies=(("GBP", "British Pound"), ("EUR", "Euro"), ("USD", "United States Dollar")),
    tax_rates=(
        ("OUTPUT2", "20% (VAT on Income)", 20.0, "OUTPUT", False),
        ("ZERORATEDOUTPUT", "Zero Rated Income", 0.0, "OUTPUT", False),
        ("ECZROUTPUTSERVICES", "Zero Rated EC Services", 0.0, "ECOUTPUTSERVICES", True),
        ("NONE", "No VAT", 0.0, "NONE", False),
    ),
)
TENANTS = {t.id: t for t in (LEGACY, NEW)}
ACCOUNTS = (
    ("090", "Business Bank Account", "BANK"),
    ("200", "Sales", "REVENUE"),
    ("260", "Other Revenue", "REVENUE"),
)
