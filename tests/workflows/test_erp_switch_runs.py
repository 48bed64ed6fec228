"""Runs past their choice of ERP when their legal entity is switched to another ERP
(integrations/services/route_switches.py): a milestone run's invoice finishes in the ERP it
started in and its bill step says so; the status back-sync of an invoice posted in the old ERP
still comes from there and says so. Against the vendor sandbox (tests/integrations/
conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, Invoice, OutboxMessage, RunState, WorkflowRun
from integrations.services.route_switches import (
    RUN_PIN,
    route_switch_create,
    route_switch_in_flight,
)
from integrations.sync.polling import poll_connection
from integrations.workflows.back_sync import PROCESS as BACK_SYNC
from integrations.workflows.back_sync import back_sync_sweep
from integrations.workflows.milestones import PROCESS
from integrations.workflows.time_to_erp import billing_run
from tests.firms import MilestoneFirm, outbox_drain
from tests.firms_back_sync import BillingFirm
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    NEW_TENANT,
    XERO_SECRET,
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db

LEGACY_TENANT = "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"


class Firm(MilestoneFirm):
    box: Sandbox


@pytest.fixture
def firm(sandbox: Sandbox, make_connection: Callable[..., Connection]) -> Firm:  # noqa: F811
    made = Firm(sandbox.url, make_connection("harvest"), make_connection("xero"))
    made.box = sandbox
    return made


def _other_erp(make: Callable[..., Connection], url: str) -> Connection:
    """The legacy Xero tenant connected beside the new one, its default mappings published."""
    made = make(
        "xero",
        credentials={
            "client_id": "concord-xero",
            "client_secret": XERO_SECRET,
            "token_url": f"{url}/xero/connect/token",
            "tenant_id": LEGACY_TENANT,
        },
    )
    mapping_defaults_install(connection=made)
    return made


def _xero_invoices(firm: Firm, tenant: str) -> list[dict[str, Any]]:
    return [r["data"] for r in firm.box.records("xero", "Invoices", tenant)]


def test_a_run_past_its_route_decision_finishes_in_its_erp_and_says_so(
    firm: Firm,
    make_connection: Callable[..., Connection],  # noqa: F811
) -> None:
    harvest_id = firm.milestone("Design signed off", "12500", "2026-11-30")
    firm.deliver(harvest_id)
    firm.complete(harvest_id)
    firm.deliver(harvest_id)
    (run,) = WorkflowRun.objects.filter(process=PROCESS)
    assert run.current_step == "bill"
    assert run.context[RUN_PIN] == firm.erp.pk
    invoice = Invoice.objects.get()
    assert invoice.erp_connection == firm.erp

    other = _other_erp(make_connection, firm.url)
    switch = route_switch_create(legal_entity=firm.entity, to_connection=other, actor=None)
    (sides,) = route_switch_in_flight([switch]).values()
    assert (sides["old"].invoices, sides["old"].runs, sides["new"].total) == (1, 1, 0)
    outbox_drain()

    (sides,) = route_switch_in_flight([switch]).values()
    assert (sides["old"].total, sides["new"].total) == (0, 0)
    run.refresh_from_db()
    assert run.state == RunState.DONE
    assert set(OutboxMessage.objects.filter(step="bill").values_list("connection", flat=True)) == {
        firm.erp.pk
    }
    assert len(_xero_invoices(firm, NEW_TENANT)) == 1
    assert _xero_invoices(firm, LEGACY_TENANT) == []
    detail = run.steps.get(name="bill").detail
    assert f"Continued on Xero ({firm.erp.name}), where it started" in detail
    assert f"legal entity UK01 moved to Xero ({other.name})" in detail


def test_a_run_that_starts_after_the_switch_bills_in_the_new_erp(
    firm: Firm,
    make_connection: Callable[..., Connection],  # noqa: F811
) -> None:
    other = _other_erp(make_connection, firm.url)
    route_switch_create(legal_entity=firm.entity, to_connection=other, actor=None)
    harvest_id = firm.milestone("Design signed off", "12500", "2026-11-30")
    firm.deliver(harvest_id)
    firm.complete(harvest_id)
    firm.deliver(harvest_id)
    (run,) = WorkflowRun.objects.filter(process=PROCESS)
    assert run.context[RUN_PIN] == other.pk
    (row,) = OutboxMessage.objects.filter(step="bill")
    assert row.connection == other
    assert "Continued on" not in run.steps.get(name="bill").detail


def test_the_back_sync_of_an_invoice_posted_in_the_old_erp_says_it_continued_from_there(
    sandbox: Sandbox,  # noqa: F811
    make_connection: Callable[..., Connection],  # noqa: F811
) -> None:
    firm = BillingFirm(
        sandbox.url,
        make_connection("salesforce"),
        make_connection("harvest"),
        make_connection("xero"),
    )
    firm.setup(entries=3)
    billing_run()
    firm.drain()
    invoice = Invoice.objects.get()
    assert invoice.erp_connection == firm.erp
    other = _other_erp(make_connection, sandbox.url)
    route_switch_create(legal_entity=invoice.legal_entity, to_connection=other, actor=None)

    firm.authorise(firm.erp_id(invoice))
    started = timezone.now()
    poll_connection(connection_id=firm.erp.pk)
    back_sync_sweep(connection_id=firm.erp.pk, since=started)
    firm.drain()

    run = WorkflowRun.objects.get(process=BACK_SYNC)
    assert run.state == RunState.DONE, list(run.steps.values_list("name", "state", "detail"))
    detail = run.steps.get(name="psa_invoice").detail
    assert f"Continued from Xero ({firm.erp.name}), where the invoice was posted" in detail
    assert f"moved to Xero ({other.name}) since" in detail
