"""Work queues, routing rules and the SLA table, applied when a case opens."""

from __future__ import annotations

from datetime import timedelta

import pytest

from exceptions.models import CaseEvent, CaseRoute, ExceptionCase, SlaPolicy, WorkQueue
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS
from tests.exceptions.cases import finance_case, fresh, pmo_case
from tests.factories import LegalEntityFactory, ProjectFactory

pytestmark = pytest.mark.django_db

P1, P2, P3 = ExceptionCase.Priority.P1, ExceptionCase.Priority.P2, ExceptionCase.Priority.P3


def _sla(case: ExceptionCase) -> timedelta:
    assert case.sla_due_at is not None
    return case.sla_due_at - case.first_seen_at


def test_the_four_standard_queues_are_seeded_with_their_role_groups() -> None:
    queues = {
        q.code: (q.name, sorted(q.groups.values_list("name", flat=True)))
        for q in WorkQueue.objects.all()
    }
    assert queues == {
        "finance": ("Finance", [FINANCE]),
        "pmo": ("PMO", [PMO]),
        "sales_ops": ("Sales ops", [SALES_OPS]),
        "integration_admin": ("Integration admins", [INTEGRATION_ADMIN]),
    }


def test_the_sla_table_is_seeded_with_the_catalogues_values() -> None:
    assert dict(SlaPolicy.objects.values_list("priority", "resolve_within")) == {
        1: timedelta(hours=4),
        2: timedelta(days=1),
        3: timedelta(days=3),
        4: timedelta(days=14),
    }


def test_without_a_rule_the_catalogue_routes_and_the_sla_table_times() -> None:
    case = fresh(pmo_case())
    assert (case.queue, case.priority) == ("pmo", P3)
    assert _sla(case) == timedelta(days=3)
    opened = CaseEvent.objects.get(case=case, action="opened")
    assert opened.after["routed_by"] is None


def test_the_sla_comes_from_the_table_not_the_catalogue() -> None:
    SlaPolicy.objects.filter(priority=P3).update(resolve_within=timedelta(hours=30))
    case = fresh(pmo_case())
    assert _sla(case) == timedelta(hours=30)


def test_a_rule_for_the_case_type_sends_it_to_another_queue_at_another_priority() -> None:
    rule = CaseRoute.objects.create(
        case_type="time_on_inactive_project", queue_id="finance", priority=P1
    )
    case = fresh(pmo_case())
    assert (case.queue, case.priority) == ("finance", P1)
    assert _sla(case) == timedelta(hours=4)  # P1's SLA
    assert CaseEvent.objects.get(case=case, action="opened").after["routed_by"] == rule.pk
    # Other types are not touched by it.
    other = fresh(finance_case())
    assert (other.queue, other.priority) == ("finance", P2)


def test_a_rule_with_only_a_priority_keeps_the_catalogues_queue() -> None:
    CaseRoute.objects.create(process="time_to_erp", priority=P1)
    case = fresh(pmo_case())
    assert (case.queue, case.priority) == ("pmo", P1)


def test_the_most_specific_rule_wins_and_the_legal_entity_comes_from_the_project() -> None:
    uk, de = LegalEntityFactory.create(), LegalEntityFactory.create()
    uk_project = ProjectFactory.create(legal_entity=uk, region="emea")
    de_project = ProjectFactory.create(legal_entity=de, region="apac")
    CaseRoute.objects.create(case_type="time_on_inactive_project", queue_id="sales_ops")
    CaseRoute.objects.create(
        case_type="time_on_inactive_project", legal_entity=uk, queue_id="finance", priority=P2
    )
    CaseRoute.objects.create(legal_entity=uk, queue_id="integration_admin")  # less specific

    on_uk = fresh(pmo_case(uk_project.pk))
    assert (on_uk.queue, on_uk.priority) == ("finance", P2)
    assert (on_uk.legal_entity_id, on_uk.region, on_uk.project_id) == (uk.pk, "emea", uk_project.pk)
    assert on_uk.customer_id == uk_project.customer_id
    on_de = fresh(pmo_case(de_project.pk))
    assert (on_de.queue, on_de.priority) == ("sales_ops", P3)
    assert (on_de.legal_entity_id, on_de.region) == (de.pk, "apac")


def test_on_a_tie_the_case_type_beats_the_region() -> None:
    CaseRoute.objects.create(region="emea", queue_id="integration_admin")
    CaseRoute.objects.create(case_type="vendor_validation", queue_id="sales_ops")
    case = fresh(finance_case(region="emea"))
    assert case.queue == "sales_ops"
    assert case.region == "emea"


def test_the_caller_may_name_the_legal_entity_and_region() -> None:
    entity = LegalEntityFactory.create()
    CaseRoute.objects.create(legal_entity=entity, region="americas", queue_id="pmo")
    case = fresh(finance_case(legal_entity_id=entity.pk, region="americas"))
    assert (case.queue, case.legal_entity_id, case.region) == ("pmo", entity.pk, "americas")
    # Only with both conditions met.
    assert fresh(finance_case(legal_entity_id=entity.pk)).queue == "finance"


def test_routing_applies_when_a_case_opens_not_on_each_join() -> None:
    case = pmo_case(4242)
    CaseRoute.objects.create(case_type="time_on_inactive_project", queue_id="finance")
    joined = fresh(pmo_case(4242))
    assert joined.pk == case.pk
    assert joined.queue == "pmo"


def test_case_queue_stays_a_code_column() -> None:
    case = fresh(pmo_case())
    assert case.queue == "pmo"
    assert ExceptionCase.objects.filter(queue="pmo").count() == 1
