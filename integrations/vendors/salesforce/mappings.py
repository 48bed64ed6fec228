"""Salesforce's default mappings and value maps (published for a new connection by
`mapping_defaults_install`; admins edit them as drafts from then on).

- Foreign keys arrive as Salesforce's id in ``<relation>__external_id``; the upsert resolves them.
- An account's tax number is the ERP's: left out, so routine syncs raise no ownership
  conflicts. Its legal entity code is kept: the ERP's Xero contact has no legal entity field
  (the tenant is the entity), so the CRM is the only place it is written.
- A contract's billing status (custom fields ``Billing_Status__c``, ``Amount_Invoiced__c``,
  ``Amount_Paid__c``, ``Amount_Due__c``, ``Last_Invoice_Number__c``, ``Last_Payment_Date__c``)
  is written by status back-sync (integrations/workflows/back_sync.py) from the ERP's invoices
  and payments, so the account team sees commercial progress; outbound only (the ERP owns it).
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
        "salesforce_billing_status",
        "Canonical billing status of a contract -> Salesforce Billing_Status__c (keyed by the "
        "canonical value)",
        {
            "not_invoiced": "Not Invoiced",
            "invoiced": "Invoiced",
            "partly_paid": "Partly Paid",
            "paid": "Paid",
        },
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
            # The delivery lead's and team's emails: provisioning's user assignments in the PSA.
            F("delivery_lead", "Delivery_Lead__c", "in"),
            F("delivery_team", "Delivery_Team__c", "in"),
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
            # Written by status back-sync: where the contract's invoices stand in the ERP.
            F(
                "billing_status",
                "Billing_Status__c",
                "out",
                "value_map",
                value_map="salesforce_billing_status",
                keyed_by="canonical",
            ),
            F("amount_invoiced", "Amount_Invoiced__c", "out", "money"),
            F("amount_paid", "Amount_Paid__c", "out", "money"),
            F("amount_due", "Amount_Due__c", "out", "money"),
            F("last_invoice_number", "Last_Invoice_Number__c", "out"),
            F("last_payment_date", "Last_Payment_Date__c", "out", "date"),
        ),
        "Commercial terms. A null Payment_Terms__c maps to None: the workflow reports it.",
    ),
    # A contract's negotiated rate per role (custom object Contract_Rate__c, a child of the
    # contract): read by change orders, which give the contract's rate card in Concord the
    # amended rate (integrations/workflows/change_orders.py). Two-way fields, though Concord
    # registers no operation that writes one.
    MappingDefault(
        "Contract_Rate__c",
        "contract_rate",
        "Id",
        "SystemModstamp",
        (
            F("contract__external_id", "Contract__c", required=True),
            F("role", "Role__c", required=True),
            F("currency", "CurrencyIsoCode", required=True),
            F("bill_rate", "Hourly_Rate__c", transform="money", required=True, places=2),
            # The version a change order's run is keyed by (the record's own stamp).
            F("modified_at", "SystemModstamp", "in", "datetime"),
        ),
        "A contract's negotiated bill rate per role, read by change orders.",
    ),
)
