"""A firm with approved time ready to bill through the sandbox's new Xero tenant, built in bulk.
Shared by the end-to-end tests and the benchmarks."""

from __future__ import annotations

import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    ApprovalState,
    Connection,
    Contract,
    Customer,
    LegalEntity,
    Project,
    RateCard,
    Resource,
    RoutingRule,
    TaxRate,
    TimeEntry,
)
from integrations.services.connections import connection_create
from integrations.sync.identity import match_keys_refresh

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
