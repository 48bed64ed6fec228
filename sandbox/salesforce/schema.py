"""The sObjects the sandbox serves (fields, types, required fields, defaults), Salesforce's
ids with their case checksum, its timestamps and its error body."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SYSTEM = "salesforce"
ORG_ID = "00D5g000004SandbX"
API_VERSION = "v60.0"
DATA = f"/services/data/{API_VERSION}"
PREFIXES = {"Account": "001", "Opportunity": "006", "Contract": "800", "Contract_Rate__c": "a0R"}
STAGES = (
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
)
CURRENCIES = ("USD", "GBP", "EUR", "CHF")
BILLING_MODELS = ("Time and Materials", "Fixed Fee", "Retainer")
BILLING_STATUSES = ("Not Invoiced", "Invoiced", "Partly Paid", "Paid")

# Field name -> type. "ref:X" is a lookup to X, "pick:a|b" a restricted picklist, and "ro:..."
# a read-only field (refused on insert/update with INVALID_FIELD_FOR_INSERT_UPDATE).
COMMON = {
    "Id": "ro:id",
    "CreatedDate": "ro:datetime",
    "LastModifiedDate": "ro:datetime",
    "SystemModstamp": "ro:datetime",
    "IsDeleted": "ro:boolean",
    "CurrencyIsoCode": "pick:" + "|".join(CURRENCIES),
    "External_Id__c": "string",
    "Legal_Entity__c": "string",
    "Region__c": "string",
}
FIELDS: dict[str, dict[str, str]] = {
    "Account": {
        **COMMON,
        "Name": "string",
        "AccountNumber": "string",
        "Type": "string",
        "Industry": "string",
        "Phone": "string",
        "Website": "string",
        "BillingStreet": "string",
        "BillingCity": "string",
        "BillingPostalCode": "string",
        "BillingState": "string",
        "BillingCountry": "string",
        "Description": "string",
        "Tax_Number__c": "string",
        "ERP_Customer_Id__c": "string",
        "PSA_Client_Id__c": "string",
    },
    "Opportunity": {
        **COMMON,
        "Name": "string",
        "AccountId": "ref:Account",
        "StageName": "pick:" + "|".join(STAGES),
        "CloseDate": "date",
        "Amount": "double",
        "Probability": "double",
        "Type": "string",
        "Description": "string",
        "IsWon": "ro:boolean",
        "IsClosed": "ro:boolean",
        "Billing_Model__c": "pick:" + "|".join(BILLING_MODELS),
        "PSA_Project_Id__c": "string",
        "ERP_Project_Id__c": "string",
        # Who delivers the deal (custom fields, as a firm adds them): the delivery lead's email
        # and the team's, separated by semicolons; provisioning staffs the PSA project with them.
        "Delivery_Lead__c": "string",
        "Delivery_Team__c": "string",
    },
    "Contract": {
        **COMMON,
        "AccountId": "ref:Account",
        "Status": "pick:Draft|In Approval Process|Activated",
        "StartDate": "date",
        "ContractTerm": "int",
        "EndDate": "ro:date",
        "ContractNumber": "ro:string",
        "Description": "string",
        "SpecialTerms": "string",
        "Opportunity__c": "ref:Opportunity",
        "Billing_Model__c": "pick:" + "|".join(BILLING_MODELS),
        "Payment_Terms__c": "pick:Net 15|Net 30|Net 45|Net 60",
        "Tax_Profile__c": "string",
        "Budget__c": "double",
        # Written back by the integration that provisions the contract's project.
        "PSA_Project_Id__c": "string",
        "ERP_Project_Id__c": "string",
        # Written by the integration's status back-sync: where the contract's invoices stand
        # in the ERP (custom fields, as a firm adds them to its org).
        "Billing_Status__c": "pick:" + "|".join(BILLING_STATUSES),
        "Amount_Invoiced__c": "double",
        "Amount_Paid__c": "double",
        "Amount_Due__c": "double",
        "Last_Invoice_Number__c": "string",
        "Last_Payment_Date__c": "date",
    },
    # A custom child object of Contract, as a firm adds one to its org: the contract's
    # negotiated bill rate per role (the commercial rate card a change order amends).
    "Contract_Rate__c": {
        **COMMON,
        "Name": "string",
        "Contract__c": "ref:Contract",
        "Role__c": "string",
        "Hourly_Rate__c": "double",
    },
}
REQUIRED = {
    "Account": ("Name",),
    "Opportunity": ("Name", "StageName", "CloseDate"),
    "Contract": ("AccountId",),
    "Contract_Rate__c": ("Contract__c", "Role__c", "Hourly_Rate__c"),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "Account": {"CurrencyIsoCode": "USD"},
    "Opportunity": {"CurrencyIsoCode": "USD"},
    "Contract": {"CurrencyIsoCode": "USD", "Status": "Draft"},
    "Contract_Rate__c": {"CurrencyIsoCode": "USD"},
}

_CHECK = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def sf_id(prefix: str, n: int) -> str:
    """An 18-character Salesforce id: 15 case-sensitive characters plus the case checksum."""
    digits = ""
    while True:
        n, r = divmod(n, 62)
        digits = _BASE62[r] + digits
        if n == 0:
            break
    base = prefix + "5g" + digits.rjust(10, "0")
    return base + case_suffix(base)


def case_suffix(base15: str) -> str:
    """The case checksum that makes a 15-character id 18: one character per 5-character
    chunk, whose bits mark the chunk's capital letters."""
    suffix = ""
    for chunk in range(3):
        part = base15[chunk * 5 : chunk * 5 + 5]
        suffix += _CHECK[sum(1 << i for i, c in enumerate(part) if "A" <= c <= "Z")]
    return suffix


def sf_datetime(ts: float) -> str:
    # Salesforce shows whole seconds with ".000"; comparisons still use the exact instant, so
    # "SystemModstamp > <last seen>" may repeat a record from the same second but never skips one.
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class SfError(Exception):
    def __init__(
        self, code: str, message: str, fields: list[str] | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.fields, self.status = code, message, fields or [], status

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]
