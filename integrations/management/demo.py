"""Demo data for `make run`: a small firm with three legal entities, its connections and users.

Only `make run` (the seed_demo command) calls this; production never has demo users.
"""

from __future__ import annotations

import random
import secrets
from datetime import date, timedelta
from decimal import Decimal

from django.contrib.auth.models import Group, User
from django.db import transaction

from integrations import models as m
from integrations.mapping.services import mapping_defaults_install
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from integrations.services.connections import connection_create
from integrations.sync.identity import match_keys_refresh

DEMO_USERS = {
    "finance": (FINANCE, "Fiona Finance"),
    "pmo": (PMO, "Pat Projects"),
    "salesops": (SALES_OPS, "Sam Sales"),
    "integration_admin": (INTEGRATION_ADMIN, "Ines Integrations"),
    "viewer": (VIEWER, "Val Viewer"),
}

ENTITIES = [
    # code, name, country, currency, tax type (as the ERP names it), tax %, region
    ("US01", "Concord Consulting Inc.", "US", "USD", "NONE", Decimal("0"), "americas"),
    ("UK01", "Concord Consulting Ltd", "GB", "GBP", "OUTPUT2", Decimal("20"), "emea"),
    ("DE01", "Concord Beratung GmbH", "DE", "EUR", "OUTPUT", Decimal("19"), "emea"),
]
CUSTOMERS = [
    ("Acme GmbH", "DE01", "DE", "DE811907980"),
    ("Globex Ltd", "UK01", "GB", "GB123456789"),
    ("Initech LLC", "US01", "US", "94-1234567"),
    ("Umbrella plc", "UK01", "GB", ""),  # deliberately flawed: no VAT number
    ("Stark Industries", None, "US", ""),  # deliberately flawed: no invoicing entity
]
ROLES = [
    ("Consultant", Decimal("150")),
    ("Senior consultant", Decimal("210")),
    ("Partner", Decimal("350")),
]


def demo_users_reset() -> dict[str, str]:
    """Create or update one user per role with a fresh random password; return the passwords."""
    passwords: dict[str, str] = {}
    for username, (role, full_name) in DEMO_USERS.items():
        first, last = full_name.split(" ", 1)
        user, _ = User.objects.get_or_create(username=username)
        user.first_name, user.last_name = first, last
        user.email = f"{username}@demo.concord.invalid"
        # Staff may open the Django admin, where their model permissions still apply.
        user.is_staff = role != VIEWER
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        passwords[username] = password
    return passwords


# The sandbox's published demo credentials (sandbox/README.md, "Credentials").
SANDBOX_LEGACY_TENANT = "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"
SANDBOX_NEW_TENANT = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02"


def _demo_connections(sandbox_url: str) -> None:
    xero = {
        "client_id": "concord-xero",
        "client_secret": "sandbox-xero-secret",
        "token_url": f"{sandbox_url}/xero/connect/token",
    }
    specs = [
        (
            "CRM (Salesforce sandbox)",
            "crm",
            "salesforce",
            f"{sandbox_url}/salesforce",
            {
                "client_id": "concord-salesforce",
                "client_secret": "sandbox-salesforce-secret",
                "token_url": f"{sandbox_url}/salesforce/services/oauth2/token",
            },
        ),
        (
            "PSA (Harvest sandbox)",
            "psa",
            "harvest",
            f"{sandbox_url}/harvest/v2",
            {"access_token": "sandbox-harvest-token", "account_id": "100001"},
        ),
        (
            "ERP (Xero sandbox, new)",
            "erp",
            "xero",
            f"{sandbox_url}/xero/api.xro/2.0",
            {**xero, "tenant_id": SANDBOX_NEW_TENANT},
        ),
        (
            "ERP (Xero sandbox, legacy)",
            "erp",
            "xero",
            f"{sandbox_url}/xero/api.xro/2.0",
            {**xero, "tenant_id": SANDBOX_LEGACY_TENANT},
        ),
    ]
    for name, role, vendor, base_url, credentials in specs:
        if m.Connection.objects.filter(name=name).exists():
            continue
        connection = connection_create(
            name=name,
            role=role,
            vendor=vendor,
            base_url=base_url,
            credentials={**credentials, "webhook_secret": secrets.token_urlsafe(24)},
        )
        # Published default mappings, so polling brings the sandbox's firm in from the start.
        mapping_defaults_install(connection=connection)


def _demo_routes(entities: dict[str, m.LegalEntity]) -> None:
    """As in the sandbox: the UK entity posts to the new ERP, the US and German to the legacy."""
    new = m.Connection.objects.filter(name="ERP (Xero sandbox, new)").first()
    legacy = m.Connection.objects.filter(name="ERP (Xero sandbox, legacy)").first()
    if new is None or legacy is None:
        return
    m.RoutingRule.objects.get_or_create(
        role="erp", legal_entity=None, defaults={"connection": legacy}
    )
    m.RoutingRule.objects.get_or_create(
        role="erp", legal_entity=entities["UK01"], defaults={"connection": new}
    )


@transaction.atomic
def demo_data_seed(*, sandbox_url: str, weeks: int = 6, seed: int = 7) -> dict[str, int]:
    """Create the demo firm if it is not there yet. Safe to run on every start."""
    _demo_connections(sandbox_url)
    if m.Project.objects.exists():
        return {"projects": m.Project.objects.count(), "time_entries": m.TimeEntry.objects.count()}

    rng = random.Random(seed)  # noqa: S311 - reproducible demo figures, not secrets
    today = date.today()
    entities: dict[str, m.LegalEntity] = {}
    tax: dict[str, m.TaxRate] = {}
    for code, name, country, currency, tax_code, pct, _region in ENTITIES:
        entities[code] = m.LegalEntity.objects.create(
            code=code, name=name, country=country, base_currency=currency, source_system="erp"
        )
        tax[code] = m.TaxRate.objects.create(
            code=tax_code,
            name=f"{country} standard",
            country=country,
            rate_percent=pct,
            requires_customer_tax_number=country == "DE",
            source_system="erp",
        )
    # Their match keys: the same tax type code polled from an ERP organisation links to these.
    match_keys_refresh(records=list(tax.values()))
    _demo_routes(entities)
    for base, quote, fx in [
        ("EUR", "USD", "1.08"),
        ("GBP", "USD", "1.27"),
        ("EUR", "GBP", "0.85"),
    ]:
        m.ExchangeRate.objects.create(
            base_currency=base, quote_currency=quote, date=today, rate=Decimal(fx)
        )

    resources = [
        m.Resource.objects.create(
            name=f"{first} {last}",
            email=f"{first.lower()}.{last.lower()}@concord.invalid",
            role=role,
            cost_rate=(rate * Decimal("0.45")).quantize(Decimal("1")),
            cost_currency="USD",
            source_system="psa",
        )
        for (first, last), (role, rate) in zip(
            [
                ("Ada", "Byron"),
                ("Grace", "Hopper"),
                ("Alan", "Turing"),
                ("Edsger", "Dijkstra"),
                ("Barbara", "Liskov"),
                ("Ken", "Thompson"),
            ],
            ROLES * 2,
            strict=True,
        )
    ]

    for index, (cust_name, entity_code, country, tax_number) in enumerate(CUSTOMERS):
        entity = entities[entity_code] if entity_code else None
        currency = entity.base_currency if entity else "USD"
        customer = m.Customer.objects.create(
            name=cust_name,
            legal_entity=entity,
            country=country,
            tax_number=tax_number,
            currency=currency,
            billing_email=f"ap@{cust_name.split()[0].lower()}.invalid",
            source_system="crm",
        )
        # Its match keys: the same customer polled from the vendors later links to this row.
        match_keys_refresh(records=[customer])
        billing_model = [
            m.Contract.BillingModel.TIME_AND_MATERIALS,
            m.Contract.BillingModel.FIXED_FEE,
        ][index % 2]
        contract = m.Contract.objects.create(
            number=f"C-{1000 + index}",
            customer=customer,
            legal_entity=entity,
            billing_model=billing_model,
            currency=currency,
            total_value=Decimal(rng.randrange(80, 400) * 1000),
            tax_rate=tax[entity_code] if entity_code else None,
            start_date=today - timedelta(weeks=weeks + 2),
            status=m.Contract.Status.ACTIVE,
            source_system="crm",
        )
        for role, rate in ROLES:
            m.RateCard.objects.create(
                contract=contract, role=role, currency=currency, bill_rate=rate, source_system="crm"
            )
        region = next(e[6] for e in ENTITIES if e[0] == (entity_code or "US01"))
        project = m.Project.objects.create(
            code=f"P-{2000 + index}",
            name=f"{cust_name.split()[0]} transformation",
            customer=customer,
            contract=contract,
            legal_entity=entity,
            region=region,
            currency=currency,
            budget=contract.total_value,
            # The last project is closed but still has time booked: a PMO finding.
            status=m.Project.Status.CLOSED
            if index == len(CUSTOMERS) - 1
            else m.Project.Status.ACTIVE,
            start_date=contract.start_date,
            source_system="psa",
        )
        staffed = rng.sample(resources, 3)
        for resource in staffed:
            m.Assignment.objects.create(
                project=project, resource=resource, role=resource.role, source_system="psa"
            )
        entries = [
            m.TimeEntry(
                resource=resource,
                project=project,
                task="Delivery",
                date=today - timedelta(days=day),
                hours=Decimal(rng.choice(["4.00", "6.50", "7.50", "8.00"])),
                approval_state=m.ApprovalState.APPROVED if day > 7 else m.ApprovalState.SUBMITTED,
                source_system="psa",
            )
            for resource in staffed
            for day in range(1, weeks * 7)
            if (today - timedelta(days=day)).weekday() < 5
        ]
        m.TimeEntry.objects.bulk_create(entries)
        m.Expense.objects.create(
            resource=staffed[0],
            project=project,
            date=today - timedelta(days=10),
            category="Travel",
            amount=Decimal("412.80"),
            currency=currency,
            approval_state=m.ApprovalState.APPROVED,
            source_system="psa",
        )
        for number in (1, 2):
            m.Milestone.objects.create(
                project=project,
                name=f"Phase {number} sign-off",
                amount=(contract.total_value / 4).quantize(Decimal("0.01")),
                currency=currency,
                due_date=today + timedelta(weeks=4 * number - 6),
                status=m.Milestone.Status.COMPLETE if number == 1 else m.Milestone.Status.PLANNED,
                source_system="psa",
            )
        if entity is not None:
            subtotal = Decimal(rng.randrange(20, 90) * 1000)
            tax_total = (subtotal * tax[entity.code].rate_percent / 100).quantize(Decimal("0.01"))
            m.Invoice.objects.create(
                legal_entity=entity,
                customer=customer,
                contract=contract,
                number=f"INV-{entity.code}-{3000 + index}",
                status=m.Invoice.Status.AUTHORISED,
                currency=currency,
                issue_date=today - timedelta(days=20),
                due_date=today + timedelta(days=10),
                subtotal=subtotal,
                tax_total=tax_total,
                total=subtotal + tax_total,
                amount_due=subtotal + tax_total,
                source_system="erp",
            )
    return {"projects": m.Project.objects.count(), "time_entries": m.TimeEntry.objects.count()}
