"""Two writers creating the same vendor record at the same moment (a webhook and a poll, or two
deliveries): the second waits on the cross-reference's unique key, then applies its copy as an
update of the record the first created, on the one-record path and on a polled page alike.
Never a second record, never a case about a duplicate key."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import transaction

from exceptions.models import ExceptionCase
from integrations.mapping.apply import MappedRecord
from integrations.mapping.ownership import OwnershipRules
from integrations.models import Connection, CrossReference, Resource
from integrations.sync.upsert import (
    UpsertResult,
    UpsertState,
    canonical_upsert,
    plan_upsert,
    write_upsert,
)
from tests.concurrency import first_holds_then_commits
from tests.factories import make_connection

pytestmark = pytest.mark.django_db(transaction=True)


def _worker(external_id: str, version: int, role: str) -> MappedRecord:
    values = {
        "name": "Nadia Okafor",
        "email": f"{external_id}@example.invalid",
        "role": role,
        "cost_rate": Decimal("0"),
        "cost_currency": "EUR",
    }
    return MappedRecord("resource", external_id, version, values, [])


def _first_holds_its_create(
    connection: Connection, second: Callable[[], UpsertResult]
) -> tuple[UpsertResult, UpsertResult]:
    """The first writer creates u-9 and holds its transaction open while the second starts
    (its insert waits on the unique key), then commits."""
    return first_holds_then_commits(
        lambda: canonical_upsert(
            connection=connection, mapped=_worker("u-9", 1, "Consultant"), rules=RULES
        ),
        second,
    )


RULES = OwnershipRules()


def test_the_one_record_path_applies_its_copy_to_the_record_created_meanwhile() -> None:
    connection = make_connection(name="Harvest", role="psa", vendor="harvest")
    first, second = _first_holds_its_create(
        connection,
        lambda: canonical_upsert(
            connection=connection, mapped=_worker("u-9", 2, "Lead"), rules=RULES
        ),
    )
    assert (first.state, first.created) == (UpsertState.APPLIED, True)
    assert (second.state, second.created, second.error) == (UpsertState.APPLIED, False, "")
    assert second.record_id == first.record_id
    assert list(Resource.objects.values_list("pk", "role")) == [(first.record_id, "Lead")]
    xref = CrossReference.objects.get(external_id="u-9")
    assert (xref.object_id, xref.external_version) == (first.record_id, "2")
    assert not ExceptionCase.objects.exists()


def test_a_polled_page_applies_its_copy_to_the_record_created_meanwhile() -> None:
    connection = make_connection(name="Harvest", role="psa", vendor="harvest")

    def page() -> UpsertResult:
        # A page of two: u-9 (raced) and u-10 (new): planned from what is committed, written
        # in the page's transaction.
        mapped = [_worker("u-9", 1, "Consultant"), _worker("u-10", 1, "Analyst")]
        with transaction.atomic():
            plan = plan_upsert(connection=connection, mapped=mapped, rules=RULES)
            assert [m.external_id for m, _ in plan.creates] == ["u-9", "u-10"]
            write_upsert(plan)
        assert plan.outcome["failed"] == {}
        # What the page's raw row of u-9 will say (polling's finish writes `later`).
        assert [(i, state) for i, (state, _) in plan.later.items()] == [(0, "stale")]
        assert plan.result_of(1).state == UpsertState.APPLIED
        return plan.result_of(0)

    first, second = _first_holds_its_create(connection, page)
    # The page read the same version the webhook applied: stale, not a second record.
    assert second.state == UpsertState.STALE
    assert Resource.objects.count() == 2
    assert Resource.objects.get(email="u-9@example.invalid").pk == first.record_id
    assert CrossReference.objects.filter(external_id="u-9").count() == 1
    assert not ExceptionCase.objects.exists()
