"""The callers decide the case type and subject; the one path does the rest (billing run)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exceptions.models import ExceptionCase
from integrations.models import RateCard, RoutingRule
from integrations.workflows.time_to_erp import billing_run
from tests.factories import (
    ContractFactory,
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    TimeEntryFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db


def test_a_project_without_legal_entity_blocks_its_time_in_pmos_queue_until_billed() -> None:
    entity = LegalEntityFactory.create(base_currency="EUR")
    customer = CustomerFactory.create(legal_entity=entity)
    contract = ContractFactory.create(customer=customer)
    project = ProjectFactory.create(
        code="P-42", name="Apollo", customer=customer, contract=contract, legal_entity=None
    )
    RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("100"))
    RoutingRule.objects.create(role="erp", connection=make_connection())
    for _ in range(2):
        TimeEntryFactory.create(project=project, hours=Decimal("7.5"))

    report = billing_run()
    assert (report.blocked, report.billed) == (2, 0)
    (case,) = ExceptionCase.objects.all()
    assert case.case_type == "project_without_legal_entity"
    assert case.queue == "pmo"
    assert case.message == (
        "2 approved time entries (EUR 1,500.00, 15.00 hours) on project P-42 Apollo cannot be "
        "invoiced: the project has no legal entity to invoice from."
    )
    # The next run finds the same root cause: the same case, nothing counted twice.
    billing_run()
    case.refresh_from_db()
    assert (ExceptionCase.objects.count(), case.record_count, case.occurrences) == (1, 2, 4)

    # PMO gives the project its legal entity; the next run bills the time and the case closes.
    project.legal_entity = entity
    project.save()
    assert billing_run().billed == 2
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    assert (
        case.resolution_note == "Closed automatically: every entry it held has since been billed."
    )
    assert case.record_count == 0
    assert not case.blocked_records.exists()
