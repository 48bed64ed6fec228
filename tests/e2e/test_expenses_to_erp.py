"""Approved time and expenses from the PSA reach the ERP on the same draft invoices, each once.

Real parts only: the vendor sandbox as a process (Xero with injected faults), Celery worker and
beat processes, PostgreSQL and Redis. The work is made in Harvest as people make it (time
entries and expenses, some approved, some not, one expense not billable), read into Concord by
a poll through the published mappings, billed by the billing run (a process of its own) and
posted by the worker. At the end every approved billable time entry and expense of Harvest is
on exactly one Xero invoice line, the others on none, each project's time and expenses share
their invoice, the sandbox counted no duplicate invoice, and a second run bills nothing.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.contenttypes.models import ContentType

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    Expense,
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
from integrations.sync.polling import poll_object
from integrations.workflows.time_to_erp import billing_run
from tests.firms import HARVEST_HEADERS, NEW_TENANT, xero_connection
from tests.processes import (
    Proc,
    beat_proc,
    free_port,
    process_env,
    running,
    sandbox_proc,
    wait_for_sandbox,
    wait_until,
    worker_proc,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROJECTS = 12
ENTRIES = 6  # approved time entries per project (one more per project stays submitted)
EXPENSES = 5  # approved billable expenses per project (one not billable, one submitted)
# Enough faults that some calls fail and some answers are lost (a create that landed but was
# never confirmed), few enough that a dozen invoices do not keep the circuit open for minutes;
# tests/e2e/test_time_to_erp_exactly_once.py puts thousands through harsher ones.
FAULTS = {
    "system": "xero",
    "error_rate": 0.1,
    "drop_response_rate": 0.15,
    "latency_ms": 20,
    "seed": 7,
}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = sandbox_proc(port, tmp_path / "sandbox.log")
    with running(proc):
        url = f"http://127.0.0.1:{port}"
        wait_for_sandbox(url)
        yield url


class Harvest:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/harvest/v2", headers=HARVEST_HEADERS, timeout=10)

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code < 300, response.text
        return response.json()


def _xref(record: Any, connection: Connection, external_id: object) -> None:
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(record),
        object_id=record.pk,
        connection=connection,
        external_id=str(external_id),
    )


def _firm(url: str) -> tuple[Connection, Connection, dict[str, set[int]]]:
    """A UK entity (VAT 20%) billing PROJECTS time-and-materials projects in GBP, each in
    Harvest (client, project, task) and in Concord, linked; the consultant is Harvest's own
    user. In Harvest, per project: ENTRIES approved entries and one submitted; EXPENSES
    approved billable expenses, one approved but not billable, one submitted. Returns the
    connections and the Harvest ids of what must be billed ("time", "expenses") and not."""
    psa = connection_create(
        name="Harvest (e2e expenses)",
        role="psa",
        vendor="harvest",
        base_url=f"{url}/harvest/v2",
        credentials={"access_token": "sandbox-harvest-token", "account_id": "100001"},
        rate_limit_per_minute=6000,
    )
    erp = xero_connection(url, rate_limit_per_minute=6000)
    for connection in (psa, erp):
        mapping_defaults_install(connection=connection)
    RoutingRule.objects.create(role="erp", connection=erp)
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    vat = TaxRate.objects.create(code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20)
    RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("140"))
    # The sandbox's Harvest limit (100 requests per 15 s) is for the connectors, not the setup.
    httpx.post(
        f"{url}/_control/limits", json={"system": "harvest", "enabled": False}, timeout=10
    ).raise_for_status()
    harvest = Harvest(url)
    me = harvest("GET", "/users/me")
    worker = Resource.objects.create(
        name="Sandbox Admin",
        email=me["email"],
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )
    _xref(worker, psa, me["id"])
    category = harvest("POST", "/expense_categories", {"name": "Travel"})
    task = harvest("POST", "/tasks", {"name": "Consulting"})
    ids: dict[str, set[int]] = defaultdict(set)
    start = date(2026, 11, 2)
    for n in range(PROJECTS):
        name = f"Client {n:02d} Ltd"
        client = harvest("POST", "/clients", {"name": name, "currency": "GBP"})
        customer = Customer.objects.create(
            name=name, legal_entity=entity, country="GB", tax_number=f"GB{n:09d}", currency="GBP"
        )
        _xref(customer, psa, client["id"])
        contract = Contract.objects.create(
            number=f"C-{n:02d}",
            customer=customer,
            legal_entity=entity,
            billing_model="tm",
            currency="GBP",
            tax_rate=vat,
            status="active",
        )
        code = f"P-{n:02d}"
        made = harvest(
            "POST",
            "/projects",
            {
                "client_id": client["id"],
                "name": f"Delivery {n}",
                "code": code,
                "is_billable": True,
                "bill_by": "People",
                "budget_by": "project_cost",
            },
        )
        harvest(
            "POST",
            f"/projects/{made['id']}/task_assignments",
            {"task_id": task["id"], "billable": True},
        )
        project = Project.objects.create(
            code=code,
            name=f"Delivery {n}",
            customer=customer,
            contract=contract,
            legal_entity=entity,
            region="emea",
            currency="GBP",
            status="active",
        )
        _xref(project, psa, made["id"])
        for d in range(ENTRIES + 1):
            approved = d < ENTRIES
            entry = harvest(
                "POST",
                "/time_entries",
                {
                    "project_id": made["id"],
                    "user_id": me["id"],
                    "task_id": task["id"],
                    "spent_date": (start + timedelta(days=d)).isoformat(),
                    "hours": 7.5,
                    "approval_status": "approved" if approved else "submitted",
                },
            )
            ids["time" if approved else "time_not"].add(int(entry["id"]))
        for d in range(EXPENSES + 2):
            billable, approved = d != EXPENSES, d != EXPENSES + 1
            spent = harvest(
                "POST",
                "/expenses",
                {
                    "project_id": made["id"],
                    "user_id": me["id"],
                    "expense_category_id": category["id"],
                    "spent_date": (start + timedelta(days=d)).isoformat(),
                    "total_cost": 20.0 + 10 * d + n,
                    "billable": billable,
                    "approval_status": "approved" if approved else "submitted",
                },
            )
            ids["expenses" if billable and approved else "expenses_not"].add(int(spent["id"]))
    return psa, erp, ids


def _harvest_ids(model: type[Any], psa: Connection) -> dict[int, int]:
    """Concord id -> Harvest id of every record of `model` read from Harvest."""
    return {
        x.object_id: int(x.external_id)
        for x in CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(model), connection=psa
        )
    }


def _xero_invoices(url: str) -> list[dict[str, Any]]:
    invoices: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = httpx.get(
            f"{url}/_control/records/xero/Invoices",
            params={"tenant": NEW_TENANT, "limit": 500, "offset": offset},
            timeout=30,
        ).json()
        rows = page.get("records", page.get("rows", []))
        invoices += [row["data"] for row in rows]
        if len(rows) < 500:
            return invoices
        offset += 500


def _billing_run(env: dict[str, str], log: Path) -> str:
    proc = Proc([sys.executable, "manage.py", "billing_run"], env, log).start()
    assert proc.popen is not None
    assert proc.popen.wait(timeout=120) == 0, proc.output()
    return proc.output()


def _erp_rows_done(erp: Connection) -> bool:
    rows = OutboxMessage.objects.filter(connection=erp)
    return rows.exists() and not rows.exclude(state__in=["done", "skipped"]).exists()


def test_approved_time_and_expenses_reach_xero_together_each_once(
    sandbox: str, tmp_path: Path
) -> None:
    psa, erp, harvest_ids = _firm(sandbox)
    # Read from Harvest as a poll reads them: raw rows, mapped by the published mappings.
    for object_type in ("time_entries", "expenses"):
        poll_object(connection_id=psa.pk, object_type=object_type)
    # Concord holds all of them, approved or not, and only the billable approved ones wait.
    assert TimeEntry.objects.count() == PROJECTS * (ENTRIES + 1)
    assert Expense.objects.count() == PROJECTS * (EXPENSES + 2)
    assert Expense.objects.unbilled().count() == PROJECTS * EXPENSES
    # Nothing more is read from Harvest while the ERP side runs.
    Connection.objects.filter(pk=psa.pk).update(enabled=False)

    httpx.post(
        f"{sandbox}/_control/limits", json={"system": "xero", "enabled": False}, timeout=10
    ).raise_for_status()
    httpx.post(f"{sandbox}/_control/faults", json=FAULTS, timeout=10).raise_for_status()
    env = process_env(CONCORD_OUTBOX_LEASE_S="20", CONCORD_OUTBOX_BACKOFF_CAP_S="5")
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    with running(worker, beat):
        said = _billing_run(env, tmp_path / "billing.log")
        try:
            wait_until(lambda: _erp_rows_done(erp), timeout=180, what="every invoice posted")
        except AssertionError:
            states = Counter(OutboxMessage.objects.values_list("state", "attempts", "last_error"))
            pytest.fail(f"outbox not drained: {dict(states)}\n{said}")
        again = _billing_run(env, tmp_path / "billing-again.log")
    assert f"billed {PROJECTS * ENTRIES} into {PROJECTS} invoices" in said, said
    assert f"expenses: considered {PROJECTS * EXPENSES}, billed {PROJECTS * EXPENSES}," in said
    assert "considered 0, billed 0 into 0 invoices" in again, again
    assert "expenses: considered 0, billed 0," in again, again

    time_ids, expense_ids = _harvest_ids(TimeEntry, psa), _harvest_ids(Expense, psa)
    on_lines: Counter[tuple[str, int]] = Counter()
    per_invoice: list[set[str]] = []
    for invoice in _xero_invoices(sandbox):
        kinds = set()
        for line in invoice.get("LineItems", []):
            head = str(line.get("Description", "")).split()[0]
            kind, ours = ("time", time_ids) if head.startswith("TE-") else ("expenses", expense_ids)
            # The line names Concord's record; its Harvest id is what people made.
            on_lines[(kind, ours[int(head[3:])])] += 1
            kinds.add(kind)
        per_invoice.append(kinds)
    for kind in ("time", "expenses"):
        posted = {harvest_id for (k, harvest_id), _ in on_lines.items() if k == kind}
        assert posted == harvest_ids[kind], f"{kind}: not what Harvest approved as billable"
    assert set(on_lines.values()) == {1}, "a record was posted more than once"
    assert not harvest_ids["time_not"] & {i for (k, i) in on_lines if k == "time"}
    assert not harvest_ids["expenses_not"] & {i for (k, i) in on_lines if k == "expenses"}
    # One draft per project, its time and expenses together.
    assert per_invoice == [{"time", "expenses"}] * PROJECTS
    stats = httpx.get(f"{sandbox}/_control/stats", params={"system": "xero"}, timeout=10).json()
    invoices = stats["systems"]["xero"]["Invoices"]
    assert invoices["duplicates_detected"] == 0
    assert invoices["created"] == PROJECTS
    # The faults really happened: otherwise this test would prove little.
    assert invoices["refused"]["by_status"].get("500", 0) + invoices["dropped_responses"] > 0


def test_runs_adding_to_open_drafts_while_the_worker_posts_them_change_nothing_posted(
    sandbox: str, tmp_path: Path
) -> None:
    """Every contract adds its new lines to its unsent draft (Contract.add_to_open_draft).
    Billing runs follow one another while the worker posts the drafts to a slow Xero, each
    with new expenses: a run adds to a draft only while no call for it can have gone out, so
    each invoice in Xero has exactly the lines Concord holds for it, and every record is on
    one line of one invoice."""
    psa, erp, _ = _firm(sandbox)
    for object_type in ("time_entries", "expenses"):
        poll_object(connection_id=psa.pk, object_type=object_type)
    Connection.objects.filter(pk=psa.pk).update(enabled=False)
    Contract.objects.update(add_to_open_draft=True)
    worker_id = Resource.objects.get().pk
    projects = list(Project.objects.order_by("pk"))
    httpx.post(
        f"{sandbox}/_control/limits", json={"system": "xero", "enabled": False}, timeout=10
    ).raise_for_status()
    # Slow answers: a run often finds a draft's row claimed and in flight.
    httpx.post(
        f"{sandbox}/_control/faults",
        json={"system": "xero", "latency_ms": 400, "latency_jitter_ms": 300, "seed": 5},
        timeout=10,
    ).raise_for_status()
    env = process_env(CONCORD_OUTBOX_LEASE_S="20", CONCORD_OUTBOX_BACKOFF_CAP_S="5")
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=2)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    extended = 0
    with running(worker, beat):
        billing_run()
        for n in range(8):
            for project in projects:
                Expense.objects.create(
                    resource_id=worker_id,
                    project=project,
                    date=date(2026, 11, 20),
                    category="Taxi",
                    amount=Decimal("12.00") + n,
                    currency="GBP",
                    approval_state="approved",
                )
            time.sleep(0.5 + 0.5 * (n % 4))
            report = billing_run()
            assert report.expenses_billed == PROJECTS
            extended += report.drafts_extended
        wait_until(lambda: _erp_rows_done(erp), timeout=180, what="every invoice posted")

    # What Concord holds for each invoice is exactly what Xero has on it.
    ours: dict[str, set[str]] = defaultdict(set)
    for invoice_id, description in BillingEvent.objects.values_list("invoice_id", "description"):
        ours[f"CONCORD-INV-{invoice_id}"].add(description.split()[0])
    theirs: dict[str, list[str]] = {}
    for invoice in _xero_invoices(sandbox):
        lines = [str(line["Description"]).split()[0] for line in invoice.get("LineItems", [])]
        assert invoice["Reference"] not in theirs, "one invoice created twice"
        theirs[invoice["Reference"]] = lines
    assert {ref: set(lines) for ref, lines in theirs.items()} == ours
    every_line = [head for lines in theirs.values() for head in lines]
    assert len(every_line) == len(set(every_line)) == BillingEvent.objects.count()
    assert BillingEvent.objects.exclude(status="invoiced").count() == 0
    # Some runs did add to a draft still unsent, and some found theirs sent and opened a new
    # one: both paths ran (otherwise this proves little).
    assert extended > 0
    assert Invoice.objects.count() > PROJECTS, (extended, Invoice.objects.count())
