"""A milestone invoiced once, even when its completion is delivered twice, with real parts only:
the vendor sandbox as a process, the web process (gunicorn) receiving Harvest's signed change
feed, Celery worker and beat processes, PostgreSQL and Redis. PMO completes the milestone in
Harvest and saves it again a second later, while Xero is slow to answer the first invoice (the
sandbox adds three seconds to each of its calls): both completions reach the workflow, and the
end is one draft invoice in Xero with the milestone's amount, the milestone invoiced in Harvest
and in Concord, and one billing event."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from integrations.models import (
    BillingEvent,
    InboundMessage,
    Invoice,
    Milestone,
    OutboxMessage,
    WorkflowRun,
)
from integrations.workflows.milestones import PROCESS
from tests.e2e.conftest import Concord
from tests.firms import NEW_TENANT, MilestoneFirm, sandbox_connection, sandbox_records
from tests.processes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "e2e-milestones-secret"


def _control(url: str, path: str, body: dict) -> None:
    response = httpx.post(f"{url}/_control/{path}", json=body, timeout=10)
    assert response.status_code < 300, response.text


def _applied(milestone_id: str) -> list[InboundMessage]:
    """The milestone's deliveries that reached the workflows (applied), in order."""
    return list(
        InboundMessage.objects.filter(
            object_type="x_milestones", external_id=milestone_id, state="applied"
        ).order_by("processed_at")
    )


def _read(milestone_id: str) -> int:
    """The milestone's deliveries processed (applied, or an announced version already held)."""
    return (
        InboundMessage.objects.filter(object_type="x_milestones", external_id=milestone_id)
        .exclude(state="received")
        .count()
    )


def test_a_milestone_is_invoiced_once_even_when_its_completion_is_delivered_twice(
    sandbox: str, concord: Callable[..., Concord]
) -> None:
    firm = MilestoneFirm(
        sandbox,
        sandbox_connection(sandbox, "psa", webhook_secret=SECRET),
        sandbox_connection(sandbox, "erp"),
    )

    with concord().running() as processes:
        processes.subscribe(sandbox, system="harvest", connection=firm.psa, secret=SECRET)
        # The milestone is planned in Harvest; the change feed brings it to Concord.
        harvest_id = firm.milestone("Design signed off", "12500", "2026-11-30")
        wait_until(Milestone.objects.exists, timeout=30, what="the planned milestone read")
        # Xero answers slowly from now on, so the second completion lands mid-flight.
        _control(sandbox, "faults", {"system": "xero", "latency_ms": 3000})
        firm.complete(harvest_id)
        firm.complete(harvest_id, notes="Signed off by the client")  # saved again

        processes.wait_for_run(PROCESS, "the milestone billing run")
        # The write-back announces itself in the feed too: let that delivery land.
        try:
            wait_until(
                lambda: _read(harvest_id) >= 4,
                timeout=30,
                what="the invoiced milestone announced back by Harvest",
            )
        except AssertionError:
            pytest.fail(f"not announced back: {_applied(harvest_id)}\n{processes.logs()}")

    (run,) = WorkflowRun.objects.filter(process=PROCESS)
    bill = run.steps.get(name="bill")
    assert bill.finished_at is not None
    finished = bill.finished_at
    # The completion reached the workflow twice while the invoice was on its way to Xero.
    applied = _applied(harvest_id)
    arrived = [m for m in applied if m.processed_at and m.processed_at < finished]
    # Read while planned, completed, completed again: the last two before Xero had answered.
    assert len(arrived) >= 3, [(m.pk, m.processed_at, finished) for m in applied]

    # Exactly one Xero invoice, with the milestone's amount (and VAT at 20%).
    stored = sandbox_records(sandbox, "xero", "Invoices", NEW_TENANT)
    assert len(stored) == 1
    (xero,) = [r["data"] for r in stored]
    assert (xero["SubTotal"], xero["Total"]) == (12500.0, 15000.0)
    assert [line["LineAmount"] for line in xero["LineItems"]] == [12500.0]
    stats = httpx.get(f"{sandbox}/_control/stats", params={"system": "xero"}, timeout=10).json()
    invoices = stats["systems"]["xero"]["Invoices"]
    assert (invoices["created"], invoices.get("duplicates_detected", 0)) == (1, 0)
    assert OutboxMessage.objects.filter(operation="put_invoices").count() == 1

    # Concord: one billing event, invoiced on the one invoice; the milestone invoiced.
    event = BillingEvent.objects.get()
    invoice = Invoice.objects.get()
    assert (event.amount, event.status, event.invoice) == (Decimal("12500.00"), "invoiced", invoice)
    assert invoice.number == xero["InvoiceNumber"]
    assert Milestone.objects.get().status == Milestone.Status.INVOICED
    # Harvest: the milestone is invoiced there.
    assert firm.in_harvest(harvest_id)["status"] == "invoiced"
