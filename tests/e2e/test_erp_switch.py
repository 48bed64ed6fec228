"""A legal entity switched from the legacy ERP to the new one while its drafts are in flight.

Real parts only: the vendor sandbox as a process (slow and failing one call in ten), a Celery
worker process delivering the outbox, PostgreSQL and Redis. The UK entity bills in euros (a
currency both Xero tenants keep) to the legacy tenant; while those drafts are queued, half of
them on contracts that add new time to their unsent draft, it is switched to the new tenant and
more time is approved and billed; then the worker delivers. At the end every legacy-era entry is
on exactly one invoice line of the legacy tenant, every new entry on exactly one of the new
tenant, none in both, and nothing is left in flight on either side.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    ApprovalState,
    Connection,
    Contract,
    Customer,
    ExchangeRate,
    LegalEntity,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    RouteSwitch,
    RoutingRule,
    TimeEntry,
)
from integrations.services.connections import connection_create
from integrations.services.route_switches import route_switch_create, route_switch_in_flight
from tests.firms import NEW_TENANT
from tests.processes import (
    Proc,
    free_port,
    process_env,
    running,
    sandbox_proc,
    wait_for_sandbox,
    wait_until,
    worker_proc,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEGACY_TENANT = "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"
PROJECTS = 4
# Entries per project billed before and after the switch; at five lines an invoice the last
# legacy draft of each project has room for three more lines.
BEFORE, AFTER = 12, 10


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = sandbox_proc(port, tmp_path / "sandbox.log")
    with running(proc):
        url = f"http://127.0.0.1:{port}"
        wait_for_sandbox(url)
        yield url


def _xero(url: str, name: str, tenant: str) -> Connection:
    connection = connection_create(
        name=name,
        role="erp",
        vendor="xero",
        base_url=f"{url}/xero/api.xro/2.0",
        credentials={
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
            "token_url": f"{url}/xero/connect/token",
            "tenant_id": tenant,
        },
        rate_limit_per_minute=6000,
    )
    mapping_defaults_install(connection=connection)
    return connection


def _firm(url: str) -> tuple[LegalEntity, Connection, Connection, list[Project]]:
    """The UK entity routed to the legacy tenant, the new tenant connected beside it, and four
    time-and-materials projects billed in euros at EUR 120 an hour (half of their contracts
    add new time to their unsent draft)."""
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    legacy = _xero(url, "Concord Legacy ERP", LEGACY_TENANT)
    new = _xero(url, "Concord ERP", NEW_TENANT)
    RoutingRule.objects.create(role="erp", connection=legacy)
    RoutingRule.objects.create(role="erp", legal_entity=entity, connection=legacy)
    ExchangeRate.objects.create(
        base_currency="EUR", quote_currency="GBP", rate=Decimal("0.86"), date=date.today()
    )
    RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("120"))
    projects = []
    for n in range(PROJECTS):
        customer = Customer.objects.create(
            name=f"Kunde {n} GmbH",
            legal_entity=entity,
            country="DE",
            tax_number=f"DE1234567{n:02d}",
            currency="EUR",
        )
        contract = Contract.objects.create(
            number=f"C-EU-{n}",
            customer=customer,
            legal_entity=entity,
            billing_model="tm",
            currency="EUR",
            status="active",
            # Half the contracts add new time to their unsent draft: never to one of the
            # legacy ERP once the entity has moved.
            add_to_open_draft=n % 2 == 0,
        )
        projects.append(
            Project.objects.create(
                code=f"P-EU-{n}",
                name=f"Rollout {n}",
                customer=customer,
                contract=contract,
                legal_entity=entity,
                region="emea",
                currency="EUR",
                status="active",
            )
        )
    return entity, legacy, new, projects


def _approve(projects: list[Project], per_project: int, first_day: date) -> list[int]:
    worker = Resource.objects.get_or_create(
        name="Ada Byron",
        defaults={
            "email": "ada@example.invalid",
            "role": "Consultant",
            "cost_rate": Decimal("60"),
            "cost_currency": "GBP",
        },
    )[0]
    made = TimeEntry.objects.bulk_create(
        TimeEntry(
            resource=worker,
            project=project,
            date=first_day + timedelta(days=d),
            hours=Decimal("7.50"),
            approval_state=ApprovalState.APPROVED,
            task=f"Task {d}",
        )
        for project in projects
        for d in range(per_project)
    )
    return [entry.pk for entry in made]


def _lines(url: str, tenant: str) -> Counter[int]:
    """How many times each time entry id is on an invoice line of the tenant."""
    counts: Counter[int] = Counter()
    offset = 0
    while True:
        page = httpx.get(
            f"{url}/_control/records/xero/Invoices",
            params={"tenant": tenant, "limit": 500, "offset": offset},
            timeout=30,
        ).json()
        rows = page.get("records", page.get("rows", []))
        for row in rows:
            for line in row["data"].get("LineItems", []):
                description = line.get("Description", "")
                if description.startswith("TE-"):
                    counts[int(description.split()[0][3:])] += 1
        if len(rows) < 500:
            return counts
        offset += 500


def _billing_run(env: dict[str, str], log: Path) -> None:
    """The billing run as beat starts it: its own process, ringing the worker through Redis."""
    proc = Proc([sys.executable, "manage.py", "billing_run"], env, log).start()
    assert proc.popen is not None
    assert proc.popen.wait(timeout=120) == 0, proc.output()


def _purge_queues(env: dict[str, str], log: Path) -> None:
    """Start from empty queues: messages other tests left in the shared Redis are not ours."""
    queues = ",".join(settings.CONCORD_WORKER_QUEUES)
    proc = Proc(
        [sys.executable, "-m", "celery", "-A", "config", "purge", "-f", "-Q", queues], env, log
    ).start()
    assert proc.popen is not None
    assert proc.popen.wait(timeout=60) == 0, proc.output()


def _settled() -> bool:
    return not OutboxMessage.objects.exclude(state__in=["done", "skipped"]).exists()


def test_in_flight_drafts_land_in_the_legacy_tenant_and_new_time_in_the_new_one(
    sandbox: str, tmp_path: Path
) -> None:
    entity, legacy, new, projects = _firm(sandbox)
    before = _approve(projects, BEFORE, date(2026, 11, 2))
    httpx.post(
        f"{sandbox}/_control/limits", json={"system": "xero", "enabled": False}, timeout=10
    ).raise_for_status()
    httpx.post(
        f"{sandbox}/_control/faults",
        json={"system": "xero", "latency_ms": 100, "error_rate": 0.1, "seed": 5},
        timeout=10,
    ).raise_for_status()
    # Five lines an invoice: three drafts a project for the legacy tenant.
    env = process_env(CONCORD_MAX_LINES_PER_INVOICE="5", CONCORD_OUTBOX_BACKOFF_CAP_S="2")
    _purge_queues(env, tmp_path / "purge.log")
    _billing_run(env, tmp_path / "billing-1.log")
    assert not TimeEntry.objects.unbilled().exists()
    legacy_rows = OutboxMessage.objects.filter(connection=legacy).count()
    assert legacy_rows == PROJECTS * 3

    # The drafts are queued for the legacy tenant, none sent yet (the worker is not up: the
    # contracts that add to their unsent draft could add to these) when the entity moves.
    switch = route_switch_create(
        legal_entity=entity, to_connection=new, note="New ERP go-live", actor=None
    )
    (sides,) = route_switch_in_flight([switch]).values()
    assert (sides["old"].invoices, sides["new"].invoices) == (legacy_rows, 0)
    after = _approve(projects, AFTER, date(2026, 11, 20))
    _billing_run(env, tmp_path / "billing-2.log")
    assert not TimeEntry.objects.unbilled().exists()

    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    with running(worker):
        try:
            wait_until(_settled, timeout=180, what="every draft delivered", interval=1)
        except AssertionError:
            states = Counter(OutboxMessage.objects.values_list("connection__name", "state"))
            pytest.fail(f"outbox not drained: {dict(states)}\n{worker.output()}")

    assert OutboxMessage.objects.filter(connection=legacy).count() == legacy_rows
    assert not OutboxMessage.objects.filter(state="parked").exists()
    in_legacy, in_new = _lines(sandbox, LEGACY_TENANT), _lines(sandbox, NEW_TENANT)
    assert set(in_legacy) == set(before)
    assert set(in_new) == set(after)
    assert set(in_legacy.values()) == {1}
    assert set(in_new.values()) == {1}
    (sides,) = route_switch_in_flight(list(RouteSwitch.objects.all())).values()
    assert (sides["old"].total, sides["new"].total) == (0, 0)
