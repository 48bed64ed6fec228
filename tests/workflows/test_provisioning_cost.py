"""What a provisioning run costs Concord's database, against the real sandbox: the steps of
one advance look up the run's connections, project and cross-references once, a row that was
never parked is not searched for replays, and the echo of the run's own write-back locks the
run once. Bounds from the counts measured (issue 11's `provision_runs_per_min`: a run advances
once per delivery, so what a step looks up is paid several times a run)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.models import Connection, RunState, StepState, WorkflowRun
from integrations.roles import INTEGRATION_ADMIN
from integrations.workflows.provisioning import PROCESS, PROVISIONING
from integrations.workflows.runs import run_retry
from tests.factories import UserFactory
from tests.firms import ProvisioningFirm
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)
from tests.workflows.test_provisioning import STEPS

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


def _workflow_queries(queries: list[dict[str, str]]) -> int:
    """The queries on the workflow's own tables and the lookups it makes (runs, steps,
    projects, cross-references, connections), not the outbox's or the vendor calls' records."""
    tables = (
        '"integrations_workflowrun"',
        '"integrations_workflowstep"',
        '"integrations_project"',
        '"integrations_crossreference"',
        '"integrations_connection"',
    )
    return sum(1 for q in queries if any(t in q["sql"].split(" WHERE ")[0] for t in tables))


def test_a_run_from_delivery_to_done_looks_each_thing_up_once_an_advance(
    firm: ProvisioningFirm,
) -> None:
    customer = firm.account()
    firm.contract(customer)
    opportunity = firm.opportunity()
    firm.deliver(opportunity)

    with CaptureQueriesContext(connection) as captured:
        firm.drain()

    run = WorkflowRun.objects.get(process=PROCESS)
    assert run.state == RunState.DONE
    # Measured: 148 such queries before the steps of an advance shared their look-ups, 114 after.
    assert _workflow_queries(captured.captured_queries) <= 120
    replays = [q for q in captured.captured_queries if '"replay_of_id" =' in q["sql"]]
    assert replays == []


def test_the_echo_of_the_write_back_locks_the_run_once(firm: ProvisioningFirm) -> None:
    customer = firm.account()
    firm.contract(customer)
    opportunity = firm.opportunity()
    firm.deliver(opportunity)
    firm.drain()
    assert WorkflowRun.objects.get(process=PROCESS).state == RunState.DONE

    # Salesforce now holds the PSA project's id on the opportunity: its next sending is the
    # echo of Concord's own write-back, which finds the finished run and does nothing more.
    with CaptureQueriesContext(connection) as captured:
        firm.deliver(opportunity)
    locks = [
        q
        for q in captured.captured_queries
        if '"integrations_workflowrun"' in q["sql"] and "FOR UPDATE" in q["sql"]
    ]
    assert len(locks) == 1
    assert WorkflowRun.objects.filter(process=PROCESS).count() == 1


def test_a_persons_retry_gives_an_older_run_the_steps_it_lacks(firm: ProvisioningFirm) -> None:
    """A run opened before the PSA's tasks and milestones were steps, retried from its page
    (runs.run_retry, not provisioning's own resume): it is given them in their places."""
    customer = firm.account()
    firm.contract(customer)
    firm.deliver(firm.opportunity())
    run = WorkflowRun.objects.get(process=PROCESS)
    assert run.current_step == "erp_customer"
    run.steps.filter(name__in=["psa_tasks", "psa_milestones"]).delete()

    firm.drain()  # the ERP customer's delivery moves it on, given its steps first
    run.refresh_from_db()
    assert run.state == RunState.DONE
    run.steps.filter(name="psa_team").delete()
    WorkflowRun.objects.filter(pk=run.pk).update(state=RunState.BLOCKED, current_step="psa_team")

    retried = run_retry(
        run_id=run.pk, process=PROVISIONING, actor=UserFactory.create(role=INTEGRATION_ADMIN)
    )

    assert retried is not None
    steps = list(run.steps.order_by("position"))
    assert [s.name for s in steps] == STEPS
    assert [s.position for s in steps] == list(range(len(STEPS)))
    assert {s.name: s.state for s in steps}["psa_team"] == StepState.SKIPPED
    assert retried.state == RunState.DONE
