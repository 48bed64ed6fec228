"""The open cases' tally (CaseTally, kept by a PostgreSQL trigger) gives the same totals as
counting the cases, through every kind of change: opens, joins, clears, assignment, closing,
bulk updates, before and after its deltas are folded in."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from exceptions import selectors, tally_sql
from exceptions.models import (
    BlockedRecord,
    CaseTally,
    CaseTallyDelta,
    CaseTallyRow,
    ExceptionCase,
)
from exceptions.services import case_records_clear, case_tally_compact, case_tally_rebuild
from integrations.models import LegalEntity
from tests.exceptions.cases import admin_user, entries, finance_case, finance_user, pmo_case
from tests.factories import LegalEntityFactory

pytestmark = pytest.mark.django_db

CURRENCIES = ("EUR", "GBP", "USD")


def _filters(users: list[User], entities: list[LegalEntity]) -> list[dict[str, Any]]:
    return [
        {},
        {"queue": ["finance"]},
        {"queue": ["finance", "pmo"]},
        {"case_type": ["vendor_validation"]},
        {"process": "time_to_erp"},
        {"legal_entity": str(entities[0].pk)},
        {"legal_entity": str(entities[1].pk), "region": "emea"},
        {"region": "americas"},
        {"assignee": "none"},
        {"assignee": str(users[0].pk)},
        {"assignee": "me"},
        {"queue": ["finance"], "assignee": "none", "legal_entity": str(entities[2].pk)},
        {"status": "open"},
    ]


def _as_rows(totals: selectors.Totals) -> tuple[int, list[tuple[str, int, Decimal]]]:
    return totals.cases, [(t.currency, t.cases, Decimal(t.amount)) for t in totals.by_currency]


def _check(viewers: list[User], users: list[User], entities: list[LegalEntity]) -> None:
    for viewer in viewers:
        for filters in _filters(users, entities):
            tallied = selectors.case_tally_totals(user=viewer, filters=filters)
            assert tallied is not None, filters
            counted = selectors.case_totals(
                cases=selectors.case_queryset(user=viewer, filters=filters)
            )
            assert _as_rows(tallied) == _as_rows(counted), (viewer.username, filters)


def _records(rng: random.Random) -> list[Any]:
    shape = rng.random()
    if shape < 0.6:
        return entries(rng.randint(1, 3), amount=str(rng.randint(1, 900)), currency="EUR")
    if shape < 0.8:  # several currencies: the case's amount is per currency only
        return entries(1, amount="12.5", currency="GBP") + entries(
            1, amount=str(rng.randint(1, 50)), currency=rng.choice(["EUR", "USD"])
        )
    return entries(1, amount="0", currency="")  # blocks no amount


def test_the_tally_adds_up_like_the_cases_through_every_kind_of_change() -> None:
    rng = random.Random(11)
    admin, ada = admin_user(), finance_user()
    users = [ada, admin]
    entities = LegalEntityFactory.create_batch(3)
    cases = []
    for n in range(120):
        entity = rng.choice([*entities, None])
        region = rng.choice(["emea", "americas", ""])
        kwargs: dict[str, Any] = {
            "legal_entity_id": entity.pk if entity else None,
            "region": region,
        }
        if n % 3:
            cases.append(finance_case(f"customer {n}", records=_records(rng), **kwargs))
        else:
            cases.append(pmo_case(records=_records(rng), **kwargs))
    viewers = [admin, ada]
    assert CaseTallyDelta.objects.exists()
    _check(viewers, users, entities)
    case_tally_compact()
    assert not CaseTallyDelta.objects.exists()
    _check(viewers, users, entities)

    # Joins of more records (one currency becomes two), clears, assignment, closing, reopening.
    for case in rng.sample(cases, 40):
        if case.queue == "finance":
            finance_case(case.subject["about"], records=_records(rng))
        else:
            pmo_case(case.subject["project_id"], records=_records(rng))
    for case in rng.sample(cases, 30):
        held = list(
            BlockedRecord.objects.filter(case=case).values_list("record_type", "record_id")[:1]
        )
        case_records_clear(records=held, note="went through")
    for case in rng.sample(cases, 30):
        ExceptionCase.objects.filter(pk=case.pk).update(assignee=rng.choice(users))
    closing = [c.pk for c in rng.sample(cases, 25)]
    ExceptionCase.objects.filter(pk__in=closing[:20]).update(status=ExceptionCase.Status.WAIVED)
    ExceptionCase.objects.filter(pk__in=closing[:5]).update(status=ExceptionCase.Status.OPEN)
    # A bulk move between queues and entities (cases are never deleted: their audit trail
    # protects them).
    ExceptionCase.objects.filter(pk__in=[c.pk for c in cases[:10]]).update(
        queue="pmo", legal_entity=entities[2]
    )
    # Updates that change nothing counted leave no delta.
    before = CaseTallyDelta.objects.count()
    ExceptionCase.objects.filter(status="open").update(occurrences=7, message="again")
    assert CaseTallyDelta.objects.count() == before
    _check(viewers, users, entities)
    case_tally_compact()
    _check(viewers, users, entities)
    # Folding leaves no empty rows behind, and a rebuild from the cases gives the same tally.
    assert not CaseTally.objects.filter(cases=0, amount=0).exists()
    kept = sorted(CaseTally.objects.values_list("queue", "case_type", "kind", "currency", "cases"))
    case_tally_rebuild()
    assert (
        sorted(CaseTally.objects.values_list("queue", "case_type", "kind", "currency", "cases"))
        == kept
    )


def test_filters_the_tally_has_no_dimension_for_are_counted_instead() -> None:
    ada = finance_user()
    finance_case(records=entries(2, amount="100", currency="EUR"))
    for filters in (
        {"sla": "breached"},
        {"amount_min": "10"},
        {"q": "customer"},
        {"status": "resolved"},
        {"legal_entity": "1.5"},
    ):
        assert selectors.case_tally_totals(user=ada, filters=filters) is None, filters
    tallied = selectors.case_tally_totals(user=ada, filters={})
    assert tallied is not None
    assert _as_rows(tallied) == (1, [("EUR", 1, Decimal("200.00"))])


def test_a_user_sees_the_totals_of_their_queues_only() -> None:
    ada = finance_user()
    finance_case(records=entries(1, amount="10", currency="EUR"))
    pmo_case(records=entries(1, amount="99", currency="EUR"))
    tallied = selectors.case_tally_totals(user=ada, filters={})
    assert tallied is not None
    assert _as_rows(tallied) == (1, [("EUR", 1, Decimal("10.00"))])
    assert connection.vendor == "postgresql"


# --- The two tables and the trigger's SQL agree -----------------------------------------------


def _columns(table: str) -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = %s ORDER BY ordinal_position",
            [table],
        )
        return list(cursor.fetchall())


def test_the_tally_and_its_deltas_are_one_row_shape_with_the_columns_the_trigger_writes() -> None:
    shared = [f.column for f in CaseTallyRow._meta.concrete_fields]
    assert shared[: len(CaseTallyRow.DIMENSIONS)] == list(CaseTallyRow.DIMENSIONS)
    assert shared[len(CaseTallyRow.DIMENSIONS) :] == ["cases", "amount"]
    # The trigger, the rebuild and the compaction name the dimensions in the model's order.
    assert ", ".join(CaseTallyRow.DIMENSIONS) == tally_sql.DIMENSIONS
    tally, delta = _columns(CaseTally._meta.db_table), _columns(CaseTallyDelta._meta.db_table)
    assert tally == delta
    assert [name for name, _ in tally] == ["id", *shared]
    # The compaction's ON CONFLICT needs a unique constraint on exactly the dimensions.
    [unique] = CaseTally._meta.constraints
    assert list(unique.fields) == list(CaseTallyRow.DIMENSIONS)  # type: ignore[attr-defined]
    assert not CaseTallyDelta._meta.constraints
