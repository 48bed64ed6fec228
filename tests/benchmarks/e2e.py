"""`e2e_100k_entries_s`: the firm's wait, from approved time in the PSA to draft invoices in the
ERP, end to end (issue 13).

The sandbox holds the demo firm at scale 100 (``{"scale": 100, "seed": 42}``: 100,000 Harvest
time entries), its limits off. Concord starts as a firm's would after `make run`'s set-up
(integrations/management/demo.py ``demo_firm_setup``): the CRM, PSA and two Xero connections
with the sandbox's credentials and their published default mappings, the three legal entities,
the routing rules, the exchange rates; no business record. Then only real processes work: the
Celery worker pools as `make run` starts them (settings.CONCORD_WORKER_POOLS: inbound x 2,
worker x 3, outbox x 3), beat, and the sandbox.

- The first polls are rung in `make run`'s order (``DemoDay``: the CRM's first, so the PSA's
  clients and the ERP's contacts join the accounts; then the PSA's and the ERP's), each as soon
  as the one before is in rather than at DemoDay's 2 s checks: accounts, contracts, clients,
  people, projects (linked to their contracts as soon as they are in), tax rates, contacts,
  expenses, then the time entries, each read, kept and upserted by the worker.
- Time is billed as it arrives (integrations/workflows/time_to_erp.py ``billing_arrived``):
  each page of time entries the poll commits rings a run that bills the whole chunks stored
  since the last one, while the poll reads the next pages; the PSA's poll being done rings
  one for the rest.
- The billing run's schedule is every 60 s (config/celery.py ``billing-run``): waiting for its
  next tick would measure the tick. As soon as every first poll's task has finished, this
  sends ``integrations.billing_run`` to the worker as beat does (the same task, the same
  ``expires``). Beat's own ticks keep running too; the runs share the entries (SKIP LOCKED),
  so whichever takes a chunk bills it.
- The runs write the invoices' outbox rows; their rings and the sweeper (beat, 5 s) dispatch
  them to Xero while later chunks are billed.

The clock runs from the first vendor call (the earliest ``SyncAttempt``) to the last answer of a
Xero ``PUT /Invoices`` of the billing run's invoices (that put's start plus its latency), both as
Concord recorded them. The phases beside it, in seconds: ``poll_reference_s`` and
``poll_time_entries_s`` (first read to last answer of the first polls' reads, the time entries
apart), ``polls_done_at_s`` (the last first poll's task finished, from the worker's log),
``billing_sent_at_s``, ``billing_starts_at_s`` and ``billing_run_s`` (first to last billing event
of time), ``dispatch_starts_at_s`` and ``dispatch_s`` (first to last answer of those puts); the
``..._at_s`` ones from the clock's start, so the waits between phases show.

Checked against the sandbox's records, loudly (``RunFailed``): every approved, billable Harvest
entry reached Concord; each in scope is on exactly one line of the sandbox's Xero invoices
(``TE-<id>``, both tenants) and none out of scope is; the sandbox's Xero detected no duplicate.
Out of scope are the seed's deliberate flaws, as the product leaves them: time on a fixed-fee
contract or with no contract, time held on an open exception case (no rate, inactive project,
...), and the time on an invoice Xero refused for its data (a customer without a VAT number under
reverse charge; parked on finance's ``vendor_validation`` case). An invoice parked for any other
reason (retries exhausted, a permanent error) fails the run at once.

Figures: ``e2e_20k_entries_s`` (scale 20), ``e2e_100k_entries_s`` (with the ratio of the two,
target at most 5.5: cost grows linearly), and ``e2e_100k_entries_faults_s``: 10% 5xx, 5% 429 and
5% lost responses on both Harvest and Xero. Each run is stopped after ``BENCH_E2E_TIMEOUT_S``
(600 s) with what it was waiting for. The machine's load average is printed with each, and
the CPU each process spent in the run (``cpu_s``: the pools, beat, the sandbox, PostgreSQL,
this process; ``cpu_s_total`` beside ``cores_s_in_run``, what the cores give in its time).

    python -m tests.benchmarks --only e2e_100k_entries_s
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from django.contrib.contenttypes.models import ContentType
from django.db import connection as db
from django.db import transaction
from django.db.models import DurationField, ExpressionWrapper, F, Max, Min, Q
from django_celery_beat.models import PeriodicTask

from config.celery import app
from exceptions.models import BlockedRecord, ExceptionCase
from integrations.management.commands.run_portal import worker_commands
from integrations.management.demo import (
    FIRST_POLLS_WAIT_S,
    demo_firm_setup,
    demo_first_polls_done,
)
from integrations.models import (
    BillingEvent,
    Contract,
    CrossReference,
    InboundMessage,
    OutboxMessage,
    PollCursor,
    SyncAttempt,
    SystemRole,
    TimeEntry,
)
from integrations.services.schedules import POLL_ROW_PREFIX
from integrations.sync.ring import ring_poll
from integrations.workflows.time_to_erp import POST_STEP, PROCESS
from tests.benchmarks.cpu import CpuMeter
from tests.benchmarks.cpu import window as cpu_window
from tests.processes import Proc, beat_proc, process_env, wait_until, worker_ready

Figure = dict[str, Any]

SEED = 42
# Both vendors, as issue 13 asks. Lost responses hit writes only (the sandbox applies the write
# and drops the answer): the invoice puts, and on Harvest the milestones' status written back.
FAULTS = {"error_rate": 0.10, "throttle_rate": 0.05, "drop_response_rate": 0.05, "seed": 13}
TARGET_S, FAULTS_TARGET_S, RATIO_TARGET = 12, 24, 5.5
# A clean 100k run took 24-40 s before issue 13's work, a faulted one 5-30 times that: 600 s
# stops a stuck run with a clear message instead of hanging `make bench`.
TIMEOUT_S = float(os.environ.get("BENCH_E2E_TIMEOUT_S", "600"))
BILLING_TASK = "integrations.billing_run"
# The case an invoice the ERP refused for its data waits on (integrations/sync/failures.py).
VENDOR_REFUSED = "vendor_validation"
# What beat sends it with (config/celery.py "billing-run").
BILLING_EXPIRES_S = 60
PAGE = 1000
POLL_TASK = "integrations.poll_connection"
# A task's success in the worker's log (celery's own line, at INFO): its time and name.
_LOG_LINE = (
    r"^\[(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d+): [^]]*\] Task {name}\[[0-9a-f-]+\] succeeded"
)


def e2e(sandbox: Any, **_: Any) -> Iterator[Figure]:
    vendor = {"sandbox": sandbox.proc}
    small = e2e_run(sandbox.url, scale=20, reset=_fresh, measure=vendor)
    yield small.figure("e2e_20k_entries_s", TARGET_S)
    big = e2e_run(sandbox.url, scale=100, reset=_fresh, measure=vendor)
    figure = big.figure("e2e_100k_entries_s", TARGET_S)
    figure["ratio_100k_to_20k"] = round(big.elapsed / small.elapsed, 2)
    figure["ratio_target"] = RATIO_TARGET
    yield figure
    faulted = e2e_run(sandbox.url, scale=100, faults=FAULTS, reset=_fresh, measure=vendor)
    yield faulted.figure("e2e_100k_entries_faults_s", FAULTS_TARGET_S)


def _fresh() -> None:
    """Empty the bench database's business tables (figures._reset_concord) and the rest a demo
    firm leaves: workflow runs, exchange rates, the connections' own beat rows."""
    from tests.benchmarks.figures import _reset_concord

    _reset_concord()
    with db.cursor() as cursor:
        cursor.execute(
            "TRUNCATE integrations_workflowstep, integrations_workflowrun, "
            "integrations_auditevent, integrations_exchangerate RESTART IDENTITY CASCADE"
        )
    PeriodicTask.objects.filter(
        Q(name__startswith=POLL_ROW_PREFIX) | Q(name__startswith="reconcile connection ")
    ).delete()


@dataclass
class E2eRun:
    """One end-to-end run: the clock, its phases, what was checked, where the logs are."""

    scale: int
    faults: dict[str, Any] | None
    elapsed: float
    phases: dict[str, float]
    entries_in_scope: int
    invoiced: int
    harvest_entries: int
    details: dict[str, Any] = field(default_factory=dict)
    logs: Path | None = None

    def figure(self, name: str, target: float) -> Figure:
        return {
            "name": name,
            "value": round(self.elapsed, 2),
            "unit": "s",
            "target": round(target, 2),
            **{key: round(value, 2) for key, value in self.phases.items()},
            "entries_in_scope": self.entries_in_scope,
            "invoiced": self.invoiced,
            "harvest_entries": self.harvest_entries,
            **self.details,
            "faults": self.faults or {},
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }


def e2e_run(
    sandbox_url: str,
    *,
    scale: int,
    faults: dict[str, Any] | None = None,
    reset: Callable[[], None] | None = None,
    timeout_s: float = TIMEOUT_S,
    env: dict[str, str] | None = None,
    during: Callable[[dict[str, Proc]], None] | None = None,
    measure: dict[str, Proc] | None = None,
) -> E2eRun:
    """Seed the sandbox at `scale`, set the firm up, run the worker and beat until every
    in-scope entry is on a Xero invoice; check it exactly once against the sandbox. `reset`
    empties Concord first (the bench; a test's database is fresh). `during` is called with the
    worker pools at each look, from the first polls to the last answer (a test kills one
    there). `measure` names more processes whose CPU the run reports (the sandbox's)."""
    if reset is not None:
        reset()
    control = SandboxControl(sandbox_url)
    control.post("reset")
    control.post("limits", {"system": "*", "enabled": False})
    control.post("seed", {"scale": scale, "seed": SEED})
    if faults:
        control.post("faults", {"harvest": faults, "xero": faults})

    logs = Path(tempfile.mkdtemp(prefix="concord-e2e-"))
    env = env or process_env(CONCORD_LOG_LEVEL="WARNING")
    # The worker pools `make run` starts (run_portal.worker_commands); the `worker` pool does
    # what this measures (polls, billing, dispatch), the `inbound` pool waits for deliveries.
    pools = {
        name: Proc(command, env, logs / f"{name}.log")
        for name, command in worker_commands(prefix="e2e-").items()
    }
    worker = pools["worker"] if "worker" in pools else next(iter(pools.values()))
    beat = beat_proc(env, logs / "beat.log", logs / "beat-schedule")
    deadline = time.monotonic() + timeout_s
    procs: list[Proc] = [*pools.values(), beat]
    for proc in procs:
        proc.start()
    try:
        # The worker up first: the set-up reads the ERPs' tax rates itself (as `make run` does
        # before the CRM's poll), and the clock starts with that read, not with a worker's boot.
        _until(lambda: worker_ready(worker.log), deadline, "the worker ready", logs)
        # No portal: Concord learns the firm by polling here, and the set-up subscribes no
        # webhook (the sandbox sends nothing).
        firm = demo_firm_setup(sandbox_url=sandbox_url, portal_url=None)
        rest = tuple(c for c in firm.connections if c not in firm.first)

        # make run's order (DemoDay): the CRM's first polls, then the PSA's and the ERP's; here
        # each rung as soon as the one before is in, not at DemoDay's 2 s checks.
        def looking(done: Callable[[], object]) -> Callable[[], object]:
            """`done`, once the `during` hook has had its look."""

            def look() -> object:
                if during is not None:
                    during(pools)
                return done()

            return look

        meter = CpuMeter({**pools, "beat": beat, **(measure or {})})
        cpu_before = meter.read()
        ring_poll(firm.first, expires=FIRST_POLLS_WAIT_S)
        _until(
            looking(lambda: _polls_done(worker.log, firm.first)),
            deadline,
            "the CRM's first polls",
            logs,
            interval=0.1,
        )
        ring_poll(rest, expires=FIRST_POLLS_WAIT_S)
        _until(
            looking(lambda: _polls_done(worker.log, firm.connections)),
            deadline,
            "every first poll in (each connection's task done, every cursor read once)",
            logs,
            interval=0.1,
        )
        billing_sent = time.time()
        task_id = app.send_task(BILLING_TASK, expires=BILLING_EXPIRES_S).id
        erp = list(firm.connections)
        _until(
            looking(lambda: _billed(worker.log, billing_sent) and _settled(erp)),
            deadline,
            "the billing run done and every invoice answered by Xero",
            logs,
        )
        cpu = cpu_window(cpu_before, meter.read())
    finally:
        for proc in reversed(procs):
            proc.stop()
    run = _measure(firm.connections, billing_sent, scale, faults, logs)
    run.details["billing_task_s"] = _billed(worker.log, billing_sent)
    run.details["billing_task_expired"] = _billing_expired(worker.log, task_id)
    # The CPU the run took, by process, from the first poll rung until the last invoice was
    # answered (client: this process, the set-up's look-ups and the checks while it waits),
    # beside what the machine's cores give in the run's time.
    run.details["cpu_s"] = cpu
    run.details["cpu_s_total"] = round(sum(cpu.values()), 2)
    run.details["cores_s_in_run"] = round((os.cpu_count() or 1) * run.elapsed, 2)
    exactly_once_check(control, run)
    return run


class SandboxControl:
    """The sandbox's control API (sandbox/README.md): reset, seed, faults, records, stats."""

    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.post(f"{self.url}/_control/{path}", json=body or {}, timeout=120)
        response.raise_for_status()
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/_control/{path}", params=params, timeout=120)
        response.raise_for_status()
        return response.json()

    def rows(self, system: str, obj: str) -> Iterator[dict[str, Any]]:
        """Every stored row of a vendor object (every tenant), page by page."""
        offset = 0
        while True:
            page = self.get(f"records/{system}/{obj}", limit=PAGE, offset=offset)["records"]
            yield from page
            if len(page) < PAGE:
                return
            offset += PAGE


class RunFailed(AssertionError):
    """The run cannot finish as it should (a billing run raised, an invoice parked, the
    timeout): raised at once, with what was seen."""


def _until(
    predicate: Callable[[], object], deadline: float, what: str, logs: Path, interval: float = 0.5
) -> None:
    try:
        wait_until(predicate, max(0.0, deadline - time.monotonic()), what, interval)
    except RunFailed:
        raise
    except AssertionError:
        outbox = Counter(OutboxMessage.objects.values_list("operation", "state"))
        waiting = Counter(
            OutboxMessage.objects.filter(state__in=["pending", "in_flight"])
            .exclude(last_error="")
            .values_list("last_error", flat=True)
        )
        raise RunFailed(
            f"e2e run timed out (BENCH_E2E_TIMEOUT_S) waiting for {what}; "
            f"cursors {_cursors()}; outbox {dict(outbox)}; why rows wait "
            f"{waiting.most_common(3)}; worker and beat logs in {logs}"
        ) from None


def _cursors() -> dict[str, str]:
    return {
        f"{c.connection_id}:{c.object_type}": "ok" if c.last_success_at else (c.last_error or "-")
        for c in PollCursor.objects.order_by("connection_id", "object_type")
    }


def _billed(log: Path, since: float) -> float | None:
    """How long the first billing run that started after `since` (epoch s) took, from the
    worker's log (results are not kept: CELERY_TASK_IGNORE_RESULT): the one sent here, or,
    should it expire in the queue as beat's ticks may (``expires``: 60 s), beat's next one.
    A billing run that raised fails the run."""
    text = log.read_text(errors="replace") if log.exists() else ""
    name = re.escape(BILLING_TASK)
    if re.search(rf"Task {name}\[[0-9a-f-]+\] raised", text):
        raise RunFailed(f"a billing run failed; see {log}")
    for stamp, took in re.findall(_LOG_LINE.format(name=name) + r" in ([0-9.]+)s", text, re.M):
        ended = _log_time(stamp).timestamp()
        if ended - float(took) >= since:
            return float(took)
    return None


def _billing_expired(log: Path, task_id: str) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return f"Discarding revoked task: {BILLING_TASK}[{task_id}]" in text


def _succeeded_at(log: Path, name: str) -> list[datetime]:
    """When the worker finished each task of this name (its log's clock: UTC, as the machine)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [
        _log_time(stamp) for stamp in re.findall(_LOG_LINE.format(name=re.escape(name)), text, re.M)
    ]


def _log_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)


def _polls_done(log: Path, connection_ids: tuple[int, ...]) -> bool:
    """Every object of these connections read once, and a polling task finished for each (a
    poll links the projects after its reads: billing waits for that). Beat's own polls come
    every 120 s, after these (the rows are new)."""
    finished = len(_succeeded_at(log, POLL_TASK)) >= len(connection_ids)
    return finished and demo_first_polls_done(connection_ids=connection_ids)


def _settled(connection_ids: list[int]) -> bool:
    """No invoice of the ERPs waits for an answer, and no in-scope entry waits for a billing
    event (beat's own billing run may still hold a chunk). An invoice parked for any reason
    but the vendor's refusal of its data (the seed's flaws: a case for finance) fails the
    run."""
    rows = OutboxMessage.objects.filter(
        connection_id__in=connection_ids, process=PROCESS, step=POST_STEP
    )
    parked = rows.filter(state=OutboxMessage.State.PARKED).exclude(
        object_id__in=_refused_invoices()
    )
    if parked.exists():
        errors = list(parked.values_list("last_error", flat=True)[:3])
        raise RunFailed(f"{parked.count()} invoices parked: {errors}")
    if rows.filter(state__in=["pending", "in_flight"]).exists():
        return False
    waiting = TimeEntry.objects.unbilled().filter(project__contract__billing_model__in=_hourly())
    # Hash joins: the tables were empty when PostgreSQL last looked (no ANALYZE runs here), and
    # its nested loops took 2.5-3.6 s of a CPU for this, at times while the last invoices were
    # still being posted (no row pending between two of them); 0.07 s so.
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute("SET LOCAL enable_nestloop = off")
        return not waiting.exclude(pk__in=_blocked_ids()).exists()


def _refused_invoices() -> Any:
    """Invoices the ERP refused for their data, held on an open case (``vendor_validation``)."""
    return BlockedRecord.objects.filter(
        record_type="invoice",
        case__case_type=VENDOR_REFUSED,
        case__status=ExceptionCase.Status.OPEN,
    ).values("record_id")


def _hourly() -> tuple[str, ...]:
    return tuple(str(model) for model in Contract.HOURLY_MODELS)


def _blocked_ids() -> Any:
    return BlockedRecord.objects.filter(
        record_type="timeentry", case__status=ExceptionCase.Status.OPEN
    ).values("record_id")


def _span(rows: Any) -> tuple[datetime, datetime] | None:
    """First start and last answer of these SyncAttempt rows."""
    found = rows.aggregate(first=Min("started_at"), last=Max(F("started_at") + _latency()))
    if found["first"] is None:
        return None
    return found["first"], found["last"]


def _latency() -> Any:
    return ExpressionWrapper(F("latency_ms") * timedelta(milliseconds=1), DurationField())


def _measure(
    connection_ids: tuple[int, ...],
    billing_sent: float,
    scale: int,
    faults: dict[str, Any] | None,
    logs: Path,
) -> E2eRun:
    sent_at = datetime.fromtimestamp(billing_sent, tz=UTC)
    attempts = SyncAttempt.objects.filter(connection_id__in=connection_ids)
    first_reads = attempts.filter(started_at__lt=sent_at, operation__startswith="read:")
    entries = first_reads.filter(operation__icontains="time_entries")
    # The time's invoices: a completed milestone's invoice (billed on its arrival) is not the
    # billing run's work.
    puts = attempts.filter(
        operation="put_invoices", messages__process=PROCESS, messages__step=POST_STEP
    ).distinct()
    start = attempts.aggregate(first=Min("started_at"))["first"]
    failed = attempts.exclude(outcome=SyncAttempt.Outcome.SUCCESS)
    reference = _span(first_reads.exclude(pk__in=entries))
    polled, posted = _span(entries), _span(puts)
    if not (start and reference and polled and posted):
        raise AssertionError(f"vendor calls missing: {reference}, {polled}, {posted}")
    events = BillingEvent.objects.filter(time_entry__isnull=False).aggregate(
        first=Min("created_at"), last=Max("created_at")
    )
    # The last page of time entries stored (kept raw, mapped and upserted: the page writer
    # writes while the next page is read).
    stored = InboundMessage.objects.filter(
        connection_id__in=connection_ids,
        object_type="time_entries",
        source=InboundMessage.Source.POLL,
        received_at__lt=sent_at,
    ).aggregate(last=Max("received_at"))["last"]
    polls_done = max(_succeeded_at(logs / "worker.log", POLL_TASK)[: len(connection_ids)])

    def s(a: datetime, b: datetime) -> float:
        return (b - a).total_seconds()

    phases = {
        "poll_reference_s": s(*reference),
        "poll_time_entries_s": s(*polled),
        "time_entries_stored_at_s": s(start, stored),
        "polls_done_at_s": s(start, polls_done),
        "billing_sent_at_s": s(start, sent_at),
        "billing_run_s": s(events["first"], events["last"]),
        "billing_starts_at_s": s(start, events["first"]),
        "dispatch_s": s(*posted),
        "dispatch_starts_at_s": s(start, posted[0]),
    }
    return E2eRun(
        scale=scale,
        faults=faults,
        elapsed=s(start, posted[1]),
        phases=phases,
        entries_in_scope=0,
        invoiced=0,
        harvest_entries=0,
        details={
            "vendor_calls": attempts.count(),
            # Refused by the vendor (5xx, 429, 4xx), and calls without an answer: a lost
            # response, a timeout, or one Concord's own limiter held back (never sent).
            "calls_refused": failed.filter(status_code__isnull=False).count(),
            "calls_unanswered": failed.filter(status_code__isnull=True).count(),
            "invoice_puts": puts.count(),
        },
        logs=logs,
    )


def exactly_once_check(control: SandboxControl, run: E2eRun) -> None:
    """Exactly once, against the sandbox's own records; fills the run's counts."""
    approved = {
        str(row["id"])
        for row in control.rows("harvest", "time_entries")
        if row["data"].get("approval_status") == "approved" and row["data"].get("billable")
    }
    run.harvest_entries = len(approved)
    psa = CrossReference.objects.filter(
        content_type=ContentType.objects.get_for_model(TimeEntry),
        connection__role=SystemRole.PSA,
        external_id__in=approved,
    )
    concord = dict(psa.values_list("object_id", "external_id"))
    missing = len(approved) - len(set(concord.values()))
    assert not missing, f"{missing} approved billable Harvest entries never reached Concord"
    blocked = set(_blocked_ids().values_list("record_id", flat=True))
    refused = set(
        BillingEvent.objects.filter(invoice_id__in=_refused_invoices()).values_list(
            "time_entry_id", flat=True
        )
    )
    hourly = set(
        TimeEntry.objects.filter(
            pk__in=list(concord), project__contract__billing_model__in=_hourly()
        ).values_list("pk", flat=True)
    )
    in_scope = hourly - blocked - refused
    lines: Counter[int] = Counter()
    for row in control.rows("xero", "Invoices"):
        for line in row["data"].get("LineItems", []):
            head = str(line.get("Description", "")).split(" ", 1)[0]
            if head.startswith("TE-") and head[3:].isdigit():
                lines[int(head[3:])] += 1
    twice = sorted(pk for pk, n in lines.items() if n > 1)
    never = sorted(in_scope - set(lines))
    extra = sorted(set(lines) - in_scope)
    duplicates = sum(
        int(obj.get("duplicates_detected", 0))
        for obj in control.get("stats", system="xero")["systems"]["xero"].values()
        if isinstance(obj, dict)
    )
    run.entries_in_scope, run.invoiced = len(in_scope), len(lines)
    run.details.update(
        blocked=len(blocked & set(concord)),
        refused_by_erp=len(refused),
        not_hourly=len(set(concord) - hourly),
    )
    assert not twice, f"{len(twice)} entries on more than one Xero line, e.g. {twice[:5]}"
    assert not never, f"{len(never)} in-scope entries on no Xero line, e.g. {never[:5]}"
    assert not extra, f"{len(extra)} out-of-scope entries on Xero lines, e.g. {extra[:5]}"
    assert duplicates == 0, f"the sandbox's Xero refused {duplicates} duplicates"
    assert run.invoiced > 0, "nothing was invoiced"
