"""Finance's "unbilled approved time" says what it counts: hourly time the billing run will take
and fixed-fee time that milestones bill, each labelled, by the billing run's own rule."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum
from django.test import Client

from dashboards.selectors import unbilled_approved_time
from integrations.mapping.services import mapping_defaults_install
from integrations.models import BillingBasis, BillingEvent, Contract, RateCard, RoutingRule
from integrations.roles import FINANCE
from integrations.workflows.time_to_erp import billing_run
from tests.factories import (
    ContractFactory,
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    TimeEntryFactory,
    UserFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db


def _firm() -> None:
    """One customer, a time-and-materials project (3 x 7.5 h approved) and a fixed-fee one
    (2 x 4 h approved), plus time not approved yet and time marked non-billable."""
    entity = LegalEntityFactory.create(base_currency="EUR")
    customer = CustomerFactory.create(legal_entity=entity, currency="EUR")
    RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("120"))
    erp = make_connection()
    mapping_defaults_install(connection=erp)
    RoutingRule.objects.create(role="erp", connection=erp)
    for model, hours, count in (
        (Contract.BillingModel.TIME_AND_MATERIALS, Decimal("7.5"), 3),
        (Contract.BillingModel.FIXED_FEE, Decimal("4"), 2),
    ):
        contract = ContractFactory.create(customer=customer, currency="EUR", billing_model=model)
        project = ProjectFactory.create(
            customer=customer, contract=contract, legal_entity=entity, currency="EUR"
        )
        for _ in range(count):
            TimeEntryFactory.create(project=project, hours=hours)
        TimeEntryFactory.create(project=project, hours=Decimal("1"), approval_state="submitted")
        TimeEntryFactory.create(project=project, hours=Decimal("1"), billable=False)


def _hours() -> dict[str, Decimal]:
    return {row["basis"]: row["hours"] for row in unbilled_approved_time()}


def test_the_page_and_the_billing_run_count_the_same_hourly_time() -> None:
    _firm()
    before = _hours()
    assert before == {
        BillingBasis.HOURLY: Decimal("22.50"),
        BillingBasis.MILESTONE: Decimal("8.00"),
        BillingBasis.NO_CONTRACT: Decimal("0"),
    }

    report = billing_run()

    # The run took exactly the hourly time the page showed, and skipped the fixed-fee time.
    billed = BillingEvent.objects.aggregate(hours=Sum("quantity"))["hours"]
    assert billed == before[BillingBasis.HOURLY]
    assert (report.billed, report.not_billable, report.blocked) == (3, 2, 0)
    assert _hours() == {
        BillingBasis.HOURLY: Decimal("0"),
        BillingBasis.MILESTONE: Decimal("8.00"),
        BillingBasis.NO_CONTRACT: Decimal("0"),
    }


def test_the_finance_page_labels_each_figure() -> None:
    _firm()
    client = Client()
    client.force_login(UserFactory.create(role=FINANCE))
    page = client.get("/finance/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "<strong>30.50</strong> approved billable hours no billing run has taken yet" in text
    assert (
        '<li id="unbilled-hourly"><strong>22.50</strong> hours (3 entries): '
        "Hourly: the billing run invoices it</li>"
    ) in text
    assert (
        '<li id="unbilled-milestone"><strong>8.00</strong> hours (2 entries): '
        "Fixed fee: billed by milestone, not by the hour</li>"
    ) in text
    assert 'id="unbilled-no_contract"' not in text  # none: not shown
