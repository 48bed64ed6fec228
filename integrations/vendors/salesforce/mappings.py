"""Salesforce's default mappings and value maps (published for a new connection by
`mapping_defaults_install`; admins edit them as drafts from then on).

- Foreign keys arrive as Salesforce's id in ``<relation>__external_id``; the upsert resolves them.
- An account's tax number is the ERP's: left out, so routine syncs raise no ownership
  conflicts. Its legal entity code is kept: the ERP's Xero contact has no legal entity field
  (the tenant is the entity), so the CRM is the only place it is written.
"""

from __future__ import annotations

from integrations.vendors.spec import F, MappingDefault, ValueMapDefault

VALUE_MAPS: tuple[ValueMapDefault, ...] = (
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
)

MAPPINGS: tuple[MappingDefault, ...] = (
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
            # Written back by project provisioning (custom fields, as on the opportunity).
            F("psa_project_id", "PSA_Project_Id__c", "out"),
            F("erp_project_id", "ERP_Project_Id__c", "out"),
        ),
        "Commercial terms. A null Payment_Terms__c maps to None: the workflow reports it.",
    ),
)
