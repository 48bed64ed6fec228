"""`provision_runs_per_min`: closed-won opportunities provisioned end to end, by real processes.

The firm: one UK legal entity with Salesforce, Harvest and Xero (the new tenant) connected,
their default mappings published and routed, the sandbox's limits off (and the connections'
own limits far above what is used: the figure is Concord's pace, not a vendor's quota);
``N`` accounts in Salesforce, each with an activated contract (one in three fixed fee, so its
four milestones are made; the others by the hour), held by Concord as a poll leaves them;
Harvest has the firm's four tasks (three of them default ones, which every project is given);
Xero has its Project tracking category.

Measured: the web process (gunicorn serving config.wsgi) receives the sandbox's signed
Salesforce change feed; the Celery worker pools `make run` starts
(settings.CONCORD_WORKER_POOLS: inbound processing apart from the rest) and beat do everything
else. ``N`` opportunities are won in Salesforce (sObject collections of 200, as a sales team's
import would); the figure runs from the first webhook Concord stored to the last run done: runs
per minute, with the vendor calls each run cost per system (Concord's SyncAttempt rows: every
HTTP call to the vendor, reads included, token calls excluded), the runs' own latency (p50/p95
from opened to done), each step's mean time (where runs wait), and how many CRM events the web
process stored.

    python -m tests.benchmarks --only provision_runs_per_min
    BENCH_PROVISION_RUNS=60 python -m tests.benchmarks --only provision_runs_per_min

Target: 300 runs a minute on the 2-CPU box.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import connection as db
from django.db.models import Max, Min

from integrations.management.commands.run_portal import worker_commands
from integrations.models import (
    Connection,
    Contract,
    CrossReference,
    Customer,
    InboundMessage,
    RunState,
    SyncAttempt,
    WorkflowRun,
    WorkflowStep,
)
from integrations.services.connections import connection_create
from integrations.vendors import connector_for
from integrations.workflows.provisioning import PROCESS
from tests.firms import NEW_TENANT, ProvisioningFirm, harvest_tasks_create
from tests.processes import (
    Proc,
    beat_proc,
    free_port,
    gunicorn_proc,
    process_env,
    wait_for_http,
    wait_until,
)

Figure = dict[str, Any]

RUNS = int(os.environ.get("BENCH_PROVISION_RUNS", "300"))
TARGET_PER_MIN = 300
SECRET = "bench-provisioning-secret"
# Salesforce's sObject Collections take 200 records a call.
CHUNK = 200
UNLIMITED = 1_000_000
# The workflow tables the other figures' reset leaves alone.
TABLES = ("integrations_workflowstep", "integrations_workflowrun", "integrations_auditevent")


def provision(sandbox: Any, **_: Any) -> Iterator[Figure]:
    firm = firm_fresh(sandbox)
    accounts = accounts_create(firm, RUNS)

    logs = Path(tempfile.mkdtemp(prefix="concord-bench-"))
    port, named = processes(logs)
    procs = list(named.values())
    for proc in procs:
        proc.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        subscribed = httpx.post(
            f"{sandbox.url}/_control/webhooks",
            json={
                "system": "salesforce",
                "url": f"http://127.0.0.1:{port}/webhooks/{firm.crm.pk}/",
                "secret": SECRET,
            },
            timeout=10,
        )
        subscribed.raise_for_status()
        opportunities_win(firm, accounts)
        done = WorkflowRun.objects.filter(process=PROCESS, state=RunState.DONE)
        try:
            wait_until(
                lambda: done.count() >= RUNS,
                timeout=max(300.0, RUNS * 2.0),
                what=f"{RUNS} provisioning runs done",
                interval=1.0,
            )
        except AssertionError:
            where = Counter(
                WorkflowRun.objects.filter(process=PROCESS).values_list("state", "current_step")
            )
            raise AssertionError(f"runs not done: {dict(where)}; logs in {logs}") from None
    finally:
        for proc in procs:
            proc.stop()
    yield _figure(firm)


def firm_fresh(sandbox: Any) -> ProvisioningFirm:
    """Empty bench tables and an empty sandbox (its limits off), then the firm in both: its
    three connections, Xero's Project tracking category and Harvest's four tasks."""
    from tests.benchmarks.figures import _reset_concord

    _reset_concord()
    with db.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    sandbox.control("reset")
    sandbox.control("limits", {"system": "*", "enabled": False})
    firm = ProvisioningFirm(sandbox.url, *connections_create(sandbox.url))
    firm.tracking_category()
    harvest_tasks_create(firm.psa)
    return firm


PROCESSES = "gunicorn 2x4 threads, worker pools as `make run` starts them ({pools}), beat"


def processes(logs: Path, pools: Sequence[str] | None = None) -> tuple[int, dict[str, Proc]]:
    """The processes of PROCESSES by name ("web", each pool's, "beat"), not started yet,
    logging to `logs`; the web port. The worker pools are `make run`'s
    (run_portal.worker_commands: inbound processing apart). With `pools`, only the web process
    and those pools start, and no beat: a figure's floor, its own work with nothing else on
    the machine."""
    # BENCH_LOG_LEVEL=INFO keeps every task's timing in the workers' logs (where runs wait).
    env = process_env(CONCORD_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    port = free_port()
    named = {"web": gunicorn_proc(port, env, logs / "web.log", workers=2, threads=4)}
    for name, command in worker_commands(prefix="prov-").items():
        if pools is None or name in pools:
            named[name] = Proc(command, env, logs / f"{name}.log")
    if pools is None:
        named["beat"] = beat_proc(env, logs / "beat.log", logs / "beat-schedule")
    return port, named


def processes_label() -> str:
    pools = ", ".join(
        f"{name} x {concurrency}"
        for name, (_, concurrency) in settings.CONCORD_WORKER_POOLS.items()
    )
    return PROCESSES.format(pools=pools)


def _figure(firm: ProvisioningFirm) -> Figure:
    runs = WorkflowRun.objects.filter(process=PROCESS)
    first = InboundMessage.objects.filter(
        connection=firm.crm, object_type="Opportunity", source=InboundMessage.Source.WEBHOOK
    ).aggregate(at=Min("received_at"))["at"]
    last = runs.aggregate(at=Max("finished_at"))["at"]
    assert first is not None
    assert last is not None
    elapsed = (last - first).total_seconds()
    latencies = sorted(
        (finished - started).total_seconds()
        for started, finished in runs.values_list("started_at", "finished_at")
        if started is not None and finished is not None
    )
    calls: dict[str, float] = {}
    for connection in (firm.crm, firm.psa, firm.erp):
        made = (
            SyncAttempt.objects.filter(connection=connection, started_at__gte=first)
            .exclude(operation="oauth_token")
            .count()
        )
        calls[connection.vendor] = round(made / RUNS, 2)
    # Where runs wait: each step's mean time from started to finished (a step that writes waits
    # for its rows' delivery, behind the other runs' rows for the same system).
    waits: dict[str, list[float]] = {}
    for name, started, finished in WorkflowStep.objects.filter(run__process=PROCESS).values_list(
        "name", "started_at", "finished_at"
    ):
        if started is not None and finished is not None:
            waits.setdefault(name, []).append((finished - started).total_seconds())
    deliveries = (
        InboundMessage.objects.filter(connection=firm.crm, source=InboundMessage.Source.WEBHOOK)
        .values("dedupe_key")
        .count()
    )
    return {
        "name": "provision_runs_per_min",
        "value": round(RUNS / elapsed * 60, 1),
        "unit": "runs/min",
        "target": TARGET_PER_MIN,
        "runs": RUNS,
        "seconds": round(elapsed, 1),
        "run_latency_p50_s": round(statistics.median(latencies), 2),
        "run_latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "vendor_calls_per_run": calls,
        "step_mean_s": {name: round(statistics.fmean(v), 2) for name, v in waits.items()},
        "crm_events_stored": deliveries,
        "processes": processes_label(),
    }


def connections_create(url: str) -> tuple[Connection, Connection, Connection]:
    crm = connection_create(
        name="Salesforce bench",
        role="crm",
        vendor="salesforce",
        base_url=f"{url}/salesforce",
        credentials={
            "client_id": "concord-salesforce",
            "client_secret": "sandbox-salesforce-secret",
            "webhook_secret": SECRET,
        },
        rate_limit_per_minute=UNLIMITED,
        max_concurrency=10,
    )
    psa = connection_create(
        name="Harvest bench",
        role="psa",
        vendor="harvest",
        base_url=f"{url}/harvest/v2",
        credentials={"access_token": "sandbox-harvest-token", "account_id": "100001"},
        rate_limit_per_minute=UNLIMITED,
        max_concurrency=10,
    )
    erp = connection_create(
        name="Xero bench",
        role="erp",
        vendor="xero",
        base_url=f"{url}/xero/api.xro/2.0",
        credentials={
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
            "token_url": f"{url}/xero/connect/token",
            "tenant_id": NEW_TENANT,
        },
        rate_limit_per_minute=UNLIMITED,
        max_concurrency=10,
    )
    return crm, psa, erp


def _write(firm: ProvisioningFirm, operation: str, items: list[dict[str, Any]]) -> list[str]:
    """Salesforce records made through the CRM connector, 200 a call; their ids in order."""
    connector = connector_for(firm.crm)
    ids: list[str] = []
    try:
        for start in range(0, len(items), CHUNK):
            results = connector.write(
                operation, items[start : start + CHUNK], idempotency_key=uuid.uuid4().hex
            )
            assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
            ids += [r.external_id for r in results]
    finally:
        connector.close()
    return ids


def accounts_create(firm: ProvisioningFirm, count: int) -> list[str]:
    """`count` accounts with an activated contract each, in Salesforce and in Concord: their
    Salesforce ids."""
    tag = uuid.uuid4().hex[:6]
    names = [f"Bench {tag} {n:05d} Ltd" for n in range(count)]
    accounts = _write(
        firm,
        "create_account",
        [
            {"Name": name, "CurrencyIsoCode": "GBP", "External_Id__c": f"ACC-{tag}-{n}"}
            for n, name in enumerate(names)
        ],
    )
    contracts = _write(
        firm,
        "create_contract",
        [
            {
                "AccountId": account,
                "CurrencyIsoCode": "GBP",
                "StartDate": "2026-11-01",
                "External_Id__c": f"CTR-{tag}-{n}",
            }
            for n, account in enumerate(accounts)
        ],
    )
    customers = Customer.objects.bulk_create(
        Customer(
            name=name,
            legal_entity=firm.entity,
            country="GB",
            tax_number=f"GB{100000000 + n}",
            currency="GBP",
        )
        for n, name in enumerate(names)
    )
    made = Contract.objects.bulk_create(
        Contract(
            number=f"C-{tag}-{n:05d}",
            customer=customer,
            legal_entity=firm.entity,
            billing_model="fixed_fee" if n % 3 == 2 else "tm",
            currency="GBP",
            total_value=Decimal("120000"),
            start_date=date(2026, 11, 1),
            end_date=date(2027, 4, 30),
            status="active",
        )
        for n, customer in enumerate(customers)
    )
    customer_type = ContentType.objects.get_for_model(Customer)
    contract_type = ContentType.objects.get_for_model(Contract)
    CrossReference.objects.bulk_create(
        [
            *(
                CrossReference(
                    content_type=customer_type,
                    object_id=c.pk,
                    connection=firm.crm,
                    external_id=account,
                )
                for c, account in zip(customers, accounts, strict=True)
            ),
            *(
                CrossReference(
                    content_type=contract_type,
                    object_id=c.pk,
                    connection=firm.crm,
                    external_id=contract,
                )
                for c, contract in zip(made, contracts, strict=True)
            ),
        ]
    )
    return accounts


def opportunities_win(firm: ProvisioningFirm, accounts: list[str]) -> list[str]:
    """One closed-won opportunity per account, won in Salesforce: the start of every run (the
    sandbox's change feed, where subscribed, reaches the web process within its 200 ms batch
    window). Their Salesforce ids, in the accounts' order."""
    return _write(
        firm,
        "create_opportunity",
        [
            {
                "Name": f"Bench delivery {n:05d}",
                "AccountId": account,
                "StageName": "Closed Won",
                "CloseDate": "2026-10-20",
                "Amount": 120000,
                "CurrencyIsoCode": "GBP",
                "Billing_Model__c": "Time and Materials",
                "Legal_Entity__c": "UK01",
                "Region__c": "EMEA",
                "External_Id__c": f"OPP-{uuid.uuid4().hex[:12]}",
            }
            for n, account in enumerate(accounts)
        ],
    )
