"""Each validation rule of the billing run (workflow 2), one at a time: an approved entry that
breaks it stays unbilled and is held on a case of the rule's type, in a queue whose role can fix
it; once fixed, the next run bills the entry and the case closes by itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from exceptions.catalogue import QUEUE_ROLES, case_type_get
from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    BillingEvent,
    Contract,
    ExchangeRate,
    Project,
    RateCard,
    RoutingRule,
    TimeEntry,
)
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


@dataclass
class Firm:
    """One project whose approved entry passes every rule."""

    project: Project
    contract: Contract
    entry: TimeEntry
    route: RoutingRule
    rate: RateCard


def _firm() -> Firm:
    entity = LegalEntityFactory.create(base_currency="GBP")
    customer = CustomerFactory.create(legal_entity=entity, currency="EUR")
    contract = ContractFactory.create(customer=customer, currency="EUR")
    project = ProjectFactory.create(
        customer=customer, contract=contract, legal_entity=entity, currency="EUR"
    )
    rate = RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("120"))
    ExchangeRate.objects.create(
        base_currency="EUR", quote_currency="GBP", date=date.today(), rate=Decimal("0.86")
    )
    erp = make_connection()
    mapping_defaults_install(connection=erp)  # the invoice payload is rendered by its mapping
    route = RoutingRule.objects.create(role="erp", connection=erp)
    entry = TimeEntryFactory.create(project=project, hours=Decimal("6"))
    return Firm(project=project, contract=contract, entry=entry, route=route, rate=rate)


def _project(firm: Firm, **fields: object) -> None:
    Project.objects.filter(pk=firm.project.pk).update(**fields)


def _rate_role(firm: Firm, role: str) -> None:
    RateCard.objects.filter(pk=firm.rate.pk).update(role=role)


def _fx_pair(quote: str) -> None:
    ExchangeRate.objects.update(quote_currency=quote)


def _route(firm: Firm, enabled: bool) -> None:
    type(firm.route.connection).objects.filter(pk=firm.route.connection_id).update(enabled=enabled)


Change = Callable[[Firm], None]
RULES: list[tuple[str, str, Change, Change]] = [
    (
        "time_on_inactive_project",
        "pmo",
        lambda f: _project(f, status=Project.Status.ON_HOLD),
        lambda f: _project(f, status=Project.Status.ACTIVE),
    ),
    (
        "project_without_legal_entity",
        "pmo",
        lambda f: _project(f, legal_entity=None),
        lambda f: _project(f, legal_entity=f.contract.legal_entity),
    ),
    (
        "project_without_contract",
        "pmo",
        lambda f: _project(f, contract=None),
        lambda f: _project(f, contract=f.contract),
    ),
    (
        "missing_rate",
        "sales_ops",
        lambda f: _rate_role(f, "Architect"),
        lambda f: _rate_role(f, "Consultant"),
    ),
    (
        "missing_exchange_rate",
        "finance",
        lambda f: _fx_pair("USD"),
        lambda f: _fx_pair("GBP"),
    ),
    (
        "no_erp_route",
        "integration_admin",
        lambda f: _route(f, False),
        lambda f: _route(f, True),
    ),
]


@pytest.mark.parametrize(("case_type", "queue", "brk", "fix"), RULES, ids=[r[0] for r in RULES])
def test_a_broken_rule_holds_the_entry_on_its_case_until_fixed(
    case_type: str, queue: str, brk: Change, fix: Change
) -> None:
    firm = _firm()
    brk(firm)

    report = billing_run()

    assert (report.considered, report.billed, report.blocked) == (1, 0, 1)
    assert not BillingEvent.objects.exists()
    (case,) = ExceptionCase.objects.all()
    assert (case.case_type, case.queue, case.status) == (case_type, queue, "open")
    held = list(case.blocked_records.values_list("record_type", "record_id", "hours"))
    assert held == [("timeentry", firm.entry.pk, Decimal("6.00"))]
    # The queue's role may make the fix the case type offers.
    permission = case_type_get(case_type).fix_permission
    app_label, codename = permission.split(".")
    roles = Group.objects.filter(
        name__in=QUEUE_ROLES[queue],
        permissions__codename=codename,
        permissions__content_type__app_label=app_label,
    )
    assert roles.exists(), f"no role of the {queue} queue has {permission}"

    fix(firm)
    assert billing_run().billed == 1
    assert BillingEvent.objects.get().time_entry_id == firm.entry.pk
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED


def test_the_firm_with_every_rule_kept_bills_its_entry() -> None:
    firm = _firm()
    report = billing_run()
    assert (report.billed, report.blocked, report.invoices) == (1, 0, 1)
    assert BillingEvent.objects.get().time_entry_id == firm.entry.pk
    assert not ExceptionCase.objects.exists()


def test_fixed_fee_time_is_left_to_milestones_without_a_case() -> None:
    firm = _firm()
    Contract.objects.filter(pk=firm.contract.pk).update(
        billing_model=Contract.BillingModel.FIXED_FEE
    )
    report = billing_run()
    assert (report.billed, report.blocked, report.not_billable) == (0, 0, 1)
    # Counted, not read: a run every minute would otherwise read and lock all of a firm's
    # fixed-fee time, which stays unbilled for good.
    assert report.considered == 0
    assert not BillingEvent.objects.exists()
    assert not ExceptionCase.objects.exists()
