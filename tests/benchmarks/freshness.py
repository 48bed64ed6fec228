"""`webhook_to_outbox_p95_ms`: how fresh the work is, not only how fast it is taken in.

Signed CRM and PSA deliveries arrive at a steady rate (``BENCH_FRESHNESS_RATE``, 500 a second)
for ``BENCH_FRESHNESS_S`` (60) seconds, alternately: a Salesforce opportunity that is closed-won
(provisioning's first step that writes, ``erp_customer``, puts the customer's row in the
outbox) and a Harvest milestone that is complete (milestone billing's ``bill`` step puts the
draft invoice's row in the outbox). Measured per delivery: from its 200, as the client saw it,
to the ``created_at`` of the outbox row of its own run's step (the run found by its subject:
the opportunity or the milestone; the row by the process, step and record the run names: the
customer or the invoice). Printed: p50, p95 and max, each kind's own, how many deliveries were
matched out of those sent (a delivery without its row by the end of the wait is counted
missing, and a p95 that falls on a missing one is given as the wait, a lower bound), the intake
rate achieved, how late the pacer sent, and the machine's load average; the rate the measured
path kept up with (``first_steps_per_s``) and the CPU each process spent until the last row
(``cpu_s``, ``cpu_ms_per_delivery``: tests/benchmarks/cpu.py).

The firm, the connections and the processes are provisioning's (tests/benchmarks/
provisioning.py: gunicorn 2x4 threads, the worker pools `make run` starts, beat); the sandbox's
own change feed is not subscribed: the deliveries are this module's, one event each, signed as
the feed signs them, paced by a plain asyncio client over keep-alive connections (an httpx
client tops out near 650 requests a second here). The records they name exist first: the
accounts, contracts and opportunities in Salesforce and the accounts and contracts in Concord
(as a poll leaves them; provisioning's harness), and for milestones one fixed-fee contract and
project per ``MILESTONES_PER_PROJECT`` complete milestones, in Harvest and in Concord, linked.
They are seeded through the vendors' own APIs (Salesforce's sObject collections of 200, Harvest
one record a call): the sandbox's control API seeds whole demo firms and patches records, but
creates none one by one. The three connections' polling rows are paused, so every run starts
from a delivery (a first poll would read the 15,000 complete milestones and start their runs
itself).

Everything else runs as in production: the outbox rows written are dispatched to the sandbox
and the runs go on with their next steps, on the same two CPUs as the deliveries' own work.

    python -m tests.benchmarks --only webhook_to_outbox_p95_ms
    BENCH_FRESHNESS_RATE=50 BENCH_FRESHNESS_S=10 \
        python -m tests.benchmarks --only webhook_to_outbox_p95_ms
    # The floor: the web process and the inbound pool alone, nothing after the measured step.
    BENCH_FRESHNESS_POOLS=inbound BENCH_FRESHNESS_S=20 \
        python -m tests.benchmarks --only webhook_to_outbox_p95_ms

Target: p95 at most 2,000 ms at 500 deliveries a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from django.contrib.contenttypes.models import ContentType
from django.db.models import Min
from django_celery_beat.models import PeriodicTask

from integrations.models import (
    Contract,
    CrossReference,
    Customer,
    InboundMessage,
    Invoice,
    OutboxMessage,
    Project,
    TaxRate,
    WorkflowRun,
)
from integrations.services.connections import connection_update
from integrations.services.schedules import poll_task_name, schedule_update
from integrations.workflows import milestones, provisioning
from tests.benchmarks.cpu import CpuMeter
from tests.benchmarks.cpu import window as cpu_window
from tests.benchmarks.provisioning import (
    SECRET,
    accounts_create,
    firm_fresh,
    opportunities_win,
    processes,
    processes_label,
)
from tests.firms import HARVEST_HEADERS, ProvisioningFirm
from tests.processes import wait_for_http, wait_until, worker_ready

Figure = dict[str, Any]

RATE = float(os.environ.get("BENCH_FRESHNESS_RATE", "500"))
SECONDS = float(os.environ.get("BENCH_FRESHNESS_S", "60"))
# How long after the last delivery its rows may take before the missing ones are counted.
WAIT_S = float(os.environ.get("BENCH_FRESHNESS_WAIT_S", str(max(120.0, 2 * SECONDS))))
TARGET_MS = 2000
# BENCH_FRESHNESS_POOLS=inbound: the floor. Only the web process and these worker pools run,
# no beat: the deliveries' own path (intake, then each run's steps up to the measured row)
# with nothing after it competing for the machine. The rows are written; nothing sends them.
POOLS = tuple(p for p in os.environ.get("BENCH_FRESHNESS_POOLS", "").split(",") if p) or None
# 15,000 milestones in 750 contracts: each contract's sum check reads 20 billing events at most.
MILESTONES_PER_PROJECT = 20
MILESTONE_AMOUNT = Decimal("1000")
# One keep-alive connection per 5 deliveries a second (1..64): each sends every 200 ms (128 ms
# at 500/s), so none is idle past gunicorn's 2 s keep-alive, and an answer slower than that
# shows as the pacer falling behind (sent_late), not as fewer deliveries.
CONNECTIONS = max(1, min(64, math.ceil(RATE / 5)))
# The pacer's first send comes this long after it is started (the senders connect meanwhile).
PACER_LEAD_S = 0.05


@dataclass
class Delivery:
    kind: str  # "crm" (a won opportunity) or "psa" (a complete milestone)
    connection_id: int
    subject_key: str  # the run's subject (workflows' subject_key)
    body: bytes
    event_id: str
    due: float = 0.0  # seconds after the pacer's start
    sent_late_s: float = 0.0
    sent_at: float = 0.0  # wall clock of the send
    status: int = 0
    answered_at: float | None = None  # wall clock of the 200, as the client read it


def freshness(sandbox: Any, **_: Any) -> Iterator[Figure]:
    total = max(2, int(RATE * SECONDS))
    firm = firm_fresh(sandbox)
    # The PSA's deliveries come by the same signed change feed, here with the CRM's secret.
    connection_update(connection=firm.psa, credentials={"webhook_secret": SECRET})
    crm = [
        _delivery(
            "crm",
            firm.crm.pk,
            provisioning.subject_key(connection=firm.crm, external_id=opportunity),
            "salesforce",
            "Opportunity",
            opportunity,
        )
        for opportunity in opportunities_win(firm, accounts_create(firm, (total + 1) // 2))
    ]
    psa = [
        _delivery(
            "psa",
            firm.psa.pk,
            milestones.subject_key(connection=firm.psa, external_id=milestone),
            "harvest",
            "x_milestones",
            milestone,
        )
        for milestone in milestones_complete(firm, total // 2)
    ]
    deliveries = [d for pair in zip(crm, psa, strict=False) for d in pair] + crm[len(psa) :]
    for n, delivery in enumerate(deliveries):
        delivery.due = n / RATE
    _polls_pause(firm)

    logs = Path(tempfile.mkdtemp(prefix="concord-bench-"))
    port, procs = processes(logs, POOLS)
    for proc in procs.values():
        proc.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        if POOLS is None:
            # Every check ok: the web process up, a worker and beat beating.
            wait_until(
                lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200,
                timeout=90,
                what="/healthz ok (worker and beat up)",
                interval=1.0,
            )
        else:
            # No beat to report them: each pool's own log says it is ready.
            for name in POOLS:
                wait_until(
                    lambda name=name: worker_ready(procs[name].log),
                    timeout=90,
                    what=f"the {name} pool ready",
                    interval=0.5,
                )
        # Each gunicorn worker's code paths warmed by deliveries of no events (verified, 200).
        warm = [_delivery("crm", firm.crm.pk, "", "salesforce", "", "") for _ in range(40)]
        asyncio.run(_pace(port, warm, connections=8))
        meter = CpuMeter({**procs, "sandbox": sandbox.proc})
        load_before, cpu_before = os.getloadavg(), meter.read()
        started = time.time()
        asyncio.run(_pace(port, deliveries, connections=CONNECTIONS))
        load_after = os.getloadavg()
        _rows_await(sum(d.status == 200 for d in deliveries))
        cpu = cpu_window(cpu_before, meter.read())
    finally:
        for proc in procs.values():
            proc.stop()
    yield _figure(
        firm, deliveries, started=started, load=(load_before, load_after), cpu=cpu, logs=logs
    )


def _rows_await(wanted: int) -> None:
    """Until the measured steps have as many rows as deliveries were answered, or WAIT_S has
    passed (those still without one are counted missing, never dropped)."""
    deadline = time.monotonic() + WAIT_S
    while _rows_written() < wanted and time.monotonic() < deadline:
        time.sleep(2.0)


def _delivery(
    kind: str, connection_id: int, key: str, system: str, obj: str, record_id: str
) -> Delivery:
    """One event in one signed change-feed delivery, shaped as the sandbox's feed shapes it
    (an empty events list when no object is named: the warm-up)."""
    event_id = uuid.uuid4().hex
    events = (
        [
            {
                "id": event_id,
                "object": obj,
                "record_id": int(record_id) if system == "harvest" else record_id,
                "type": "updated",
                "version": 1,
                "occurred_at": "2026-11-21T10:00:00Z",
            }
        ]
        if obj
        else []
    )
    body = json.dumps({"system": system, "events": events}, separators=(",", ":")).encode()
    return Delivery(kind, connection_id, key, body, event_id)


def milestones_complete(firm: ProvisioningFirm, count: int) -> list[str]:
    """`count` milestones complete in Harvest, MILESTONES_PER_PROJECT to a project, each
    project's client and fixed-fee contract (VAT 20%, 30 days, twice the milestones' value) in
    Concord and Harvest, linked as provisioning leaves them. Their Harvest ids."""
    if count <= 0:
        return []
    vat = TaxRate.objects.create(code="OUTPUT2", name="VAT 20%", country="GB", rate_percent=20)
    tag = uuid.uuid4().hex[:6]
    projects = math.ceil(count / MILESTONES_PER_PROJECT)
    with httpx.Client(
        base_url=f"{firm.url}/harvest/v2", headers=HARVEST_HEADERS, timeout=30
    ) as harvest:

        def create(path: str, body: dict[str, Any]) -> str:
            response = harvest.post(path, json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        names = [f"Milestones {tag} {n:05d} Ltd" for n in range(projects)]
        clients = [create("/clients", {"name": name, "currency": "GBP"}) for name in names]
        customers = Customer.objects.bulk_create(
            Customer(
                name=name,
                legal_entity=firm.entity,
                country="GB",
                tax_number=f"GB{200000000 + n}",
                currency="GBP",
            )
            for n, name in enumerate(names)
        )
        contracts = Contract.objects.bulk_create(
            Contract(
                number=f"C-MS-{tag}-{n:05d}",
                customer=customer,
                legal_entity=firm.entity,
                billing_model=Contract.BillingModel.FIXED_FEE,
                currency="GBP",
                total_value=MILESTONE_AMOUNT * MILESTONES_PER_PROJECT * 2,
                payment_terms_days=30,
                tax_rate=vat,
                start_date=date(2026, 9, 1),
                status=Contract.Status.ACTIVE,
            )
            for n, customer in enumerate(customers)
        )
        made = Project.objects.bulk_create(
            Project(
                code=f"PMS-{tag}-{n:05d}",
                name=f"Fixed-fee delivery {n:05d}",
                customer=contract.customer,
                contract=contract,
                legal_entity=firm.entity,
                region="emea",
                currency="GBP",
                budget=contract.total_value,
                status="active",
            )
            for n, contract in enumerate(contracts)
        )
        harvest_projects = [
            create(
                "/projects",
                {
                    "client_id": int(client),
                    "name": project.name,
                    "code": project.code,
                    "is_billable": True,
                    "bill_by": "none",
                    "budget_by": "project_cost",
                },
            )
            for client, project in zip(clients, made, strict=True)
        ]
        customer_type = ContentType.objects.get_for_model(Customer)
        project_type = ContentType.objects.get_for_model(Project)
        CrossReference.objects.bulk_create(
            [
                *(
                    CrossReference(
                        content_type=customer_type,
                        object_id=c.pk,
                        connection=firm.psa,
                        external_id=client,
                    )
                    for c, client in zip(customers, clients, strict=True)
                ),
                *(
                    CrossReference(
                        content_type=project_type,
                        object_id=p.pk,
                        connection=firm.psa,
                        external_id=external,
                    )
                    for p, external in zip(made, harvest_projects, strict=True)
                ),
            ]
        )
        return [
            create(
                "/x_milestones",
                {
                    "project_id": int(harvest_projects[n // MILESTONES_PER_PROJECT]),
                    "name": f"Stage {n % MILESTONES_PER_PROJECT + 1:02d}",
                    "amount": float(MILESTONE_AMOUNT),
                    # Due in order within the project; all complete, so none waits for another.
                    "due_on": (
                        date(2026, 12, 1) + timedelta(days=n % MILESTONES_PER_PROJECT)
                    ).isoformat(),
                    "status": "complete",
                },
            )
            for n in range(count)
        ]


def _polls_pause(firm: ProvisioningFirm) -> None:
    """The connections' own polling rows paused (as a person pauses one on the schedules page):
    no poll starts a run, or reads the seeded records, while the deliveries are measured."""
    for connection in (firm.crm, firm.psa, firm.erp):
        for task in PeriodicTask.objects.filter(name=poll_task_name(connection.pk)):
            schedule_update(task=task, actor=None, enabled=False)


# --- The pacer ------------------------------------------------------------------------------


async def _pace(port: int, deliveries: Sequence[Delivery], *, connections: int) -> None:
    """Send each delivery at its due time (signed then, as a sender signs), over `connections`
    keep-alive connections; record its status and when its answer was read. A delivery whose
    connection broke is left with status 0 (counted, not retried: a retry would be a second
    delivery of it)."""
    queue = iter(deliveries)
    start = time.monotonic() + PACER_LEAD_S

    async def sender() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        for delivery in queue:
            wait = start + delivery.due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            delivery.sent_late_s = max(0.0, time.monotonic() - start - delivery.due)
            try:
                if reader is None or writer is None or reader.at_eof():
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                delivery.sent_at = time.time()
                writer.write(_request(port, delivery))
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                reader = writer = None
                continue
            delivery.answered_at = time.time()
            delivery.status = int(head[9:12])
        if writer is not None:
            writer.close()

    await asyncio.gather(*(sender() for _ in range(connections)))


def _request(port: int, delivery: Delivery) -> bytes:
    ts = str(int(time.time()))
    signature = hmac.new(
        SECRET.encode(), ts.encode() + b"." + delivery.body, hashlib.sha256
    ).hexdigest()
    head = (
        f"POST /webhooks/{delivery.connection_id}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(delivery.body)}\r\n"
        f"X-Sandbox-Timestamp: {ts}\r\nX-Sandbox-Signature: v1={signature}\r\n"
        f"X-Sandbox-Event-Id: delivery-{delivery.event_id}\r\n\r\n"
    )
    return head.encode() + delivery.body


# --- Matching deliveries to their rows -----------------------------------------------------

# (process, step, the record the step's row is about, the run's context key naming it)
STEPS = {
    "crm": (provisioning.PROCESS, provisioning.ERP_CUSTOMER, Customer, "customer_id"),
    "psa": (milestones.PROCESS, milestones.BILL, Invoice, "invoice_id"),
}


def _rows_written() -> int:
    """The measured steps' rows in the outbox so far (the bench database holds no others)."""
    return sum(
        OutboxMessage.objects.filter(process=process, step=step).count()
        for process, step, _, _ in STEPS.values()
    )


def _row_times(deliveries: Sequence[Delivery]) -> dict[str, float]:
    """Event id -> wall-clock time of its run's step row, for the deliveries that have one."""
    found: dict[str, float] = {}
    for kind, (process, step, model, key) in STEPS.items():
        mine = {d.subject_key: d for d in deliveries if d.kind == kind}
        records: dict[int, str] = {}
        for subject, context in WorkflowRun.objects.filter(
            process=process, subject_key__in=list(mine)
        ).values_list("subject_key", "context"):
            if context.get(key) is not None:
                records[int(context[key])] = mine[subject].event_id
        rows = (
            OutboxMessage.objects.filter(
                process=process,
                step=step,
                content_type=ContentType.objects.get_for_model(model),
                object_id__in=list(records),
            )
            .values("object_id")
            .annotate(at=Min("created_at"))
            .order_by()
        )
        for row in rows:
            found[records[row["object_id"]]] = row["at"].timestamp()
    return found


def _received_at(firm: ProvisioningFirm, deliveries: Sequence[Delivery]) -> dict[str, float]:
    """Event id -> InboundMessage.received_at (stamped before the commit that precedes the 200)."""
    keys = {f"event:{d.event_id}": d.event_id for d in deliveries}
    return {
        keys[dedupe]: at.timestamp()
        for dedupe, at in InboundMessage.objects.filter(
            connection__in=[firm.crm, firm.psa], dedupe_key__in=list(keys)
        ).values_list("dedupe_key", "received_at")
    }


def _where(deliveries: Sequence[Delivery]) -> dict[str, int]:
    """Where the unmatched deliveries' runs stand ("no run" when none was opened)."""
    by_key = {d.subject_key: d for d in deliveries}
    runs = {
        subject: f"{process}:{state}:{step}"
        for subject, process, state, step in WorkflowRun.objects.filter(
            subject_key__in=list(by_key)
        ).values_list("subject_key", "process", "state", "current_step")
    }
    return dict(Counter(f"{d.kind} {runs.get(d.subject_key, 'no run')}" for d in deliveries))


def _first_steps_rate(rows: dict[str, float], started: float) -> float | None:
    """Measured steps' rows written a second, from the first send to the last row: what the
    deliveries' own path keeps up with (at most the rate asked, when it keeps up)."""
    if not rows:
        return None
    span = max(rows.values()) - (started + PACER_LEAD_S)
    return round(len(rows) / span, 1) if span > 0 else None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _rank(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted `values` (inf where it falls on a missing one)."""
    return values[max(0, math.ceil(share * len(values)) - 1)]


def _summary(latencies: Sequence[float], sent: int, wait_s: float) -> dict[str, Any]:
    """p50, p95, max over every delivery sent: a missing one counts as infinitely late, and a
    percentile that falls on one is given as the wait (a lower bound) with ``lower_bound``."""
    ordered = sorted(latencies) + [math.inf] * (sent - len(latencies))
    if not ordered:
        return {"matched": 0, "sent": 0}
    out: dict[str, Any] = {"matched": len(latencies), "sent": sent}
    for name, share in (("p50_ms", 0.50), ("p95_ms", 0.95), ("max_ms", 1.0)):
        value = _rank(ordered, share)
        out[name] = _ms(value) if value != math.inf else _ms(wait_s)
        if value == math.inf:
            out["lower_bound"] = True
    if latencies:
        out["mean_ms"] = _ms(statistics.fmean(latencies))
    return out


def _figure(
    firm: ProvisioningFirm,
    deliveries: Sequence[Delivery],
    *,
    started: float,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    cpu: dict[str, float],
    logs: Path,
) -> Figure:
    answered = [d for d in deliveries if d.status == 200]
    rows = _row_times(answered)
    received = _received_at(firm, answered)
    latencies: dict[str, list[float]] = {"crm": [], "psa": []}
    from_received: list[float] = []
    for d in answered:
        at = rows.get(d.event_id)
        if at is None or d.answered_at is None:
            continue
        latencies[d.kind].append(at - d.answered_at)
        if d.event_id in received:
            from_received.append(at - received[d.event_id])
    every = latencies["crm"] + latencies["psa"]
    overall = _summary(every, len(deliveries), WAIT_S)
    missing = [d for d in deliveries if d.event_id not in rows]
    # From the first send (the pacer starts 50 ms after `started`) to the last 200.
    answered_times = [d.answered_at for d in answered if d.answered_at is not None]
    span = max(answered_times, default=started) - (started + PACER_LEAD_S)
    intake = len(answered) / span if span > 0 else 0.0
    late = sorted(d.sent_late_s for d in deliveries)
    # How long the web process took to answer (the intake's own latency, as the client saw it).
    answers = sorted(d.answered_at - d.sent_at for d in answered if d.answered_at is not None)
    figure: Figure = {
        "name": "webhook_to_outbox_p95_ms",
        "value": overall.get("p95_ms"),
        "unit": "ms (p95, a delivery's 200 to its workflow step's outbox row)",
        "target": TARGET_MS,
        "p50_ms": overall.get("p50_ms"),
        "max_ms": overall.get("max_ms"),
        "sent": len(deliveries),
        "answered_200": len(answered),
        "refused_or_failed": len(deliveries) - len(answered),
        "matched": len(every),
        "missing": len(missing),
        "crm": _summary(latencies["crm"], sum(d.kind == "crm" for d in deliveries), WAIT_S),
        "psa": _summary(latencies["psa"], sum(d.kind == "psa" for d in deliveries), WAIT_S),
        "from_received_at_p95_ms": _summary(from_received, len(from_received), WAIT_S).get(
            "p95_ms"
        ),
        "rate_asked_per_s": RATE,
        "intake_per_s": round(intake, 1),
        "sending_s": round(span, 1),
        "sent_late_p95_ms": _ms(_rank(late, 0.95)) if late else 0.0,
        "sent_late_max_ms": _ms(late[-1]) if late else 0.0,
        "answer_p95_ms": _ms(_rank(answers, 0.95)) if answers else None,
        "client_connections": CONNECTIONS,
        "wait_after_s": WAIT_S,
        "load_avg_1m": [round(load[0][0], 2), round(load[1][0], 2)],
        "processes": processes_label() if POOLS is None else f"web and {', '.join(POOLS)} only",
        "polls": "paused",
        # Where the work ran, from the first delivery until every row was written (or the
        # wait ended): CPU seconds by process, and their sum per matched delivery.
        "cpu_s": cpu,
        "cpu_ms_per_delivery": round(1000 * sum(cpu.values()) / len(every), 2) if every else None,
        "first_steps_per_s": _first_steps_rate(rows, started),
    }
    if overall.get("lower_bound"):
        figure["lower_bound"] = True
    if missing:
        figure["missing_where"] = _where(missing)
        figure["logs"] = str(logs)
    return figure
