"""A batch of webhooks starts its workflows together (integrations/sync/steps.py `on_arrivals`,
issue 11's `webhook_to_outbox_p95_ms`): the won opportunities and completed milestones of one
inbound batch have their runs opened, their look-ups made and their rows written once for the
batch, to the same effect as one by one: a run each, each stopped where one by one stops it,
one outbox row per effect, and the runs go on to the end once their rows are delivered.

Bounds from the counts measured (50 deliveries in one batch): provisioning 26.5 queries a
delivery one by one, 0.9 together; milestones 36.8 one by one, 17.6 together."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from exceptions.models import ExceptionCase
from integrations.models import (
    BillingEvent,
    Connection,
    Customer,
    InboundMessage,
    Invoice,
    Milestone,
    OutboxMessage,
    RunState,
    StepState,
    TaxRate,
    WorkflowRun,
)
from integrations.sync.inbound import inbound_process_batch
from integrations.workflows import milestones, provisioning
from tests.firms import MilestoneFirm, ProvisioningFirm, outbox_drain
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)
from tests.integrations.sync.test_inbound_claim import _webhooks

pytestmark = pytest.mark.django_db


@pytest.fixture
def firm(sandbox: Sandbox, make_connection: Callable[..., Connection]) -> ProvisioningFirm:  # noqa: F811
    made = ProvisioningFirm(
        sandbox.url,
        make_connection("salesforce"),
        make_connection("harvest"),
        make_connection("xero"),
    )
    made.tracking_category()
    return made


@pytest.fixture
def milestone_firm(
    sandbox: Sandbox,  # noqa: F811
    make_connection: Callable[..., Connection],  # noqa: F811
) -> MilestoneFirm:
    made = MilestoneFirm(sandbox.url, make_connection("harvest"), make_connection("xero"))
    made.contract.total_value = Decimal("1000000")
    made.contract.save()
    return made


def _won(firm: ProvisioningFirm, *, tax_number: str = "GB123456789", **contract: object) -> str:
    """A new account (and its contract in Concord) with a closed-won opportunity."""
    firm.suffix = uuid.uuid4().hex[:6]
    customer = firm.account(tax_number=tax_number)
    firm.contract(customer, **contract)
    return firm.opportunity()


def _runs(process: str) -> dict[str, WorkflowRun]:
    return {
        r.input["external_id"]: r
        for r in WorkflowRun.objects.filter(process=process).order_by("pk")
    }


def test_a_batch_of_won_opportunities_opens_each_run_as_one_by_one_would(
    firm: ProvisioningFirm,
) -> None:
    good = [_won(firm) for _ in range(6)]
    # Two opportunities of one customer share its ERP customer: one row for both. (Named
    # apart: Harvest refuses a second project of one name for a client.)
    firm.suffix = uuid.uuid4().hex[:6]
    second_of_last = firm.opportunity()
    reverse = TaxRate.objects.create(
        code="ECZROUTPUTSERVICES",
        name="Reverse charge",
        country="GB",
        rate_percent=0,
        requires_customer_tax_number=True,
    )
    no_tax_number = _won(firm, tax_number="", tax_rate=reverse)
    firm.suffix = uuid.uuid4().hex[:6]
    firm.account(in_concord=False)
    unknown_account = firm.opportunity()
    ids = [*good, second_of_last, no_tax_number, unknown_account, good[0]]  # good[0] twice

    _webhooks(firm.crm, "Opportunity", ids)
    with CaptureQueriesContext(connection) as captured:
        assert inbound_process_batch(connection_id=firm.crm.pk) == {"applied": len(ids)}

    runs = _runs(provisioning.PROCESS)
    assert list(runs) == ids[:-1]  # one run an opportunity, the one delivered twice too
    waiting = [*good, second_of_last]
    for key in waiting:
        run = runs[key]
        assert (run.state, run.current_step) == (RunState.RUNNING, "erp_customer"), key
        steps = {s.name: s.state for s in run.steps.all()}
        assert steps["validate"] == StepState.DONE
        assert steps["erp_customer"] == StepState.RUNNING
        assert run.context["awaiting"]["step"] == "erp_customer"
    assert runs[second_of_last].context["customer_id"] == runs[good[-1]].context["customer_id"]
    blocked = {
        key: (runs[key].state, runs[key].current_step, case.case_type)
        for key in (no_tax_number, unknown_account)
        if (case := runs[key].exception_case) is not None
    }
    assert blocked == {
        no_tax_number: (RunState.BLOCKED, "validate", "provisioning_tax_number_missing"),
        unknown_account: (RunState.BLOCKED, "validate", "provisioning_account_unknown"),
    }
    rows = OutboxMessage.objects.filter(process=provisioning.PROCESS)
    assert sorted(rows.values_list("object_id", flat=True)) == sorted(
        {runs[key].context["customer_id"] for key in waiting}
    )
    assert set(InboundMessage.objects.values_list("state", flat=True)) == {"applied"}
    # The batch's look-ups and writes, not each run's: 26.5 queries a delivery one by one;
    # measured 60 here, most of them the batch's own (the mappings read, the two cases).
    assert len(captured.captured_queries) <= 6 * len(ids)

    firm.drain()

    for key in waiting:
        runs[key].refresh_from_db()
        assert runs[key].state == RunState.DONE, key
    projects = {runs[key].context["project_id"] for key in waiting}
    assert len(projects) == len(waiting)
    assert OutboxMessage.objects.filter(state="pending").count() == 0
    customer = Customer.objects.get(pk=runs[second_of_last].context["customer_id"])
    erp_rows = OutboxMessage.objects.filter(step="erp_customer", object_id=customer.pk)
    assert erp_rows.count() == 1


def test_a_batch_that_fails_together_goes_one_by_one(
    firm: ProvisioningFirm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker opening one of the runs meanwhile (the unique subject refuses the batch's
    insert): the batch's transaction is undone and each opportunity goes one by one, finding
    the run that is there. Nothing is lost, nothing is sent twice."""
    ids = [_won(firm) for _ in range(3)]
    _webhooks(firm.crm, "Opportunity", ids)

    def refused(**_: object) -> None:
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(provisioning, "runs_open", refused)
    with caplog.at_level(logging.ERROR):
        assert inbound_process_batch(connection_id=firm.crm.pk) == {"applied": 3}

    assert "handing them over one by one" in caplog.text
    runs = _runs(provisioning.PROCESS)
    assert list(runs) == ids
    assert {(r.state, r.current_step) for r in runs.values()} == {
        (RunState.RUNNING, "erp_customer")
    }
    assert OutboxMessage.objects.filter(process=provisioning.PROCESS).count() == 3


def test_a_batch_of_completed_milestones_bills_each_once(milestone_firm: MilestoneFirm) -> None:
    firm = milestone_firm
    # The later milestone comes first in the batch: the earlier one it depends on is complete
    # in Concord by the time the runs start, so neither waits.
    kickoff = firm.milestone("Kick-off", "5000", "2026-10-15", status="complete")
    stages = [
        firm.milestone(f"Stage {n}", "1000", f"2026-11-{n + 1:02d}", status="complete")
        for n in range(6)
    ]
    ids = [*stages, kickoff, stages[0]]  # stages[0] delivered twice: stale the second time
    _webhooks(firm.psa, "x_milestones", ids)

    with CaptureQueriesContext(connection) as captured:
        outcomes = inbound_process_batch(connection_id=firm.psa.pk)
    assert outcomes == {"applied": len(ids) - 1, "stale": 1}

    runs = _runs(milestones.PROCESS)
    assert sorted(runs) == sorted(ids[:-1])
    assert {(r.state, r.current_step) for r in runs.values()} == {(RunState.RUNNING, "bill")}
    assert Invoice.objects.count() == BillingEvent.objects.count() == len(runs)
    assert OutboxMessage.objects.filter(process=milestones.PROCESS).count() == len(runs)
    for run in runs.values():
        assert run.subject_type is not None
        assert (run.subject_type.model, run.subject_id) == ("milestone", run.input["milestone_id"])
        assert run.legal_entity_id == firm.entity.pk
    assert not ExceptionCase.objects.filter(status="open").exists()
    # 36.8 queries a delivery one by one (the Harvest read's own record included).
    assert len(captured.captured_queries) <= 22 * len(ids)

    outbox_drain()

    assert {r.state for r in WorkflowRun.objects.filter(process=milestones.PROCESS)} == {
        RunState.DONE
    }
    assert set(Milestone.objects.values_list("status", flat=True)) == {"invoiced"}
