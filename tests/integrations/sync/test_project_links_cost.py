"""Linking the projects that predate Concord (integrations/sync/project_links.py) after every
poll costs queries per batch of projects, not per project: a firm's first poll links all of
them (1,200 in the demo firm at scale 100), and one write path call each held the PSA's poll
20 s after its last page."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.models import AuditEvent, Contract, Customer, LegalEntity, Project
from integrations.sync.project_links import _links_write, projects_link
from integrations.sync.records import record_update
from tests.factories import ContractFactory, CustomerFactory, LegalEntityFactory

pytestmark = pytest.mark.django_db


def _waiting(customer: Customer, count: int, prefix: str) -> list[Project]:
    """`count` projects of `customer` as a PSA poll leaves them: no contract, no entity."""
    return Project.objects.bulk_create(
        Project(
            code=f"{prefix}-{i}",
            name=f"Project {prefix} {i}",
            customer=customer,
            region=Project.Region.EMEA,
            currency="EUR",
            status=Project.Status.ACTIVE,
        )
        for i in range(count)
    )


def _link_queries(customer: Customer, count: int, prefix: str) -> int:
    made = _waiting(customer, count, prefix)
    with CaptureQueriesContext(connection) as captured:
        report = projects_link()
    assert report.linked == count
    assert report.unlinked == 0
    assert report.cases == set()
    assert Project.objects.filter(pk__in=[p.pk for p in made], contract__isnull=True).count() == 0
    return len(captured.captured_queries)


def test_linking_costs_the_same_queries_for_50_projects_as_for_500() -> None:
    entity = LegalEntityFactory.create()
    customer = CustomerFactory.create(legal_entity=None)
    contract = ContractFactory.create(
        customer=customer, legal_entity=entity, status=Contract.Status.ACTIVE
    )

    small = _link_queries(customer, 50, "S")
    large = _link_queries(customer, 500, "L")
    assert small <= 16
    assert large <= small  # the first run also read the content types Django caches

    # Each linked as the write path links it: its contract and the contract's entity,
    # stamped as Concord's (a person's edit with no user), one audit event each with the old
    # and new values.
    projects = list(Project.objects.order_by("pk"))
    assert len(projects) == 550
    for project in projects:
        assert project.contract_id == contract.pk
        assert project.legal_entity_id == entity.pk
        stamps = [s for s, names in project.field_sources.items() if "contract_id" in names]
        assert len(stamps) == 1
        assert stamps[0].startswith("person:")
        assert set(project.field_sources[stamps[0]]) == {"contract_id", "legal_entity_id"}
    events = AuditEvent.objects.filter(object_type="project", action=AuditEvent.Action.UPDATE)
    assert events.count() == 550
    assert {e.actor_label for e in events} == {"system"}
    assert {e.object_repr for e in events} == {str(p) for p in projects}
    # The same changes as the write path's own record_update writes for such a link (the
    # owners of the fields it overrides under ``owned_by``).
    twin = _waiting(customer, 1, "T")[0]
    record_update(
        record=twin, data={"contract": contract.pk, "legal_entity": entity.pk}, actor=None
    )
    expected = AuditEvent.objects.get(object_type="project", object_id=str(twin.pk)).changes
    assert expected["contract"] == [None, contract.pk]
    assert {json.dumps(e.changes, sort_keys=True) for e in events} == {
        json.dumps(expected, sort_keys=True)
    }

    # The next poll finds nothing to link: a query or two, nothing written.
    with CaptureQueriesContext(connection) as captured:
        assert projects_link().linked == 0
    assert len(captured.captured_queries) <= 3
    assert AuditEvent.objects.filter(object_type="project").count() == 551


def test_a_link_someone_made_since_the_projects_were_read_is_not_replaced() -> None:
    entity = LegalEntityFactory.create()
    other_entity = LegalEntityFactory.create()
    customer = CustomerFactory.create(legal_entity=None)
    found = ContractFactory.create(
        customer=customer, legal_entity=entity, status=Contract.Status.ACTIVE
    )
    chosen = ContractFactory.create(
        customer=customer, legal_entity=other_entity, status=Contract.Status.ACTIVE
    )
    first, second = _waiting(customer, 2, "R")
    # PMO set the first project's contract between the link step's read and its write.
    Project.objects.filter(pk=first.pk).update(contract=chosen)

    linked = _links_write(
        {
            first.pk: {"contract_id": found.pk, "legal_entity_id": entity.pk},
            second.pk: {"contract_id": found.pk, "legal_entity_id": entity.pk},
        }
    )

    assert linked == 2
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.contract_id == chosen.pk  # kept as PMO set it
    assert first.legal_entity_id == entity.pk  # the field still empty was filled
    assert (second.contract_id, second.legal_entity_id) == (found.pk, entity.pk)
    changes = dict(
        AuditEvent.objects.filter(object_type="project").values_list("object_id", "changes")
    )
    assert set(changes[str(first.pk)]) - {"owned_by"} == {"legal_entity"}
    assert changes[str(first.pk)]["legal_entity"] == [None, entity.pk]
    assert changes[str(second.pk)]["contract"] == [None, found.pk]
    assert changes[str(second.pk)]["legal_entity"] == [None, entity.pk]
    assert LegalEntity.objects.count() == 2
