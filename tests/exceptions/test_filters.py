"""The queue list's filters, its search over the business ids a person has in hand, the totals
per currency at the top, the queues and the SLA view."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from exceptions import actions, selectors
from exceptions.errors import CaseRefused
from exceptions.models import ExceptionCase
from exceptions.services import Blocked
from integrations.mapping.services import mapping_defaults_install
from integrations.models import CrossReference, InboundMessage, Invoice
from tests.exceptions.cases import (
    admin_user,
    entries,
    finance_case,
    finance_user,
    pmo_case,
)
from tests.factories import (
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    TimeEntryFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db


def _ids(user: Any, **filters: Any) -> set[int]:
    return {c.pk for c in selectors.case_list(user=user, filters=filters, limit=200).cases}


def _due_in(case: ExceptionCase, delta: timedelta) -> ExceptionCase:
    ExceptionCase.objects.filter(pk=case.pk).update(sla_due_at=timezone.now() + delta)
    return case


def test_filters_by_queue_type_status_assignee_amount_and_place() -> None:
    admin, ada = admin_user(), finance_user()
    entity = LegalEntityFactory.create()
    project = ProjectFactory.create(legal_entity=entity, region="apac")
    small = finance_case(records=entries(1, amount="50"))
    big = finance_case(records=entries(2, amount="600"))
    on_project = pmo_case(project.pk)
    closed = finance_case()
    actions.case_waive(actor=ada, case_id=closed.pk, revision=0, reason="Not ours.")
    actions.case_take(actor=ada, case_id=big.pk, revision=0)

    assert _ids(admin) == {small.pk, big.pk, on_project.pk}  # open ones by default
    assert _ids(admin, queue=["pmo"]) == {on_project.pk}
    assert _ids(admin, queue=["pmo", "finance"]) == {small.pk, big.pk, on_project.pk}
    assert _ids(admin, case_type=["vendor_validation"]) == {small.pk, big.pk}
    assert _ids(admin, status="waived") == {closed.pk}
    assert _ids(admin, process="time_to_erp", amount_min="150") == {big.pk}
    assert _ids(admin, amount_max="100") == {small.pk, on_project.pk}
    assert _ids(ada, assignee="me") == {big.pk}
    assert _ids(admin, assignee="none") == {small.pk, on_project.pk}
    assert _ids(admin, assignee=str(ada.pk)) == {big.pk}
    assert _ids(admin, legal_entity=str(entity.pk)) == {on_project.pk}
    assert _ids(admin, region="apac") == {on_project.pk}
    with pytest.raises(CaseRefused, match="sla"):
        _ids(admin, sla="sometime")


def test_filters_by_sla_state() -> None:
    admin = admin_user()
    late = _due_in(finance_case(), -timedelta(minutes=5))
    soon = _due_in(finance_case(), timedelta(hours=2))  # P2: due soon within 4 h
    fine = _due_in(finance_case(), timedelta(hours=20))
    assert _ids(admin, sla="breached") == {late.pk}
    assert _ids(admin, sla="due_soon") == {soon.pk}
    assert _ids(admin, sla="ok") == {fine.pk}


def test_my_work_is_my_open_cases() -> None:
    ada, bob = finance_user(), finance_user()
    mine, theirs, done = finance_case(), finance_case(), finance_case()
    actions.case_take(actor=ada, case_id=mine.pk, revision=0)
    actions.case_take(actor=bob, case_id=theirs.pk, revision=0)
    actions.case_take(actor=ada, case_id=done.pk, revision=0)
    actions.case_resolve_by_hand(actor=ada, case_id=done.pk, revision=1)
    assert [c.pk for c in selectors.case_my_work(user=ada).cases] == [mine.pk]


def test_search_finds_cases_by_the_ids_a_person_has_in_hand() -> None:
    admin = admin_user()
    entity = LegalEntityFactory.create()
    acme = CustomerFactory.create(name="Acme Widgets GmbH", legal_entity=entity)
    project = ProjectFactory.create(code="P-APOLLO", customer=acme)
    entry = TimeEntryFactory.create(project=project)
    on_entry = finance_case(records=[Blocked("timeentry", entry.pk, f"TE-{entry.pk}")])
    on_project = pmo_case(project.pk)
    invoice = Invoice.objects.create(
        legal_entity=entity,
        customer=acme,
        number="INV-0042",
        currency="EUR",
        issue_date=timezone.now().date(),
        due_date=timezone.now().date(),
    )
    on_invoice = finance_case(records=[Blocked("invoice", invoice.pk, "Draft invoice")])
    unrelated = finance_case(records=entries(1))

    assert _ids(admin, q=f"TE-{entry.pk}") == {on_entry.pk}
    assert _ids(admin, q="p-apollo") == {on_entry.pk, on_project.pk}
    assert _ids(admin, q="INV-0042") == {on_invoice.pk}
    assert _ids(admin, q=f"CONCORD-INV-{invoice.pk}") == {on_invoice.pk}
    # The customer: the cases about its projects (held time, the project itself) and invoices.
    assert _ids(admin, q="acme widgets") == {on_entry.pk, on_project.pk, on_invoice.pk}
    assert _ids(admin, q=f"#{unrelated.pk}") == {unrelated.pk}
    assert _ids(admin, q="nothing like it") == set()


def test_search_finds_cases_by_a_vendor_s_id() -> None:
    admin = admin_user()
    xero = make_connection()
    mapping_defaults_install(connection=xero)
    acme = CustomerFactory.create(name="Acme")
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(acme),
        object_id=acme.pk,
        connection=xero,
        external_id="8f3e-contact",
    )
    about_acme = finance_case(records=[Blocked("customer", acme.pk, "Acme")])
    message = InboundMessage.objects.create(
        connection=xero,
        source="webhook",
        object_type="Contacts",
        external_id="0061x-contact",
        dedupe_key="d1",
        payload={"Name": "Not stored"},
    )
    holding = finance_case(records=[Blocked("inboundmessage", message.pk, "Contacts 0061x")])
    assert _ids(admin, q="8f3e-contact") == {about_acme.pk}
    assert _ids(admin, q="0061x-contact") == {holding.pk}


def test_totals_count_and_add_up_per_currency() -> None:
    ada = finance_user()
    finance_case(records=entries(2, amount="100", currency="EUR"))
    finance_case(records=entries(1, amount="40", currency="GBP"))
    finance_case(
        records=[*entries(1, amount="5", currency="EUR"), *entries(1, amount="7", currency="GBP")]
    )
    finance_case(records=entries(1, amount="0", currency=""))
    totals = selectors.case_totals(cases=selectors.case_queryset(user=ada))
    assert totals.cases == 4
    assert [(t.currency, t.cases, t.amount) for t in totals.by_currency] == [
        ("EUR", 2, Decimal("205.00")),
        ("GBP", 2, Decimal("47.00")),
        ("", 1, Decimal("0")),
    ]


def test_the_queues_and_the_sla_view_count_due_soon_and_breached() -> None:
    ada = finance_user()
    late = _due_in(finance_case(), -timedelta(hours=1))
    soon = _due_in(finance_case(), timedelta(hours=1))
    _due_in(finance_case(), timedelta(days=2))
    pmo_case()
    (finance,) = selectors.queue_list(user=ada)
    assert (finance.code, finance.open, finance.due_soon, finance.breached, finance.mine) == (
        "finance",
        3,
        1,
        1,
        True,
    )
    (view,) = selectors.queue_sla_overview(user=ada)
    assert [c.pk for c in view.breached] == [late.pk]
    assert [c.pk for c in view.due_soon] == [soon.pk]


def test_totals_of_closed_cases_are_counts_to_the_cap_without_amounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ada = admin_user()
    finance_case("open one", records=entries(2, amount="100", currency="EUR"))
    for n in range(3):
        case = finance_case(f"closed {n}", records=entries(1, amount="50", currency="EUR"))
        ExceptionCase.objects.filter(pk=case.pk).update(status=ExceptionCase.Status.WAIVED)
    open_ones = selectors.case_totals(cases=selectors.case_queryset(user=ada))
    assert (open_ones.cases, open_ones.closed, open_ones.capped) == (1, 0, False)
    assert [(t.currency, t.cases, t.amount) for t in open_ones.by_currency] == [
        ("EUR", 1, Decimal("200"))
    ]
    waived = selectors.case_queryset(user=ada, filters={"status": "waived"})
    totals = selectors.case_totals(cases=waived, status="waived")
    assert (totals.cases, totals.closed, totals.capped, totals.by_currency) == (3, 3, False, [])
    monkeypatch.setattr(selectors, "COUNT_CAP", 2)
    capped = selectors.case_totals(cases=waived, status="waived")
    assert (capped.cases, capped.capped) == (2, True)
