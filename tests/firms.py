"""A firm with approved time ready to bill through the sandbox's new Xero tenant, built in bulk.
Shared by the end-to-end tests and the benchmarks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
from django.contrib.contenttypes.models import ContentType

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    ApprovalState,
    Connection,
    Contract,
    CrossReference,
    Customer,
    InboundMessage,
    LegalEntity,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    RoutingRule,
    TaxRate,
    TimeEntry,
)
from integrations.services.connections import connection_create
from integrations.sync.dispatch import outbox_dispatch
from integrations.sync.identity import match_keys_refresh
from integrations.sync.inbound import inbound_process
from integrations.vendors import connector_for

NEW_TENANT = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02"


def xero_connection(sandbox_url: str, **fields: Any) -> Connection:
    return connection_create(
        name=f"Xero bench {time.monotonic_ns()}",
        role="erp",
        vendor="xero",
        base_url=f"{sandbox_url}/xero/api.xro/2.0",
        credentials={
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
            "token_url": f"{sandbox_url}/xero/connect/token",
            "tenant_id": NEW_TENANT,
        },
        **fields,
    )


def approved_time_firm(
    sandbox_url: str, *, projects: int, entries_per_project: int, **xero: Any
) -> Connection:
    """A UK firm billing GBP to the new Xero tenant, with approved time, created in bulk."""
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    vat = TaxRate.objects.create(code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20)
    connection = xero_connection(sandbox_url, **xero)
    # Invoices are rendered by the connection's published mapping, as on a real install.
    mapping_defaults_install(connection=connection)
    RoutingRule.objects.create(role="erp", connection=connection)
    # Kept in Concord by hand, with its match keys as record_create gives them: the PSA's
    # default Consultant/GBP rate (x_rate_cards) links to it when Harvest is polled.
    card = RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("140"))
    match_keys_refresh(records=[card])
    worker = Resource.objects.create(
        name="Ada Byron",
        email="ada@example.invalid",
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )
    customers = Customer.objects.bulk_create(
        Customer(
            name=f"Client {i:05d} Ltd",
            legal_entity=entity,
            country="GB",
            tax_number=f"GB{i:09d}",
            currency="GBP",
        )
        for i in range(projects)
    )
    contracts = Contract.objects.bulk_create(
        Contract(
            number=f"C-{i:05d}",
            customer=c,
            legal_entity=entity,
            billing_model="tm",
            currency="GBP",
            tax_rate=vat,
            status="active",
        )
        for i, c in enumerate(customers)
    )
    rows = Project.objects.bulk_create(
        Project(
            code=f"P-{i:05d}",
            name=f"Project {i}",
            customer=c.customer,
            contract=c,
            legal_entity=entity,
            region="emea",
            currency="GBP",
            status="active",
        )
        for i, c in enumerate(contracts)
    )
    start = date(2026, 1, 1)
    TimeEntry.objects.bulk_create(
        (
            TimeEntry(
                resource=worker,
                project=p,
                date=start + timedelta(days=d % 300),
                hours=Decimal("7.50"),
                approval_state=ApprovalState.APPROVED,
                task=f"Task {d}",
            )
            for p in rows
            for d in range(entries_per_project)
        ),
        batch_size=5000,
    )
    return connection


# --- One T&M project's approved time billed to an ERP (tests/workflows/test_fixes.py) ---

BILLING_MONTH = date(2026, 11, 1)


def uk_entity() -> LegalEntity:
    return LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )


def consultant() -> Resource:
    """Ada Byron, a consultant, billed at the firm's default Consultant rate (GBP 140 an hour)."""
    RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("140"))
    return Resource.objects.create(
        name="Ada Byron",
        email="ada@example.invalid",
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )


def approved_time(project: Project, *, days: Sequence[int], hours: str) -> list[TimeEntry]:
    """Ada Byron's approved entries of `hours` on the `days` of the billing month."""
    worker = Resource.objects.get(name="Ada Byron")
    return [
        TimeEntry.objects.create(
            resource=worker,
            project=project,
            date=BILLING_MONTH.replace(day=day),
            hours=Decimal(hours),
            approval_state=ApprovalState.APPROVED,
        )
        for day in days
    ]


def tm_project_firm(
    erp: Connection,
    *,
    customer: dict[str, Any],
    contract_number: str,
    project: dict[str, Any],
    days: Sequence[int],
    hours: str,
    tax_rate: TaxRate | None = None,
) -> Project:
    """A UK entity billing one time-and-materials project in GBP to `erp` (its default mappings
    published, the default ERP route) with Ada Byron's approved time (`approved_time`).
    `customer` and `project` name them (name; code and name) and may override their fields."""
    entity = uk_entity()
    mapping_defaults_install(connection=erp)
    RoutingRule.objects.create(role="erp", connection=erp)
    consultant()
    client = Customer.objects.create(
        **{"legal_entity": entity, "country": "GB", "tax_number": "", "currency": "GBP", **customer}
    )
    contract = Contract.objects.create(
        number=contract_number,
        customer=client,
        legal_entity=entity,
        billing_model="tm",
        currency="GBP",
        tax_rate=tax_rate,
        status="active",
    )
    fields: dict[str, Any] = {
        "customer": client,
        "contract": contract,
        "legal_entity": entity,
        "region": "emea",
        "currency": "GBP",
        "status": "active",
        **project,
    }
    made = Project.objects.create(**fields)
    approved_time(made, days=days, hours=hours)
    return made


# --- Project provisioning (tests/workflows/ and tests/e2e/ test_provisioning.py) ---


class ProvisioningFirm:
    """A UK entity with Salesforce, Harvest and Xero (the new tenant) connected, their default
    mappings published and routed; an account with a contract in Salesforce that Concord
    holds (as a poll would have left them)."""

    def __init__(self, sandbox_url: str, crm: Connection, psa: Connection, erp: Connection) -> None:
        self.url = sandbox_url
        self.entity = LegalEntity.objects.create(
            code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
        )
        self.crm, self.psa, self.erp = crm, psa, erp
        for connection in (self.crm, self.psa, self.erp):
            mapping_defaults_install(connection=connection)
        RoutingRule.objects.create(role="erp", connection=self.erp)
        RoutingRule.objects.create(role="psa", connection=self.psa)
        self.suffix = uuid.uuid4().hex[:6]

    def sf_create(self, operation: str, item: dict[str, Any]) -> str:
        connector = connector_for(self.crm)
        try:
            (result,) = connector.write(operation, [item], idempotency_key=uuid.uuid4().hex)
        finally:
            connector.close()
        assert result.ok, result.error
        return result.external_id

    def xref(self, record: Any, connection: Connection, external_id: str) -> None:
        CrossReference.objects.create(
            content_type=ContentType.objects.get_for_model(record),
            object_id=record.pk,
            connection=connection,
            external_id=external_id,
        )

    def account(
        self, *, name: str = "", tax_number: str = "GB123456789", in_concord: bool = True
    ) -> Customer:
        """The account in Salesforce and (unless not `in_concord`: not read yet) in Concord."""
        name = name or f"Initech {self.suffix} Ltd"
        account_id = self.sf_create(
            "create_account",
            {"Name": name, "CurrencyIsoCode": "GBP", "External_Id__c": f"ACC-{name}"},
        )
        self.account_id = account_id
        customer = Customer.objects.create(
            name=name,
            legal_entity=self.entity,
            country="GB",
            tax_number=tax_number,
            currency="GBP",
        )
        if in_concord:
            self.xref(customer, self.crm, account_id)
        return customer

    def contract(self, customer: Customer, **fields: Any) -> Contract:
        contract_id = self.sf_create(
            "create_contract",
            {
                "AccountId": self.account_id,
                "CurrencyIsoCode": "GBP",
                "StartDate": "2026-11-01",
                "External_Id__c": f"CTR-{customer.pk}-{self.suffix}",
            },
        )
        values: dict[str, Any] = {
            "number": f"C-{customer.pk}-{self.suffix}",
            "customer": customer,
            "legal_entity": self.entity,
            "billing_model": "tm",
            "currency": "GBP",
            "total_value": Decimal("120000"),
            "start_date": date(2026, 11, 1),
            "status": "active",
            **fields,
        }
        contract = Contract.objects.create(**values)
        self.xref(contract, self.crm, contract_id)
        return contract

    def opportunity(self) -> str:
        return self.sf_create(
            "create_opportunity",
            {
                "Name": f"Initech {self.suffix} - Delivery",
                "AccountId": self.account_id,
                "StageName": "Closed Won",
                "CloseDate": "2026-10-20",
                "Amount": 120000,
                "CurrencyIsoCode": "GBP",
                "Billing_Model__c": "Time and Materials",
                "Legal_Entity__c": "UK01",
                "Region__c": "EMEA",
                "External_Id__c": f"OPP-{uuid.uuid4().hex[:10]}",
            },
        )

    def tracking_category(self, name: str = "Project") -> None:
        token = httpx.post(
            f"{self.url}/xero/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "concord-xero",
                "client_secret": "sandbox-xero-secret",
            },
            timeout=10,
        ).json()["access_token"]
        response = httpx.put(
            f"{self.url}/xero/api.xro/2.0/TrackingCategories",
            json={"Name": name},
            headers={"Authorization": f"Bearer {token}", "Xero-Tenant-Id": NEW_TENANT},
            timeout=10,
        )
        assert response.status_code == 200, response.text

    def deliver(self, opportunity_id: str) -> None:
        """The CRM's webhook named the opportunity (a new delivery each call): processed as
        inbound processing does, which reads the record from Salesforce and maps it."""
        message = InboundMessage.objects.create(
            connection=self.crm,
            source=InboundMessage.Source.WEBHOOK,
            object_type="Opportunity",
            external_id=opportunity_id,
            dedupe_key=f"event:{uuid.uuid4().hex}",
            payload={"id": opportunity_id},
        )
        assert inbound_process(message_id=message.pk) == "applied"

    def drain(self, rounds: int = 20) -> None:
        """Dispatch every due outbox row, in this process, until none is left."""
        for _ in range(rounds):
            due = OutboxMessage.objects.filter(state="pending").values_list(
                "connection_id", flat=True
            )
            connections = set(due)
            if not connections:
                return
            for connection_id in sorted(connections):
                outbox_dispatch(connection_id=connection_id, worker="test")
        raise AssertionError("the outbox did not drain")
