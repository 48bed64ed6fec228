"""The default mappings `mapping_defaults_install` publishes for a new connection, per vendor.

Plain data: the same specs compile without a database (tests map the vendor fixtures through
them directly). Object types are the vendor's collection or sObject names as the connectors
read them: Xero ``Contacts``/``Invoices``, Harvest ``time_entries``..., Salesforce ``Account``...

Choices worth knowing:
- Foreign keys arrive as the vendor's id in ``<relation>__external_id``; the upsert resolves them.
- Fields another system owns are mostly left out (a Harvest client's address, a Salesforce
  account's tax number), so routine syncs do not raise ownership conflicts for values the
  owner will send anyway. Salesforce's legal entity code is kept: the ERP's Xero contact has
  no legal entity field (the tenant is the entity), so the CRM is the only place it is written.
- Xero invoice ``legal_entity`` is not in the payload (it is the tenant): the upsert sets it from
  the connection's tenant. Xero ``Type``/``LineItems`` are built by the posting workflow.
- Harvest users carry no currency: ``cost_currency`` defaults to USD, the account currency of
  the sandbox; edit the draft for an account in another currency.
"""

from __future__ import annotations

from dataclasses import dataclass

from integrations.mapping.apply import FieldSpec


@dataclass(frozen=True, slots=True)
class ValueMapDefault:
    name: str
    description: str
    entries: dict[str, str]
    default: str = ""


@dataclass(frozen=True, slots=True)
class MappingDefault:
    object_type: str
    canonical_model: str
    external_id_path: str
    version_path: str
    fields: tuple[FieldSpec, ...]
    notes: str = ""


def F(  # a short name: the specs below read as a table
    canonical_field: str,
    vendor_path: str,
    direction: str = "both",
    transform: str = "copy",
    required: bool = False,
    **options: object,
) -> FieldSpec:
    return FieldSpec(
        canonical_field=canonical_field,
        vendor_path=vendor_path,
        direction=direction,
        transform=transform,
        options=options,
        required=required,
    )


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
        "harvest_approval",
        "Harvest approval_status -> canonical approval state",
        {
            "unsubmitted": "submitted",
            "submitted": "submitted",
            "approved": "approved",
            "rejected": "rejected",
        },
    ),
    ValueMapDefault(
        "harvest_project_active",
        "Harvest project is_active -> canonical project status",
        {"true": "active", "false": "closed"},
    ),
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
        "salesforce_billing_model",
        "Salesforce Billing_Model__c -> canonical contract billing model",
        {"Time and Materials": "tm", "Fixed Fee": "fixed_fee", "Retainer": "retainer"},
    ),
    ValueMapDefault(
        "salesforce_contract_status",
        "Salesforce Contract Status -> canonical contract status",
        {"Draft": "draft", "In Approval Process": "draft", "Activated": "active"},
    ),
    ValueMapDefault(
        "salesforce_payment_terms",
        "Salesforce Payment_Terms__c -> payment terms in days",
        {"Net 15": "15", "Net 30": "30", "Net 45": "45", "Net 60": "60"},
    ),
    ValueMapDefault(
        "salesforce_region",
        "Salesforce Region__c -> canonical project region",
        {"Americas": "americas", "EMEA": "emea", "APAC": "apac"},
    ),
    ValueMapDefault(
        "country_names",
        "Country as written in an address -> ISO 3166-1 alpha-2",
        {**_COUNTRIES, **{code: code for code in set(_COUNTRIES.values())}},
    ),
)

XERO: tuple[MappingDefault, ...] = (
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
            F("customer__external_id", "Contact.ContactID", required=True),
            F("currency", "CurrencyCode", required=True),
            F("issue_date", "Date", transform="date"),
            F("due_date", "DueDate", transform="date"),
            F("subtotal", "SubTotal", "in", "money", places=2),
            F("tax_total", "TotalTax", "in", "money", places=2),
            F("total", "Total", "in", "money", places=2),
            F("amount_due", "AmountDue", "in", "money", places=2),
        ),
        "Xero ACCREC invoice; totals are Xero's (inbound only); legal entity from the tenant.",
    ),
)

HARVEST: tuple[MappingDefault, ...] = (
    MappingDefault(
        "time_entries",
        "timeentry",
        "id",
        "updated_at",
        (
            F("date", "spent_date", transform="date", required=True),
            F("hours", "hours", transform="money", required=True, places=2),
            F("approval_state", "approval_status", "in", "value_map", value_map="harvest_approval"),
            F("billable", "billable"),
            F("notes", "notes", default=""),
            F("task", "task.name", "in", default=""),
            F("project__external_id", "project.id", "in", required=True),
            F("project__external_id", "project_id", "out", required=True, vendor_type="int"),
            F("resource__external_id", "user.id", "in", required=True),
            F("resource__external_id", "user_id", "out", vendor_type="int"),
        ),
    ),
    MappingDefault(
        "projects",
        "project",
        "id",
        "updated_at",
        (
            F("code", "code", required=True),
            F("name", "name", required=True),
            F(
                "status",
                "is_active",
                transform="value_map",
                value_map="harvest_project_active",
                vendor_type="bool",
                # A planned or paused project is still active in Harvest.
                reverse={"planned": "true", "on_hold": "true"},
            ),
            F("budget", "cost_budget", transform="money", places=2, default="0"),
            F("start_date", "starts_on", transform="date"),
            F("end_date", "ends_on", transform="date"),
            F("currency", "client.currency", "in"),
            F("customer__external_id", "client.id", "in", required=True),
            F("customer__external_id", "client_id", "out", vendor_type="int"),
        ),
    ),
    MappingDefault(
        "clients",
        "customer",
        "id",
        "updated_at",
        (
            F("name", "name", required=True),
            F("currency", "currency"),
            F("active", "is_active"),
        ),
    ),
    MappingDefault(
        "users",
        "resource",
        "id",
        "updated_at",
        (
            F("name", "first_name", "in", "concat", paths=["first_name", "last_name"], sep=" "),
            F("email", "email", required=True),
            F("role", "roles.0", "in", default=""),
            F("cost_rate", "cost_rate", transform="money", places=2, default="0"),
            F("cost_currency", "cost_currency", "in", "default", default="USD"),
            F("active", "is_active"),
        ),
        "Harvest users carry no currency: cost_currency is this connection's account currency.",
    ),
    MappingDefault(
        "expenses",
        "expense",
        "id",
        "updated_at",
        (
            F("date", "spent_date", transform="date", required=True),
            F("category", "expense_category.name", "in", required=True),
            F("amount", "total_cost", transform="money", required=True, places=2),
            F("currency", "client.currency", "in"),
            F("approval_state", "approval_status", "in", "value_map", value_map="harvest_approval"),
            F("billable", "billable"),
            F("notes", "notes", default=""),
            F("receipt_url", "receipt.url", "in", default=""),
            F("project__external_id", "project.id", "in", required=True),
            F("project__external_id", "project_id", "out", required=True, vendor_type="int"),
            F("resource__external_id", "user.id", "in", required=True),
            F("resource__external_id", "user_id", "out", vendor_type="int"),
        ),
    ),
)

SALESFORCE: tuple[MappingDefault, ...] = (
    MappingDefault(
        "Account",
        "customer",
        "Id",
        "SystemModstamp",
        (
            F("name", "Name", required=True),
            F("currency", "CurrencyIsoCode"),
            F("legal_entity__code", "Legal_Entity__c", "in"),
        ),
        "Commercial account data; the legal billing profile comes from the ERP.",
    ),
    MappingDefault(
        "Opportunity",
        "opportunity",
        "Id",
        "SystemModstamp",
        (
            F("name", "Name", required=True),
            F("stage", "StageName", required=True),
            F("is_won", "IsWon", "in"),
            F("is_closed", "IsClosed", "in"),
            F("close_date", "CloseDate", transform="date"),
            F("amount", "Amount", transform="money", places=2),
            F("currency", "CurrencyIsoCode"),
            F(
                "billing_model",
                "Billing_Model__c",
                transform="value_map",
                value_map="salesforce_billing_model",
            ),
            F("region", "Region__c", transform="value_map", value_map="salesforce_region"),
            F("customer__external_id", "AccountId", required=True),
            F("legal_entity__code", "Legal_Entity__c"),
            F("psa_project_id", "PSA_Project_Id__c", default=""),
            F("erp_project_id", "ERP_Project_Id__c", default=""),
        ),
        "Commercial fields read by project provisioning; outbound writes back the project ids.",
    ),
    MappingDefault(
        "Contract",
        "contract",
        "Id",
        "SystemModstamp",
        (
            F("number", "ContractNumber", "in", required=True),
            F("customer__external_id", "AccountId", required=True),
            F("legal_entity__code", "Legal_Entity__c"),
            F(
                "billing_model",
                "Billing_Model__c",
                transform="value_map",
                value_map="salesforce_billing_model",
            ),
            F("currency", "CurrencyIsoCode"),
            F("total_value", "Budget__c", transform="money", places=2, default="0"),
            F(
                "payment_terms_days",
                "Payment_Terms__c",
                transform="value_map",
                value_map="salesforce_payment_terms",
                canonical_type="int",
            ),
            F("start_date", "StartDate", transform="date"),
            F("end_date", "EndDate", "in", "date"),
            F(
                "status",
                "Status",
                transform="value_map",
                value_map="salesforce_contract_status",
            ),
        ),
        "Commercial terms. A null Payment_Terms__c maps to None: the workflow reports it.",
    ),
)

DEFAULT_MAPPINGS: dict[str, tuple[MappingDefault, ...]] = {
    "xero": XERO,
    "harvest": HARVEST,
    "salesforce": SALESFORCE,
}


def default_value_maps_used(vendor: str) -> list[ValueMapDefault]:
    names = {
        str(spec.options["value_map"])
        for mapping in DEFAULT_MAPPINGS.get(vendor, ())
        for spec in mapping.fields
        if spec.transform == "value_map"
    }
    return [vm for vm in VALUE_MAPS if vm.name in names]
