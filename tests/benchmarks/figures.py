"""The benchmark figures. Each function takes the running sandbox and yields figure dicts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from django.db import connection as db
from django.db import transaction

from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    InboundMessage,
    OutboxMessage,
    SyncAttempt,
    TimeEntry,
)
from integrations.services.connections import connection_create
from integrations.sync.dispatch import outbox_dispatch
from tests.benchmarks import actuals, e2e, freshness, pages, provisioning
from tests.firms import NEW_TENANT, approved_time_firm
from tests.processes import (
    free_port,
    gunicorn_proc,
    sandbox_proc,
    wait_for_http,
    wait_for_sandbox,
    wait_until,
)

Figure = dict[str, Any]


class Sandbox:
    """The vendor sandbox as its own process for the whole benchmark run."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkdtemp(prefix="concord-bench-")) / "sandbox.log"
        self.proc = sandbox_proc(self.port, self.log)

    def __enter__(self) -> Sandbox:
        self.proc.start()
        wait_for_sandbox(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.post(f"{self.url}/_control/{path}", json=body or {}, timeout=120)
        response.raise_for_status()
        return response.json()

    def stats(self, system: str) -> dict[str, Any]:
        body = httpx.get(f"{self.url}/_control/stats", params={"system": system}, timeout=30)
        return dict(body.json()["systems"][system])


def _reset_concord() -> None:
    """Empty the bench database's business tables and the bench Redis database between figures:
    ids restart at 1, so a figure would otherwise inherit the last one's limiter windows and
    ring flags for "its" connection."""
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    tables = [
        "integrations_billingevent",
        "integrations_outboxmessage_sync_attempts",
        "integrations_syncattempt_messages",
        "integrations_syncattempt",
        "integrations_outboxmessage",
        "exceptions_blockedrecord",
        "exceptions_exceptioncase",
        "integrations_invoice",
        "integrations_timeentry",
        "integrations_expense",
        "integrations_milestone",
        "integrations_assignment",
        "integrations_project",
        "integrations_ratecard",
        "integrations_contract",
        "integrations_customer",
        "integrations_resource",
        "integrations_crossreference",
        "integrations_inboundmessage",
        "integrations_pollcursor",
        "integrations_routingrule",
        "integrations_fieldmapping",
        "integrations_mappingset",
        "integrations_valuemapentry",
        "integrations_valuemap",
        "integrations_connectionhealth",
        "integrations_connection",
        "integrations_taxrate",
        "integrations_legalentity",
    ]
    with db.cursor() as cursor:
        existing = set(db.introspection.table_names(cursor))
        cursor.execute(
            "TRUNCATE "
            + ", ".join(t for t in tables if t in existing)
            + " RESTART IDENTITY CASCADE"
        )


# --- push_100k_time_entries_s ---------------------------------------------------------------


def push(sandbox: Sandbox, *, entries: int, **_: Any) -> Iterator[Figure]:
    """Approved time to ERP invoice lines: billing run (validation, billing events, draft
    invoices, outbox rows) and dispatch (PUT /Invoices in batches of 50) until every row is
    done; against the raw floor of reading the same rows and making the same calls."""
    from integrations.workflows.time_to_erp import billing_run

    _reset_concord()
    sandbox.control("reset")
    sandbox.control("limits", {"system": "*", "enabled": False})
    per_project = 200
    connection = approved_time_firm(
        sandbox.url,
        projects=max(1, entries // per_project),
        entries_per_project=per_project,
        rate_limit_per_minute=1_000_000,
        max_concurrency=10,
    )
    total = TimeEntry.objects.count()

    started = time.perf_counter()
    report = billing_run()
    while OutboxMessage.objects.exclude(state__in=["done", "skipped", "parked"]).exists():
        outbox_dispatch(connection_id=connection.pk, worker="bench", time_budget_s=600)
    elapsed = time.perf_counter() - started

    lines = sum(
        len(r["data"].get("LineItems", []))
        for r in _sandbox_rows(sandbox, "xero", "Invoices", NEW_TENANT)
    )
    assert report.billed == total, report
    assert lines == total, f"{lines} lines in Xero for {total} entries"
    assert not OutboxMessage.objects.filter(state="parked").exists()

    sandbox.control("reset")
    sandbox.control("limits", {"system": "*", "enabled": False})
    floor = _push_floor(sandbox)
    yield {
        "name": "push_100k_time_entries_s",
        "value": round(elapsed, 2),
        "unit": "s",
        "floor": round(floor, 2),
        "target": 60,
        "entries": total,
        "invoices": report.invoices,
    }


def _sandbox_rows(sandbox: Sandbox, system: str, obj: str, tenant: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = httpx.get(
            f"{sandbox.url}/_control/records/{system}/{obj}",
            params={"tenant": tenant, "limit": 1000, "offset": len(rows)},
            timeout=60,
        ).json()["records"]
        rows += page
        if len(page) < 1000:
            return rows


PUSH_FLOOR_SQL = """
SELECT t.id, t.date, t.hours, t.task, r.name, p.contract_id, c.name, c.tax_number,
       k.payment_terms_days, tx.code, rc.bill_rate
FROM integrations_timeentry t
JOIN integrations_resource r ON r.id = t.resource_id
JOIN integrations_project p ON p.id = t.project_id
JOIN integrations_customer c ON c.id = p.customer_id
JOIN integrations_contract k ON k.id = p.contract_id
LEFT JOIN integrations_taxrate tx ON tx.id = k.tax_rate_id
JOIN integrations_ratecard rc ON rc.contract_id IS NULL AND rc.role = r.role
     AND rc.currency = p.currency
WHERE t.approval_state = 'approved' AND t.billable
ORDER BY t.id
"""


def _push_floor(sandbox: Sandbox) -> float:
    """The raw floor: one SQL read of the same entries and rates, the same grouping into invoices
    of 100 lines, the same PUTs of 50 invoices; no framework, no bookkeeping."""
    import psycopg

    token = httpx.post(
        f"{sandbox.url}/xero/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "concord-xero",
            "client_secret": "sandbox-xero-secret",
        },
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Xero-Tenant-Id": NEW_TENANT}
    started = time.perf_counter()
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        rows = conn.execute(PUSH_FLOOR_SQL).fetchall()
    groups: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        groups[row[5]].append(row)
    invoices = []
    for contract_id, lines in groups.items():
        for start in range(0, len(lines), 100):
            chunk = lines[start : start + 100]
            first = chunk[0]
            invoices.append(
                {
                    "Type": "ACCREC",
                    "Contact": {"Name": first[6], "TaxNumber": first[7]},
                    "Date": "2026-11-21",
                    "DueDate": "2026-12-21",
                    "CurrencyCode": "GBP",
                    "Status": "DRAFT",
                    "LineAmountTypes": "Exclusive",
                    "Reference": f"FLOOR-{contract_id}-{start}",
                    "LineItems": [
                        {
                            "Description": f"TE-{r[0]} {r[1]} {r[4]} {r[3]} ({r[2]} h)",
                            "Quantity": float(r[2]),
                            "UnitAmount": float(r[10]),
                            "AccountCode": "200",
                            "TaxType": r[9],
                        }
                        for r in chunk
                    ],
                }
            )
    with httpx.Client(
        base_url=f"{sandbox.url}/xero/api.xro/2.0", headers=headers, timeout=120
    ) as client:
        for start in range(0, len(invoices), 50):
            response = client.put(
                "/Invoices",
                params={"summarizeErrors": "false"},
                json={"Invoices": invoices[start : start + 50]},
            )
            response.raise_for_status()
    return time.perf_counter() - started


# --- ingest_webhooks_per_s ------------------------------------------------------------------

SECRET = "bench-webhook-secret"


def ingest(sandbox: Sandbox, **_: Any) -> Iterator[Figure]:
    """Signed single-event change-feed webhooks against gunicorn serving config.wsgi (the webhook
    receiver in front of Django): each one verified, its event stored and committed before the
    200. The stored row (state received) is the event's durable to-do: the record it names is
    applied from it by the workers, whose ring is sent after the commit."""
    _reset_concord()
    harvest = connection_create(
        name="Harvest bench",
        role="psa",
        vendor="harvest",
        base_url=f"{sandbox.url}/harvest/v2",
        credentials={
            "access_token": "sandbox-harvest-token",
            "account_id": "100001",
            "webhook_secret": SECRET,
        },
    )
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="concord-bench-")) / "gunicorn.log"
    env = {**os.environ, "CONCORD_LOG_LEVEL": "WARNING"}
    server = gunicorn_proc(port, env, log).start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        count = 12_000
        requests = [_signed_request(port, harvest.pk, n) for n in range(count)]
        # Warm every gunicorn worker's connections and code paths first.
        asyncio.run(
            _post_all(port, [_signed_request(port, harvest.pk, -n - 1) for n in range(60)], 12)
        )
        started = time.perf_counter()
        ok, failed = asyncio.run(_post_all(port, requests, concurrency=24))
        elapsed = time.perf_counter() - started
    finally:
        server.stop()
    stored = InboundMessage.objects.filter(connection=harvest).count()
    assert failed == 0, f"{failed} webhooks refused; see {log}"
    assert stored == count + 60, stored
    yield {
        "name": "ingest_webhooks_per_s",
        "value": round(ok / elapsed, 1),
        "unit": "webhooks/s",
        "target": 1000,
        "webhooks": ok,
        "committed": "inbound event row (the durable to-do the workers apply)",
    }


def _signed_request(port: int, connection_id: int, n: int) -> bytes:
    body = json.dumps(
        {
            "system": "harvest",
            "events": [
                {
                    "id": f"bench-{n}",
                    "object": "time_entries",
                    "record_id": 1000 + n,
                    "type": "updated",
                    "version": 1,
                    "occurred_at": "2026-11-21T10:00:00Z",
                }
            ],
        }
    ).encode()
    ts = str(int(time.time()))
    signature = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    head = (
        f"POST /webhooks/{connection_id}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Sandbox-Timestamp: {ts}\r\nX-Sandbox-Signature: v1={signature}\r\n"
        f"X-Sandbox-Event-Id: delivery-{n}\r\n\r\n"
    )
    return head.encode() + body


async def _post_all(port: int, requests: list[bytes], concurrency: int) -> tuple[int, int]:
    """Plain asyncio keep-alive connections: an httpx client on this machine tops out near
    650 requests/s, which would measure the client instead of Concord."""
    ok = failed = 0
    queue = list(reversed(requests))

    async def loop() -> None:
        nonlocal ok, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                writer.write(queue.pop())
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    ok += 1
                else:
                    failed += 1
        finally:
            writer.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return ok, failed


# --- poll_upsert_records_per_s --------------------------------------------------------------


def poll(sandbox: Sandbox, **_: Any) -> Iterator[Figure]:
    """Polling Harvest time entries: read page by page, kept raw, mapped, upserted in bulk."""
    from integrations.sync.polling import poll_object

    _reset_concord()
    sandbox.control("reset")
    sandbox.control("limits", {"system": "*", "enabled": False})
    sandbox.control("seed", {"scale": 20, "seed": 3})
    harvest = connection_create(
        name="Harvest bench",
        role="psa",
        vendor="harvest",
        base_url=f"{sandbox.url}/harvest/v2",
        credentials={"access_token": "sandbox-harvest-token", "account_id": "100001"},
        rate_limit_per_minute=1_000_000,
        max_concurrency=10,
    )
    mapping_defaults_install(connection=harvest)
    for object_type in ("clients", "users", "projects"):
        poll_object(connection_id=harvest.pk, object_type=object_type)
    started = time.perf_counter()
    report = poll_object(connection_id=harvest.pk, object_type="time_entries")
    elapsed = time.perf_counter() - started
    assert report.applied > 0, report
    yield {
        "name": "poll_upsert_records_per_s",
        "value": round(report.applied / elapsed, 1),
        "unit": "records/s",
        "target": 10000,
        "records": report.applied,
        "failed": report.failed,
    }


# --- xero_rate_utilisation ------------------------------------------------------------------


def rate(sandbox: Sandbox, **_: Any) -> Iterator[Figure]:
    """With Xero's limits on (60 calls a minute per tenant, 5 at once, in the sandbox and in the
    connection's settings), two real Celery worker processes dispatch a backlog of 8,000
    one-line invoices (160 calls of 50) for two minutes: the share of the allowed 120 calls
    made in that window, and the 429s Concord caused."""
    from django.conf import settings

    from integrations.sync.ring import ring_dispatch
    from integrations.workflows.time_to_erp import billing_run
    from tests.processes import beat_proc, process_env, worker_proc

    _reset_concord()
    sandbox.control("reset")
    sandbox.control("limits", {"system": "xero", "defaults": True})
    connection = approved_time_firm(
        sandbox.url,
        projects=8000,
        entries_per_project=1,
        rate_limit_per_minute=60,
        max_concurrency=5,
    )
    settings.CONCORD_MAX_LINES_PER_INVOICE = 1
    billing_run()
    window_s = 120.0
    logs = Path(tempfile.mkdtemp(prefix="concord-bench-"))
    env = process_env()
    workers = [
        worker_proc(env, logs / f"w{i}.log", name=f"bench{i}", concurrency=2) for i in (1, 2)
    ]
    # Beat's sweeper rings for rows whose wait for the rate limit is over, as in production.
    workers.append(beat_proc(env, logs / "beat.log", logs / "beat-schedule"))
    for w in workers:
        w.start()
    try:
        ring_dispatch([connection.pk], force=True)
        wait_until(
            lambda: SyncAttempt.objects.filter(
                connection=connection, operation="put_invoices"
            ).exists(),
            60,
            "the first Xero call",
        )
        first = (
            SyncAttempt.objects.filter(connection=connection)
            .exclude(operation="oauth_token")
            .order_by("started_at")
            .first()
        )
        assert first is not None
        time.sleep(window_s + 3)
        end = first.started_at + timedelta(seconds=window_s)
        # Calls that reached Xero (a status code); rows held back by our own limiter have none.
        calls = (
            SyncAttempt.objects.filter(
                connection=connection,
                started_at__gte=first.started_at,
                started_at__lt=end,
                status_code__isnull=False,
            )
            .exclude(operation="oauth_token")
            .count()
        )
    finally:
        for w in workers:
            w.stop()
    xero = sandbox.stats("xero")
    throttled = sum(obj.get("throttled", 0) for obj in xero.values() if isinstance(obj, dict))
    allowed = 60 * window_s / 60
    yield {
        "name": "xero_rate_utilisation",
        "value": round(calls / allowed, 3),
        "unit": "share of 60 calls/min",
        "target": 0.95,
        "calls": calls,
        "window_s": window_s,
        "throttled_429": throttled,
    }


# --- sandbox_seed_100k_s --------------------------------------------------------------------


def seed(sandbox: Sandbox, **_: Any) -> Iterator[Figure]:
    """The vendor sandbox seeding a firm at scale 100 (100,000 Harvest time entries), as tests
    and demos ask it to: the time of the control call, end to end."""
    sandbox.control("reset")
    started = time.perf_counter()
    result = sandbox.control("seed", {"scale": 100})
    elapsed = time.perf_counter() - started
    entries = result["counts"]["harvest.time_entries"]
    assert entries == 100_000, result["counts"]
    sandbox.control("reset")
    yield {
        "name": "sandbox_seed_100k_s",
        "value": round(elapsed, 2),
        "unit": "s",
        "target": 15,
        "entries": entries,
    }


# --- case_join_ms ----------------------------------------------------------------------------


def case_join(sandbox: Sandbox, **_: Any) -> Iterator[Figure]:
    """One record joining, and one record clearing off, an exception case that already holds
    50,000 blocked time entries, each through the one path (exceptions.services) in its own
    transaction; p50/p95 in ms. The same at 5,000 entries shows the cost does not grow with the
    case."""
    for held in (50_000, 5_000):
        yield _case_join_figure(held, name="case_join_ms" if held == 50_000 else "case_join_ms_5k")


def _case_join_figure(held: int, *, name: str, rounds: int = 500) -> Figure:
    from exceptions.services import Blocked, case_open_or_join, case_records_clear

    _reset_concord()

    def entry(pk: int) -> Blocked:
        return Blocked(
            record_type="timeentry",
            record_id=pk,
            label=f"TE-{pk} 2026-11-02 Ada Byron (7.50 h)",
            amount=Decimal("1050.00"),
            currency="GBP",
            hours=Decimal("7.50"),
        )

    def join(records: list[Blocked]) -> None:
        case_open_or_join(
            case_type="project_without_legal_entity",
            subject={"project_id": 1, "project": "P-001 Apollo"},
            records=records,
            process="time_to_erp",
            step="validate",
        )

    join([entry(pk) for pk in range(1, held + 1)])
    with db.cursor() as cursor:
        cursor.execute("ANALYZE exceptions_blockedrecord")
    case_id = ExceptionCase.objects.get().pk
    joins: list[float] = []
    clears: list[float] = []
    floors: list[float] = []
    warmup = 20
    for i in range(warmup + rounds):
        # Join one new entry, clear one of the first ones: the case keeps holding `held`.
        started = time.perf_counter()
        join([entry(held + 1 + i)])
        joined = time.perf_counter()
        case_records_clear(records=[("timeentry", 1 + i)], note="billed", process="time_to_erp")
        cleared = time.perf_counter()
        # The floor: the least any change to a case costs, one committed UPDATE of its row.
        with transaction.atomic():
            ExceptionCase.objects.filter(pk=case_id).update(occurrences=i)
        floored = time.perf_counter()
        if i >= warmup:
            joins.append((joined - started) * 1000)
            clears.append((cleared - joined) * 1000)
            floors.append((floored - cleared) * 1000)
    still = ExceptionCase.objects.get()
    assert still.record_count == held, still.record_count
    join_p = statistics.quantiles(joins, n=100)
    clear_p = statistics.quantiles(clears, n=100)
    return {
        "name": name,
        "value": round(max(join_p[94], clear_p[94]), 2),
        "unit": "ms (p95 of a join or a clear)",
        "floor": round(statistics.quantiles(floors, n=100)[94], 2),
        "target": 5,
        "held": held,
        "rounds": rounds,
        "join_p50": round(join_p[49], 2),
        "join_p95": round(join_p[94], 2),
        "clear_p50": round(clear_p[49], 2),
        "clear_p95": round(clear_p[94], 2),
    }


ALL: list[tuple[str, Callable[..., Iterator[Figure]]]] = [
    ("ingest_webhooks_per_s", ingest),
    ("poll_upsert_records_per_s", poll),
    ("push_100k_time_entries_s", push),
    ("xero_rate_utilisation", rate),
    ("sandbox_seed_100k_s", seed),
    ("case_join_ms", case_join),
    ("queue_list_p95_ms", pages.queue_list),
    ("case_detail_p95_ms", pages.case_detail),
    ("actuals_export_s", actuals.export),
    ("provision_runs_per_min", provisioning.provision),
    ("webhook_to_outbox_p95_ms", freshness.freshness),
    ("e2e_100k_entries_s", e2e.e2e),
]
