"""`actuals_export_s`: the actuals CSV download (integrations/actuals.py through the real view,
dashboards/actuals.py) for a year of 1,000,000 approved-or-not time entries.

The firm: 3 legal entities (EUR, USD, GBP) with daily exchange rates, 300 customers with one
contract each (two in three time and materials, one fixed fee) and their rate cards, 1,000
projects, 400 workers in 4 roles with cost rates in 3 currencies, 1,000,000 time entries over
the 12 months of 2025 (95% approved, 90% billable), 250,000 of them billed (billing events),
20,000 expenses and 3,000 milestones. Seeded by set-based SQL (INSERT ... SELECT ... FROM
generate_series) in under a minute.

The figure is the median of 3 full downloads (the whole year by month, every project: 12,000
rows) through Django's test Client in this process, signed in as a Finance user, the CSV read to
its last byte. The JSON from the API is timed alongside. Target 5 s.
"""

# The seed's SQL is built from this module's constants, never input.
# ruff: noqa: S608

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, User
from django.db import connection as db
from django.test import Client

from integrations import models as m
from integrations import roles

Figure = dict[str, Any]

ENTRIES = 1_000_000
BILLED = 250_000
PROJECTS = 1_000
CUSTOMERS = 300
WORKERS = 400
EXPENSES = 20_000
MILESTONES = 3_000
ROLES = [("Consultant", 120), ("Engineer", 140), ("Architect", 180), ("Analyst", 90)]
CURRENCIES = ["EUR", "USD", "GBP"]
YEAR = 2025
TARGET_S = 5
RUNS = 3
# The canonical record columns every insert fills (the models set them in Python, not the DB).
STAMPS = "source_system, source_version, field_sources, created_at, updated_at"
STAMP_VALUES = "'psa', 0, '{}'::jsonb, now(), now()"

TABLES = [
    "integrations_billingevent",
    "integrations_timeentry",
    "integrations_expense",
    "integrations_milestone",
    "integrations_assignment",
    "integrations_project",
    "integrations_ratecard",
    "integrations_contract",
    "integrations_customer",
    "integrations_resource",
    "integrations_exchangerate",
    "integrations_invoice",
    "integrations_legalentity",
]


def _reset() -> None:
    with db.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE")


def _seed() -> None:
    entities = [
        m.LegalEntity.objects.create(
            code=f"E{c}", name=f"Entity {c}", country="DE", base_currency=c, source_system="erp"
        )
        for c in CURRENCIES
    ]
    m.Resource.objects.bulk_create(
        m.Resource(
            name=f"Worker {n}",
            email=f"w{n}@bench.invalid",
            role=ROLES[n % 4][0],
            cost_rate=Decimal(40 + n % 50),
            cost_currency=CURRENCIES[n % 3],
        )
        for n in range(WORKERS)
    )
    customers = m.Customer.objects.bulk_create(
        m.Customer(name=f"Customer {n}", legal_entity=entities[n % 3], currency=CURRENCIES[n % 3])
        for n in range(CUSTOMERS)
    )
    tm, fixed = m.Contract.BillingModel.TIME_AND_MATERIALS, m.Contract.BillingModel.FIXED_FEE
    contracts = m.Contract.objects.bulk_create(
        m.Contract(
            number=f"C-{n}",
            customer=c,
            legal_entity=c.legal_entity,
            billing_model=fixed if n % 3 == 2 else tm,
            currency=c.currency,
            status=m.Contract.Status.ACTIVE,
        )
        for n, c in enumerate(customers)
    )
    m.RateCard.objects.bulk_create(
        m.RateCard(contract=k, role=role, currency=k.currency, bill_rate=Decimal(rate))
        for k in contracts
        for role, rate in ROLES[:3]  # the Analyst falls back to the firm default
    )
    m.RateCard.objects.bulk_create(
        m.RateCard(contract=None, role=role, currency=c, bill_rate=Decimal(rate))
        for role, rate in ROLES
        for c in CURRENCIES
    )
    m.Project.objects.bulk_create(
        m.Project(
            code=f"P-{n:04d}",
            name=f"Project {n}",
            customer=contracts[n % CUSTOMERS].customer,
            contract=contracts[n % CUSTOMERS],
            legal_entity=contracts[n % CUSTOMERS].legal_entity,
            region=["emea", "americas", "apac"][n % 3],
            currency=contracts[n % CUSTOMERS].currency,
            status=m.Project.Status.ACTIVE,
        )
        for n in range(PROJECTS)
    )
    start = date(YEAR, 1, 1)
    with db.cursor() as cursor:
        for base, quote, rate in (("EUR", "USD", 1.08), ("GBP", "USD", 1.27), ("EUR", "GBP", 0.85)):
            cursor.execute(
                f"INSERT INTO integrations_exchangerate ({STAMPS}, base_currency, quote_currency,"
                f" date, rate) SELECT {STAMP_VALUES}, %s, %s, %s::date + d, %s + (d %% 7) / 1000.0"
                " FROM generate_series(0, 364) d",
                [base, quote, start, rate],
            )
        cursor.execute(
            f"INSERT INTO integrations_timeentry ({STAMPS}, resource_id, project_id, task, date,"
            " hours, approval_state, billable, notes)"
            f" SELECT {STAMP_VALUES}, 1 + (i * 7) %% {WORKERS}, 1 + i %% {PROJECTS}, 'Delivery',"
            " %s::date + (i / 7) %% 365, 1 + (i %% 8) * 0.75,"
            " CASE WHEN i %% 20 = 0 THEN 'submitted' ELSE 'approved' END, i %% 10 <> 0, ''"
            f" FROM generate_series(1, {ENTRIES}) i",
            [start],
        )
        # Billing events for the first approved billable entries (what a billing run took).
        cursor.execute(
            f"INSERT INTO integrations_billingevent ({STAMPS}, source, time_entry_id, project_id,"
            " contract_id, legal_entity_id, description, quantity, unit_amount, amount, currency,"
            " status)"
            f" SELECT {STAMP_VALUES}, 'time', t.id, t.project_id, p.contract_id,"
            " p.legal_entity_id, 'TE-' || t.id, t.hours, 100, t.hours * 100, p.currency,"
            " 'pending' FROM integrations_timeentry t"
            " JOIN integrations_project p ON p.id = t.project_id"
            " WHERE t.approval_state = 'approved' AND t.billable"
            f" ORDER BY t.id LIMIT {BILLED}"
        )
        cursor.execute(
            f"INSERT INTO integrations_expense ({STAMPS}, resource_id, project_id, date,"
            " category, amount, currency, receipt_url, approval_state, billable, notes)"
            f" SELECT {STAMP_VALUES}, 1 + i %% {WORKERS}, 1 + (i * 3) %% {PROJECTS},"
            " %s::date + i %% 365, 'Travel', 50 + i %% 400,"
            " (ARRAY['EUR','USD','GBP'])[1 + i %% 3], '', 'approved', i %% 2 = 0, ''"
            f" FROM generate_series(1, {EXPENSES}) i",
            [start],
        )
        cursor.execute(
            f"INSERT INTO integrations_milestone ({STAMPS}, project_id, name, amount, currency,"
            " due_date, status, completed_at)"
            f" SELECT {STAMP_VALUES}, p.id, 'Phase ' || g, 10000, p.currency,"
            " %s::date + ((g * 97 + p.id) %% 365)::int, 'complete',"
            " (%s::date + ((g * 97 + p.id) %% 365)::int)::timestamptz"
            " FROM integrations_project p CROSS JOIN generate_series(1, 3) g",
            [start, start],
        )
        for table in ("timeentry", "billingevent", "expense", "milestone", "exchangerate"):
            cursor.execute(f"ANALYZE integrations_{table}")


def _finance_client() -> Client:
    user, _ = User.objects.get_or_create(username="actuals-bench")
    user.groups.add(Group.objects.get(name=roles.FINANCE))
    # A host ALLOWED_HOSTS holds (the test client's own "testserver" is not one outside tests).
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    return client


def _timed(client: Client, url: str, params: dict[str, str]) -> tuple[float, int, int]:
    started = time.perf_counter()
    response = client.get(url, params)
    assert response.status_code == 200, response.status_code
    streamed = response.streaming
    body = b"".join(response.streaming_content) if streamed else response.content  # type: ignore[attr-defined]
    return time.perf_counter() - started, len(body), body.count(b"\n")


def export(sandbox: Any = None, **_: Any) -> Iterator[Figure]:
    """The figure: the actuals CSV download of a year of 1,000,000 time entries."""
    _reset()
    seeding = time.perf_counter()
    _seed()
    seeded = time.perf_counter() - seeding
    client = _finance_client()
    year = {"from": f"{YEAR}-01-01", "to": f"{YEAR}-12-31"}
    csv_runs = [_timed(client, "/actuals/", {**year, "format": "csv"}) for _ in range(RUNS)]
    json_runs = [
        _timed(client, "/api/v1/actuals/", {**year, "format": "json"}) for _ in range(RUNS)
    ]
    page_runs = [_timed(client, "/actuals/", year) for _ in range(RUNS)]
    _reset()
    yield {
        "name": "actuals_export_s",
        "value": round(statistics.median(t for t, _, _ in csv_runs), 2),
        "unit": "s (median of 3 CSV downloads, a year by month, 1,000,000 time entries)",
        "target": TARGET_S,
        "entries": ENTRIES,
        "rows": csv_runs[0][2] - 1,
        "csv_bytes": csv_runs[0][1],
        "json_s": round(statistics.median(t for t, _, _ in json_runs), 2),
        "page_s": round(statistics.median(t for t, _, _ in page_runs), 2),
        "seed_s": round(seeded, 1),
    }
