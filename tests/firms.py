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
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    InboundMessage,
    Invoice,
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


# --- The sandbox's systems connected as an install connects them (tests/e2e/) --------------------

_SANDBOX_SYSTEMS: dict[str, dict[str, Any]] = {
    "crm": {
        "name": "Salesforce (e2e)",
        "vendor": "salesforce",
        "path": "/salesforce",
        "credentials": {
            "client_id": "concord-salesforce",
            "client_secret": "sandbox-salesforce-secret",
        },
        "rate_limit_per_minute": 6000,
    },
    "psa": {
        "name": "Harvest (e2e)",
        "vendor": "harvest",
        "path": "/harvest/v2",
        "credentials": {"access_token": "sandbox-harvest-token", "account_id": "100001"},
        "rate_limit_per_minute": 400,
    },
    "erp": {
        "name": "Xero (e2e)",
        "vendor": "xero",
        "path": "/xero/api.xro/2.0",
        "credentials": {"client_id": "concord-xero", "client_secret": "sandbox-xero-secret"},
        "rate_limit_per_minute": 60,
    },
}


def sandbox_connection(sandbox_url: str, role: str, *, webhook_secret: str = "") -> Connection:
    """The connection to the sandbox's system of `role` (crm: Salesforce, psa: Harvest, erp:
    Xero's new tenant), with its vendor's default mappings published; `webhook_secret`: the
    secret its signed webhooks are checked with (none: it is only polled)."""
    system = _SANDBOX_SYSTEMS[role]
    credentials = dict(system["credentials"])
    if role == "erp":
        credentials |= {"token_url": f"{sandbox_url}/xero/connect/token", "tenant_id": NEW_TENANT}
    if webhook_secret:
        credentials["webhook_secret"] = webhook_secret
    connection = connection_create(
        name=system["name"],
        role=role,
        vendor=system["vendor"],
        base_url=f"{sandbox_url}{system['path']}",
        credentials=credentials,
        rate_limit_per_minute=system["rate_limit_per_minute"],
    )
    mapping_defaults_install(connection=connection)
    return connection


def sandbox_connections(
    sandbox_url: str, *, webhooks: str = "", webhook_secret: str = ""
) -> tuple[Connection, Connection, Connection]:
    """The CRM, PSA and ERP connections (`sandbox_connection`); the one of role `webhooks`
    checks its webhooks with `webhook_secret`."""
    crm, psa, erp = (
        sandbox_connection(
            sandbox_url, role, webhook_secret=webhook_secret if role == webhooks else ""
        )
        for role in ("crm", "psa", "erp")
    )
    return crm, psa, erp


def sandbox_records(
    sandbox_url: str, system: str, obj: str, tenant: str = ""
) -> list[dict[str, Any]]:
    """What the sandbox's `system` stores of `obj` (its control API), each with its id."""
    params = {"tenant": tenant} if tenant else {}
    url = f"{sandbox_url}/_control/records/{system}/{obj}"
    return list(httpx.get(url, params=params, timeout=10).json()["records"])


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


# --- Milestone to invoice (tests/workflows/ and tests/e2e/ test_milestones.py) ---

HARVEST_HEADERS = {
    "Authorization": "Bearer sandbox-harvest-token",
    "Harvest-Account-Id": "100001",
    "User-Agent": "Concord tests",
}


def outbox_drain(rounds: int = 20) -> None:
    """Dispatch every due outbox row, in this process, until none is left."""
    for _ in range(rounds):
        connections = set(
            OutboxMessage.objects.filter(state="pending").values_list("connection_id", flat=True)
        )
        if not connections:
            return
        for connection_id in sorted(connections):
            outbox_dispatch(connection_id=connection_id, worker="test")
    raise AssertionError("the outbox did not drain")


class MilestoneFirm:
    """A UK entity with Harvest and Xero (the new tenant) connected, their default mappings
    published and routed; a customer with a fixed-fee contract (GBP 50,000, VAT 20%, 30 days)
    and its project, in Harvest (client and project, as provisioning leaves them) and in
    Concord, linked to each other. Milestones are made and completed in Harvest."""

    def __init__(self, sandbox_url: str, psa: Connection, erp: Connection) -> None:
        self.url = sandbox_url
        self.psa, self.erp = psa, erp
        self.entity = LegalEntity.objects.create(
            code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
        )
        self.vat = TaxRate.objects.create(
            code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20
        )
        for connection in (psa, erp):
            mapping_defaults_install(connection=connection)
        RoutingRule.objects.create(role="erp", connection=erp)
        RoutingRule.objects.create(role="psa", connection=psa)
        suffix = uuid.uuid4().hex[:6]
        name = f"Initech {suffix} Ltd"
        client_id = self.harvest_create("create_client", {"name": name, "currency": "GBP"})
        self.customer = Customer.objects.create(
            name=name, legal_entity=self.entity, country="GB", tax_number="", currency="GBP"
        )
        self.contract = Contract.objects.create(
            number=f"C-FF-{suffix}",
            customer=self.customer,
            legal_entity=self.entity,
            billing_model="fixed_fee",
            currency="GBP",
            total_value=Decimal("50000"),
            payment_terms_days=30,
            tax_rate=self.vat,
            start_date=date(2026, 9, 1),
            status="active",
        )
        self.project = Project.objects.create(
            code=f"PUK-{suffix}",
            name="Website relaunch",
            customer=self.customer,
            contract=self.contract,
            legal_entity=self.entity,
            region="emea",
            currency="GBP",
            budget=Decimal("50000"),
            status="active",
        )
        self.project_id = self.harvest_create(
            "create_project",
            {
                "client_id": int(client_id),
                "name": "Website relaunch",
                "code": self.project.code,
                "is_billable": True,
                "bill_by": "none",
                "budget_by": "project_cost",
            },
        )
        for record, external_id in ((self.customer, client_id), (self.project, self.project_id)):
            CrossReference.objects.create(
                content_type=ContentType.objects.get_for_model(record),
                object_id=record.pk,
                connection=psa,
                external_id=external_id,
            )

    def harvest_create(self, operation: str, item: dict[str, Any]) -> str:
        connector = connector_for(self.psa)
        try:
            (result,) = connector.write(operation, [item], idempotency_key=uuid.uuid4().hex)
        finally:
            connector.close()
        assert result.ok, result.error
        return result.external_id

    def harvest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(
            method,
            f"{self.url}/harvest/v2{path}",
            json=body,
            headers=HARVEST_HEADERS,
            timeout=10,
        )
        assert response.status_code < 300, response.text
        return response.json()

    def milestone(self, name: str, amount: str, due_on: str, status: str = "open") -> str:
        """A milestone of the project in Harvest; returns its Harvest id."""
        made = self.harvest(
            "POST",
            "/x_milestones",
            {
                "project_id": int(self.project_id),
                "name": name,
                "amount": float(amount),
                "due_on": due_on,
                "status": status,
            },
        )
        return str(made["id"])

    def complete(self, milestone_id: str, **changes: Any) -> None:
        """PMO marks the milestone complete in Harvest (again: a re-save announces it again).
        Harvest stamps ``updated_at`` in whole seconds, and Concord orders versions by it: a
        change within the second of the version last read would read as that version, so a
        person's click is never that fast here."""
        time.sleep(1.05)
        self.harvest("PATCH", f"/x_milestones/{milestone_id}", {"status": "complete", **changes})

    def in_harvest(self, milestone_id: str) -> dict[str, Any]:
        return dict(self.harvest("GET", f"/x_milestones/{milestone_id}"))

    def deliver(self, milestone_id: str) -> str:
        """The PSA's change feed named the milestone (a new delivery each call): processed as
        inbound processing does, which reads the milestone from Harvest and maps it."""
        message = InboundMessage.objects.create(
            connection=self.psa,
            source=InboundMessage.Source.WEBHOOK,
            object_type="x_milestones",
            external_id=milestone_id,
            dedupe_key=f"event:{uuid.uuid4().hex}",
            payload={"id": milestone_id},
        )
        return inbound_process(message_id=message.pk)


# --- Change orders (tests/workflows/ and tests/e2e/ test_change_orders.py) ---


class ChangeOrderFirm(ProvisioningFirm):
    """A provisioning firm whose contract is in Salesforce with its full commercial terms
    (GBP 120,000, time and materials, Net 30, activated, 2026-11-01 for 12 months), and in
    Concord with the same terms, so the CRM's next sending of it changes nothing until it is
    amended there."""

    def crm_contract(self, customer: Customer) -> tuple[Contract, str]:
        """The contract in Salesforce and Concord; returns it and its Salesforce id."""
        contract_id = self.sf_create(
            "create_contract",
            {
                "AccountId": self.account_id,
                "CurrencyIsoCode": "GBP",
                "StartDate": "2026-11-01",
                "ContractTerm": 12,
                "Status": "Activated",
                "Billing_Model__c": "Time and Materials",
                "Payment_Terms__c": "Net 30",
                "Budget__c": 120000,
                "External_Id__c": f"CTR-{customer.pk}-{self.suffix}",
            },
        )
        contract = Contract.objects.create(
            number=f"C-{customer.pk}-{self.suffix}",
            customer=customer,
            legal_entity=self.entity,
            billing_model="tm",
            currency="GBP",
            total_value=Decimal("120000"),
            payment_terms_days=30,
            start_date=date(2026, 11, 1),
            end_date=date(2027, 10, 31),
            status="active",
        )
        self.xref(contract, self.crm, contract_id)
        return contract, contract_id

    def amend(self, contract_id: str, **fields: Any) -> None:
        """Sales ops amends the contract in Salesforce. Its SystemModstamp is in whole seconds
        and Concord orders versions by it: an amendment within the second of the version last
        read would read as that version, so a person's edit is never that fast here."""
        time.sleep(1.05)
        connector = connector_for(self.crm)
        try:
            (result,) = connector.write(
                "update_contract", [{"Id": contract_id, **fields}], idempotency_key=uuid.uuid4().hex
            )
        finally:
            connector.close()
        assert result.ok, result.error

    def deliver_contract(self, contract_id: str) -> str:
        """The CRM's webhook named the contract (a new delivery each call), processed as
        inbound processing does: the contract read from Salesforce, mapped and applied."""
        return self.deliver_record("Contract", contract_id)

    def deliver_record(self, object_type: str, external_id: str) -> str:
        message = InboundMessage.objects.create(
            connection=self.crm,
            source=InboundMessage.Source.WEBHOOK,
            object_type=object_type,
            external_id=external_id,
            dedupe_key=f"event:{uuid.uuid4().hex}",
            payload={"id": external_id},
        )
        return inbound_process(message_id=message.pk)

    def crm_rate(
        self, contract: Contract, contract_id: str, *, role: str, rate: str, in_concord: bool = True
    ) -> str:
        """The contract's negotiated GBP rate for `role` in Salesforce (custom object
        Contract_Rate__c) and, unless not `in_concord`, as the contract's rate card in
        Concord (as a delivery would have left it). Returns its Salesforce id."""
        rate_id = self.sf_create(
            "create_contract_rate__c",
            {
                "Name": f"{role} rate",
                "Contract__c": contract_id,
                "Role__c": role,
                "Hourly_Rate__c": float(rate),
                "CurrencyIsoCode": "GBP",
                "External_Id__c": f"RATE-{contract.pk}-{role}-{self.suffix}",
            },
        )
        if in_concord:
            RateCard.objects.create(
                contract=contract, role=role, currency="GBP", bill_rate=Decimal(rate)
            )
        return rate_id

    def amend_rate(self, rate_id: str, rate: str) -> None:
        """Sales ops amends the negotiated rate in Salesforce (a second after the last write,
        as `amend` explains)."""
        time.sleep(1.05)
        connector = connector_for(self.crm)
        try:
            (result,) = connector.write(
                "update_contract_rate__c",
                [{"Id": rate_id, "Hourly_Rate__c": float(rate)}],
                idempotency_key=uuid.uuid4().hex,
            )
        finally:
            connector.close()
        assert result.ok, result.error


def invoiced_time(
    project: Project, *, entries: int, hours: str, rate: str, number: str = "INV-0001"
) -> Invoice:
    """`entries` of Ada Byron's approved entries of `hours` on the project, billed at `rate` on
    one authorised invoice `number` (as the billing run and the ERP leave them)."""
    worker = Resource.objects.filter(name="Ada Byron").first() or consultant()
    entity = project.legal_entity
    assert entity is not None, "a provisioned project has its legal entity"
    made = approved_time(project, days=range(1, entries + 1), hours=hours)
    amount = Decimal(hours) * Decimal(rate)
    total = amount * entries
    invoice = Invoice.objects.create(
        legal_entity=entity,
        customer=project.customer,
        contract=project.contract,
        number=number,
        status=Invoice.Status.AUTHORISED,
        currency=project.currency,
        subtotal=total,
        total=total,
        amount_due=total,
    )
    BillingEvent.objects.bulk_create(
        BillingEvent(
            source=BillingEvent.Source.TIME,
            time_entry=entry,
            project=project,
            contract=project.contract,
            legal_entity=entity,
            description=f"TE-{entry.pk} {worker.name}",
            quantity=Decimal(hours),
            unit_amount=Decimal(rate),
            amount=amount,
            currency=project.currency,
            status=BillingEvent.Status.INVOICED,
            invoice=invoice,
        )
        for entry in made
    )
    return invoice


# --- Project provisioning's PSA plan (tests/workflows/ and tests/e2e/ test_provisioning.py) ---

# The firm's task list in Harvest: (name, billable by default, a default task: "added to every
# new project", which provisioning assigns).
HARVEST_TASKS: tuple[tuple[str, bool, bool], ...] = (
    ("Development", True, True),
    ("Project Management", True, True),
    ("Internal", False, True),
    ("Presales", False, False),
)


def _harvest_client(psa: Connection) -> httpx.Client:
    return httpx.Client(
        base_url=psa.base_url,
        headers={
            "Authorization": f"Bearer {psa.credentials['access_token']}",
            "Harvest-Account-Id": str(psa.credentials["account_id"]),
            "User-Agent": "Concord tests (tests@example.com)",
        },
        timeout=10,
    )


def harvest_tasks_create(
    psa: Connection, tasks: Sequence[tuple[str, bool, bool]] = HARVEST_TASKS
) -> dict[str, int]:
    """The tasks in the sandbox's Harvest, through its API: name -> Harvest id."""
    made: dict[str, int] = {}
    with _harvest_client(psa) as client:
        for name, billable, default in tasks:
            response = client.post(
                "/tasks",
                json={"name": name, "billable_by_default": billable, "is_default": default},
            )
            assert response.status_code == 201, response.text
            made[name] = int(response.json()["id"])
    return made


def harvest_worker(psa: Connection, name: str, email: str, role: str = "Consultant") -> Resource:
    """A user in the sandbox's Harvest (through its API) and the Resource Concord holds for
    them, linked, as a poll of the PSA's users leaves them."""
    first, _, last = name.partition(" ")
    with _harvest_client(psa) as client:
        response = client.post(
            "/users",
            json={"first_name": first, "last_name": last or first, "email": email},
        )
        assert response.status_code == 201, response.text
        user_id = str(response.json()["id"])
    resource = Resource.objects.create(
        name=name, email=email, role=role, cost_rate=Decimal("60"), cost_currency="GBP"
    )
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(resource),
        object_id=resource.pk,
        connection=psa,
        external_id=user_id,
    )
    return resource
