"""`make run`'s demo firm on PostgreSQL and Redis: the portal started the way `make run` starts it
(`manage.py run_portal`: the sandbox, web, worker and beat as processes), nothing done by the
test until it looks. Within a few minutes:

- the firm's business records are in Concord only by sync: every customer, project and time
  entry carries a cross-reference to the sandbox system it came from, and Concord holds every
  time entry the sandbox's Harvest holds;
- approved time and a completed milestone were invoiced, and those invoices are in the
  sandbox's Xero under the ids Concord recorded;
- the deals that close after start-up (the seed's ``later``) were provisioned, one is held on
  sales ops' case, and the board shows them;
- the finance, PMO and sales ops queues each hold at least one open case; finance's include
  the reverse-charge customer without a tax number (the contract's tax profile is mapped);
- invoices finance approved in Xero and their customers paid come back: Xero's webhooks (one
  subscription per organisation) and polls bring them in, and status back-sync shows them in
  the PSA (the invoice and its payment) and the CRM (the contract's billing status).

The rows the migrations seed (ownership and match rules) are the demo configuration's to
ensure: this test runs on whatever an earlier transactional test left (flushed tables), with no
serialized rollback. Screenshots of the board and of the queues go to
var/screenshots/test_make_run_demo_firm/."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from playwright.sync_api import Page, expect

from exceptions.models import ExceptionCase, Queue
from integrations.models import (
    BillingEvent,
    CrossReference,
    Customer,
    InboundMessage,
    Invoice,
    Payment,
    Project,
    RunState,
    SystemRole,
    TimeEntry,
    WorkflowRun,
)
from integrations.workflows import back_sync, milestones, provisioning
from tests.processes import ROOT, free_port, process_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Shots = Callable[[Page, str], Path]
# `make run`'s promise (README): the portal healthy in 90 s, the demo firm in a few minutes.
BANNER_TIMEOUT_S = 120
FIRM_TIMEOUT_S = 300
# Payments come back by the ERP's poll (every two minutes by beat) after the invoice is paid.
PAID_TIMEOUT_S = 240
OPEN = ExceptionCase.Status.OPEN


class Portal:
    def __init__(self, process: subprocess.Popen[bytes], out: Path, sandbox: str) -> None:
        self.process, self.out, self.sandbox = process, out, sandbox

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def password(self, username: str) -> str:
        found = re.search(rf"^\s+{username}\s+(\S+)$", self.text(), re.M)
        assert found, self.text()
        return found.group(1)

    def records(self, system: str, obj: str) -> list[dict[str, Any]]:
        body = httpx.get(
            f"{self.sandbox}/_control/records/{system}/{obj}",
            params={"limit": 100_000},
            timeout=10,
        ).json()
        return list(body["records"])


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[tuple[Portal, str]]:
    port, sandbox_port = free_port(), free_port()
    env = process_env(
        CONCORD_VAR_DIR=str(tmp_path / "var"),
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_SECURE_COOKIES="0",
        DJANGO_HSTS_SECONDS="0",
        PYTHONUNBUFFERED="1",
    )
    out_path = tmp_path / "run.out"
    out: IO[bytes] = open(out_path, "w+b")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_portal",
            "--port",
            str(port),
            "--sandbox-port",
            str(sandbox_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    running = Portal(process, out_path, f"http://127.0.0.1:{sandbox_port}")
    try:
        started = time.monotonic()
        while "Press Ctrl-C" not in running.text():
            assert process.poll() is None, running.text()
            assert time.monotonic() - started < BANNER_TIMEOUT_S, running.text()
            time.sleep(0.5)
        yield running, f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        out.close()


def _without_xref(model: type[Model]) -> int:
    """How many rows of `model` no cross-reference names (records Concord made up itself)."""
    linked = CrossReference.objects.filter(
        content_type=ContentType.objects.get_for_model(model)
    ).values("object_id")
    return model._default_manager.exclude(pk__in=linked).count()


def _posted_invoices() -> dict[int, str]:
    """Concord's invoices (those with billing events) with their id in an ERP."""
    ours = BillingEvent.objects.filter(invoice__isnull=False).values("invoice_id")
    return dict(
        CrossReference.objects.filter(
            content_type=ContentType.objects.get_for_model(Invoice),
            connection__role=SystemRole.ERP,
            object_id__in=ours,
        ).values_list("object_id", "external_id")
    )


def _open_queues() -> set[str]:
    return set(ExceptionCase.objects.filter(status=OPEN).values_list("queue", flat=True))


def _firm_is_in() -> bool:
    runs = WorkflowRun.objects.filter(process=provisioning.PROCESS)
    return (
        runs.filter(state=RunState.DONE).count() >= 3
        and runs.filter(state=RunState.BLOCKED).exists()
        and WorkflowRun.objects.filter(process=milestones.PROCESS, state=RunState.DONE).exists()
        and len(_posted_invoices()) >= 5
        and {Queue.FINANCE, Queue.PMO, Queue.SALES_OPS} <= _open_queues()
    )


def _paid_everywhere(running: Portal) -> bool:
    """A payment Concord read from the ERP, recorded on the PSA's copy of its invoice, and a
    contract's billing status in the CRM saying it is paid (in full or in part)."""
    if not Payment.objects.exists():
        return False
    if not WorkflowRun.objects.filter(process=back_sync.PROCESS, state=RunState.DONE).exists():
        return False
    contracts = running.records("salesforce", "Contract")
    statuses = {c["data"].get("Billing_Status__c") for c in contracts}
    paid = bool(statuses & {"Paid", "Partly Paid"})
    return paid and bool(running.records("harvest", "invoice_payments"))


def _sign_in(page: Page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")


def test_make_run_brings_the_sandbox_firm_in_by_sync(
    portal: tuple[Portal, str], page: Page, shots: Shots
) -> None:
    running, base = portal
    try:
        wait_until(_firm_is_in, timeout=FIRM_TIMEOUT_S, what="the demo firm in Concord", interval=2)
    except AssertionError:
        runs = list(WorkflowRun.objects.values_list("process", "state", "label"))
        pytest.fail(
            f"runs {runs}; invoices posted {len(_posted_invoices())}; queues {_open_queues()}\n"
            f"{running.text()[-3000:]}"
        )

    # Every business record came by sync: each names the system it came from.
    for model in (Customer, Project, TimeEntry):
        assert model.objects.exists(), model
        assert _without_xref(model) == 0, model
    assert TimeEntry.objects.count() == len(running.records("harvest", "time_entries"))
    # The customers are the CRM's accounts the PSA and the ERP joined, not one per system.
    accounts = running.records("salesforce", "Account")
    assert Customer.objects.count() <= len(accounts)
    # Concord's invoices are in the sandbox's Xero under the ids Concord recorded.
    in_xero = {r["id"] for r in running.records("xero", "Invoices")}
    posted = _posted_invoices()
    assert set(posted.values()) <= in_xero
    # Most approved time is on an invoice; the rest waits on a case.
    approved = TimeEntry.objects.filter(approval_state="approved")
    billed = approved.filter(billing_event__invoice__isnull=False).count()
    assert billed > approved.count() / 2, (billed, approved.count())
    # The reverse-charge customer without a tax number: the contract's tax profile is read from
    # the CRM, and finance is asked for the number.
    assert ExceptionCase.objects.filter(
        status=OPEN, queue=Queue.FINANCE, message__contains="tax number"
    ).exists(), list(ExceptionCase.objects.filter(status=OPEN).values_list("queue", "message"))
    # The deal whose contract is still a draft waits on sales ops.
    held = WorkflowRun.objects.get(process=provisioning.PROCESS, state=RunState.BLOCKED)
    assert "Tidewater" in held.label
    assert ExceptionCase.objects.filter(
        status=OPEN, queue=Queue.SALES_OPS, case_type="provisioning_billing_terms_missing"
    ).exists()

    # Finance approved invoices in Xero and customers paid: back in Concord, and on to the PSA
    # and the CRM by status back-sync. Xero's webhooks reach each ERP connection for its own
    # organisation only.
    try:
        wait_until(
            lambda: _paid_everywhere(running),
            timeout=PAID_TIMEOUT_S,
            what="a payment in Concord, the PSA and the CRM",
            interval=2,
        )
    except AssertionError:
        back = list(
            WorkflowRun.objects.filter(process=back_sync.PROCESS).values_list("state", "label")
        )
        pytest.fail(f"back-sync runs {back}\n{running.text()[-3000:]}")
    assert "customer pays" in running.text()
    from_xero = InboundMessage.objects.filter(
        source=InboundMessage.Source.WEBHOOK, connection__role=SystemRole.ERP
    )
    assert from_xero.filter(object_type="Invoices").exists()
    failed = from_xero.filter(state=InboundMessage.State.FAILED)
    assert not failed.exists(), list(failed.values_list("object_type", "external_id", "error"))

    # The board, as PMO sees it: the deals provisioned since start-up, and the one held.
    _sign_in(page, base, "pmo", running.password("pmo"))
    page.goto(f"{base}/provisioning/")
    results = page.get_by_role("region", name="Provisioning runs")
    expect(results).to_contain_text("Quartz Dynamics")
    expect(results).to_contain_text("Tidewater Shipping")
    shots(page, "board")
    # PMO's queue: the projects that cannot be billed.
    page.goto(f"{base}/cases/")
    expect(page.locator("#queue-results")).to_contain_text("no contract")
    shots(page, "pmo-queue")
    # Finance's queue.
    page.context.clear_cookies()
    _sign_in(page, base, "finance", running.password("finance"))
    page.goto(f"{base}/cases/")
    expect(page.locator("#queue-results")).to_contain_text("CHF")
    shots(page, "finance-queue")
