"""A firm whose approved Harvest time is billed to Xero, for status back-sync's tests
(tests/workflows/ and tests/e2e/ test_back_sync.py): the account and contract in Salesforce,
the client, project and approved entries in Harvest, the contact in Xero, each in Concord with
its cross-references (as polls and provisioning would have left them). People's actions in the
ERP (authorising the invoice, receiving a payment) go through Xero's own API."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
from django.contrib.contenttypes.models import ContentType

from integrations.models import (
    ApprovalState,
    Connection,
    Contract,
    CrossReference,
    Customer,
    Invoice,
    Project,
    RateCard,
    Resource,
    TaxRate,
    TimeEntry,
)
from integrations.sync.identity import match_keys_refresh
from tests.firms import NEW_TENANT, ProvisioningFirm

HARVEST_HEADERS = {
    "Authorization": "Bearer sandbox-harvest-token",
    "Harvest-Account-Id": "100001",
    "User-Agent": "Concord tests (tests@concord.example)",
}
# The new tenant's "Business Bank Account" (sandbox/xero/tenants.py): what payments go into.
BANK_ACCOUNT = "090"
RATE = Decimal("140")


class BillingFirm(ProvisioningFirm):
    """ProvisioningFirm plus work to bill: call `setup(entries)`, then bill and post."""

    customer: Customer
    billed_contract: Contract
    project: Project
    entries: list[TimeEntry]
    harvest_entries: list[int]

    def __init__(self, sandbox_url: str, crm: Connection, psa: Connection, erp: Connection) -> None:
        super().__init__(sandbox_url, crm, psa, erp)
        self.harvest = httpx.Client(
            base_url=f"{sandbox_url}/harvest/v2", headers=HARVEST_HEADERS, timeout=10
        )
        self._xero_token = ""

    # -- the vendors, as people use them --------------------------------------------------------

    def hv(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.harvest.request(method, path, json=body)
        assert response.status_code < 300, response.text
        return response.json()

    def xero(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self._xero_token:
            self._xero_token = httpx.post(
                f"{self.url}/xero/connect/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "concord-xero",
                    "client_secret": "sandbox-xero-secret",
                },
                timeout=10,
            ).json()["access_token"]
        response = httpx.request(
            method,
            f"{self.url}/xero/api.xro/2.0{path}",
            json=body,
            headers={"Authorization": f"Bearer {self._xero_token}", "Xero-Tenant-Id": NEW_TENANT},
            timeout=10,
        )
        assert response.status_code < 300, response.text
        return response.json()

    def sf(self, obj: str, key: str) -> dict[str, Any]:
        body = httpx.get(f"{self.url}/_control/records/salesforce/{obj}/{key}", timeout=10).json()
        return dict(body.get("data", body))

    # -- the firm ------------------------------------------------------------------------------

    def setup(self, *, entries: int = 3, contract_in_crm: bool = True) -> None:
        """A UK customer on a time-and-materials contract (VAT 20%), its project with
        `entries` approved 7.5-hour entries in Harvest and Concord, its contact in Xero."""
        vat = TaxRate.objects.create(
            code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=Decimal("20")
        )
        self.customer = self.account()
        if contract_in_crm:
            self.billed_contract = self.contract(self.customer, tax_rate=vat)
        else:
            self.billed_contract = Contract.objects.create(
                number=f"C-{self.customer.pk}-{self.suffix}",
                customer=self.customer,
                legal_entity=self.entity,
                billing_model="tm",
                currency="GBP",
                total_value=Decimal("120000"),
                start_date=date(2026, 11, 1),
                status="active",
                tax_rate=vat,
            )
        contact = self.xero(
            "PUT", "/Contacts", {"Contacts": [{"Name": self.customer.name, "TaxNumber": "GB1"}]}
        )["Contacts"][0]
        self.xref(self.customer, self.erp, contact["ContactID"])

        client = self.hv("POST", "/clients", {"name": self.customer.name, "currency": "GBP"})
        self.xref(self.customer, self.psa, str(client["id"]))
        code = f"PUK-{self.suffix}"
        harvest_project = self.hv(
            "POST",
            "/projects",
            {
                "client_id": client["id"],
                "name": f"{self.customer.name} delivery",
                "code": code,
                "is_billable": True,
                "bill_by": "People",
                "budget_by": "project_cost",
            },
        )
        task = self.hv("POST", "/tasks", {"name": f"Consulting {self.suffix}"})
        self.hv(
            "POST",
            f"/projects/{harvest_project['id']}/task_assignments",
            {"task_id": task["id"], "billable": True},
        )
        self.project = Project.objects.create(
            code=code,
            name=f"{self.customer.name} delivery",
            customer=self.customer,
            contract=self.billed_contract,
            legal_entity=self.entity,
            region="emea",
            currency="GBP",
            status="active",
        )
        self.xref(self.project, self.psa, str(harvest_project["id"]))
        card = RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=RATE)
        match_keys_refresh(records=[card])
        worker = Resource.objects.create(
            name="Ada Byron",
            email=f"ada-{self.suffix}@example.invalid",
            role="Consultant",
            cost_rate=Decimal("60"),
            cost_currency="GBP",
        )
        self.entries, self.harvest_entries = [], []
        start = date(2026, 11, 2)
        for n in range(entries):
            day = start + timedelta(days=n)
            made = self.hv(
                "POST",
                "/time_entries",
                {
                    "project_id": harvest_project["id"],
                    "task_id": task["id"],
                    "spent_date": day.isoformat(),
                    "hours": 7.5,
                    "notes": f"Workshop day {n + 1}",
                },
            )
            self.hv("PATCH", f"/time_entries/{made['id']}", {"approval_status": "approved"})
            entry = TimeEntry.objects.create(
                resource=worker,
                project=self.project,
                date=day,
                hours=Decimal("7.50"),
                approval_state=ApprovalState.APPROVED,
                task=task["name"],
                notes=f"Workshop day {n + 1}",
            )
            self.xref(entry, self.psa, str(made["id"]))
            self.entries.append(entry)
            self.harvest_entries.append(int(made["id"]))

    # -- the ERP, as finance uses it -----------------------------------------------------------

    def erp_id(self, invoice: Invoice) -> str:
        """The invoice's id in Xero (its cross-reference, written when it was posted)."""
        return str(
            CrossReference.objects.get(
                content_type=ContentType.objects.get_for_model(Invoice),
                object_id=invoice.pk,
                connection=self.erp,
            ).external_id
        )

    def authorise(self, invoice_id: str) -> dict[str, Any]:
        answer = self.xero("POST", f"/Invoices/{invoice_id}", {"Status": "AUTHORISED"})
        return dict(answer["Invoices"][0])

    def pay(self, invoice_id: str, amount: Decimal, *, day: str, reference: str) -> str:
        answer = self.xero(
            "PUT",
            "/Payments",
            {
                "Payments": [
                    {
                        "Invoice": {"InvoiceID": invoice_id},
                        "Account": {"Code": BANK_ACCOUNT},
                        "Date": day,
                        "Amount": float(amount),
                        "Reference": reference,
                    }
                ]
            },
        )
        return str(answer["Payments"][0]["PaymentID"])

    def harvest_invoice(self, harvest_id: str) -> dict[str, Any]:
        return dict(self.hv("GET", f"/invoices/{harvest_id}"))

    def harvest_payments(self, harvest_id: str) -> list[dict[str, Any]]:
        return list(self.hv("GET", f"/invoices/{harvest_id}/payments")["invoice_payments"])

    def harvest_entry(self, entry_id: int) -> dict[str, Any]:
        return dict(self.hv("GET", f"/time_entries/{entry_id}"))
