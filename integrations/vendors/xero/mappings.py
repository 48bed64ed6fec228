"""Xero's default mappings and value maps (published for a new connection by
`mapping_defaults_install`; admins edit them as drafts from then on).

- Xero invoice ``legal_entity`` is not in the payload (the tenant is the entity): the upsert sets
  it from the connection's tenant. Its totals are Xero's (inbound only).
- Outbound, an invoice is rendered from the canonical dict the billing workflow hands over:
  ``reference``, ``status``, ``currency``, dates, the customer (``customer__external_id`` when
  this connection knows the contact, else ``customer__name`` and ``customer__tax_number``, which
  Xero matches or creates), ``legal_entity__code``, ``tax_rate__code`` and ``lines[]``
  (``description``, ``quantity``, ``unit_amount``). ``Type`` and ``LineAmountTypes`` are
  constants (Concord issues sales invoices with tax-exclusive lines).
- The revenue account is per legal entity: value map ``xero_sales_account`` is keyed by the
  entity's code (``UK01`` -> ``200``) and falls back to its default, ``200``, Xero's "Sales".
- ``Reference`` (``CONCORD-INV-<id>``) is how the connector's look-up-before-create finds an
  invoice that was already created: the operation requires it.
- Tax rates (``TaxRates``, reference data read on every poll): the code is Xero's ``TaxType``
  (what an invoice line names), the rate its ``EffectiveRate``. Xero's TaxRate has no field
  saying the customer's tax number is required; its ``ReportTaxType`` says the rate is EC or
  reverse-charge, which is when it is (value map ``xero_tax_needs_number``). The country is
  the organisation's (``CountryCode``), filled by integrations/sync/tenancy.py. Xero lists no
  modification stamp for tax rates: the poll compares their content instead.
- A project's dimension (``TrackingOptions``, outbound only): the option named by the project's
  code in the tracking category ``Project``, created by project provisioning; invoice lines
  name it to post revenue by project.
- Payments (read only: Concord never pays in Xero, no operation writes one): each payment of
  an invoice, linked to its canonical invoice by ``Invoice.InvoiceID`` (polled with
  ``If-Modified-Since`` after the invoices, so the invoice is known first); its currency is the
  invoice's. Xero's webhooks announce no payments: a payment shows as an ``INVOICE`` update
  (status, ``AmountDue``), and the payment itself arrives with the next poll of ``Payments``.
  Status back-sync (integrations/workflows/back_sync.py) takes both on to the PSA and the CRM.
- Exchange rates: the Accounting API offers none (``Currencies`` lists codes only; an
  invoice's ``CurrencyRate`` is the rate Xero used for that invoice). They stay finance's
  table, kept with the fix form of a ``missing_exchange_rate`` case.
"""

from __future__ import annotations

from integrations.vendors.spec import F, MappingDefault, ValueMapDefault

_COUNTRIES = {
    "United States": "US",
    "United States of America": "US",
    "USA": "US",
    "United Kingdom": "GB",
    "UK": "GB",
    "Germany": "DE",
    "Deutschland": "DE",
    "France": "FR",
    "Netherlands": "NL",
    "Ireland": "IE",
    "Switzerland": "CH",
    "Austria": "AT",
    "Spain": "ES",
    "Italy": "IT",
    "Canada": "CA",
    "Australia": "AU",
}

VALUE_MAPS: tuple[ValueMapDefault, ...] = (
    ValueMapDefault(
        "xero_invoice_status",
        "Xero invoice Status -> canonical invoice status",
        {
            "DRAFT": "draft",
            "SUBMITTED": "submitted",
            "AUTHORISED": "authorised",
            "PAID": "paid",
            "VOIDED": "voided",
            "DELETED": "voided",
        },
    ),
    ValueMapDefault(
        "xero_contact_status",
        "Xero ContactStatus -> customer active",
        {"ACTIVE": "true", "ARCHIVED": "false", "GDPRREQUEST": "false"},
    ),
    ValueMapDefault(
        "xero_sales_account",
        "Legal entity code -> Xero revenue account code for invoice lines (keyed by the entity "
        "code, e.g. UK01 -> 200; entities without an entry use the default)",
        {},
        default="200",
    ),
    ValueMapDefault(
        "xero_tax_status",
        "Xero TaxRate Status -> tax rate active",
        {"ACTIVE": "true", "DELETED": "false", "ARCHIVED": "false", "PENDING": "false"},
    ),
    ValueMapDefault(
        "xero_tax_needs_number",
        "Xero TaxRate ReportTaxType -> the customer's tax number is required (EC and reverse "
        "charge rates: the customer accounts for the tax, so its number must be on the invoice)",
        {"ECOUTPUT": "true", "ECOUTPUTSERVICES": "true", "REVERSECHARGES": "true"},
        default="false",
    ),
    ValueMapDefault(
        "country_names",
        "Country as written in an address -> ISO 3166-1 alpha-2",
        {**_COUNTRIES, **{code: code for code in set(_COUNTRIES.values())}},
    ),
)

MAPPINGS: tuple[MappingDefault, ...] = (
    MappingDefault(
        "Contacts",
        "customer",
        "ContactID",
        "UpdatedDateUTC",
        (
            F("name", "Name", required=True),
            F("tax_number", "TaxNumber", default=""),
            F("billing_email", "EmailAddress", default=""),
            F("currency", "DefaultCurrency"),
            F("country", "Addresses.0.Country", "in", "value_map", value_map="country_names"),
            F(
                "billing_address",
                "Addresses.0.AddressLine1",
                "in",
                "concat",
                paths=[
                    "Addresses.0.AddressLine1",
                    "Addresses.0.AddressLine2",
                    "Addresses.0.City",
                    "Addresses.0.PostalCode",
                    "Addresses.0.Country",
                ],
                sep="\n",
            ),
            F(
                "active",
                "ContactStatus",
                transform="value_map",
                value_map="xero_contact_status",
                canonical_type="bool",
                reverse={"false": "ARCHIVED"},
            ),
        ),
        "Xero contact -> customer's legal billing profile (the ERP owns tax number, address).",
    ),
    MappingDefault(
        "Invoices",
        "invoice",
        "InvoiceID",
        "UpdatedDateUTC",
        (
            F("number", "InvoiceNumber", default=""),
            F(
                "status",
                "Status",
                transform="value_map",
                required=True,
                value_map="xero_invoice_status",
                reverse={"voided": "VOIDED"},
            ),
            F("customer__external_id", "Contact.ContactID", "in", required=True),
            # Outbound: the contact by id when this connection knows it, else by name (and tax
            # number), which Xero matches or creates.
            F("customer__external_id", "Contact.ContactID", "out"),
            F(
                "customer__name",
                "Contact.Name",
                "out",
                required=True,
                unless="customer__external_id",
            ),
            F("customer__tax_number", "Contact.TaxNumber", "out", unless="customer__external_id"),
            F("currency", "CurrencyCode", required=True),
            F("issue_date", "Date", transform="date"),
            F("due_date", "DueDate", transform="date"),
            F("subtotal", "SubTotal", "in", "money", places=2),
            F("tax_total", "TotalTax", "in", "money", places=2),
            F("total", "Total", "in", "money", places=2),
            F("amount_due", "AmountDue", "in", "money", places=2),
            F("reference", "Reference", "out", required=True),
            F("kind", "Type", "out", "default", default="ACCREC"),
            F("tax_mode", "LineAmountTypes", "out", "default", default="Exclusive"),
            F("lines[].description", "LineItems[].Description", "out", required=True),
            F("lines[].quantity", "LineItems[].Quantity", "out", "money", required=True),
            F("lines[].unit_amount", "LineItems[].UnitAmount", "out", "money", required=True),
            F(
                "legal_entity__code",
                "LineItems[].AccountCode",
                "out",
                "value_map",
                required=True,
                value_map="xero_sales_account",
                keyed_by="canonical",
            ),
            F("tax_rate__code", "LineItems[].TaxType", "out"),
        ),
        "Xero ACCREC invoice; totals are Xero's (inbound only); legal entity from the tenant. "
        "Outbound: the draft invoices of the billing run.",
        # Until outbound invoices were rendered by this mapping, the contact id was one row both
        # ways and required; outbound it is now one of two ways to name the contact.
        replaces=(F("customer__external_id", "Contact.ContactID", required=True),),
    ),
    MappingDefault(
        "Payments",
        "payment",
        "PaymentID",
        "UpdatedDateUTC",
        (
            F("invoice__external_id", "Invoice.InvoiceID", "in", required=True),
            # Two-way rows, though Concord offers no payment write to Xero (no operation): an
            # answer naming a payment reads back the same way.
            F("date", "Date", transform="date", required=True),
            F("amount", "Amount", transform="money", required=True, places=2),
            F("currency", "Invoice.CurrencyCode", "in", required=True),
            F("reference", "Reference", default=""),
        ),
        "Payments received against invoices (Concord only reads them), linked to their "
        "invoice; status back-sync takes them on to the PSA and the CRM.",
    ),
    MappingDefault(
        "TaxRates",
        "taxrate",
        "TaxType",
        "",
        (
            F("code", "TaxType", required=True),
            F("name", "Name", required=True),
            F("rate_percent", "EffectiveRate", "in", "money", required=True, places=3),
            F(
                "requires_customer_tax_number",
                "ReportTaxType",
                "in",
                "value_map",
                value_map="xero_tax_needs_number",
                canonical_type="bool",
            ),
            F(
                "active",
                "Status",
                "in",
                "value_map",
                value_map="xero_tax_status",
                canonical_type="bool",
            ),
        ),
        "Xero tax rates (reference data); the country is the organisation's. Xero gives them "
        "no modification stamp: a poll applies the ones whose content changed.",
    ),
    MappingDefault(
        "TrackingOptions",
        "project_dimension",
        "TrackingOptionID",
        "",
        (
            F("name", "Name", required=True),
            # The tracking category that holds the firm's projects; edit the default where the
            # organisation calls it otherwise.
            F("category", "TrackingCategoryName", "out", "default", default="Project"),
        ),
        "A project's dimension: an option of the tracking category of projects, created by "
        "project provisioning (outbound only: never polled).",
    ),
)
