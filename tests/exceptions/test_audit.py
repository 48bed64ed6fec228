"""The audit trail: every change and action, the system's own included, with before and after;
and no way to change or delete it, in code, in the admin or in SQL."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import ProtectedError
from django.db.utils import ProgrammingError
from django.test import Client

from exceptions import actions
from exceptions.models import AuditTrailImmutable, CaseEvent, ExceptionCase
from exceptions.services import case_records_clear
from tests.exceptions.cases import entries, finance_case, finance_user, fresh, pmo_case
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _trail(case: ExceptionCase) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    return [
        (e.action, e.actor_label, e.before, e.after)
        for e in CaseEvent.objects.filter(case=case).order_by("id")
    ]


def test_the_system_s_own_changes_are_in_the_trail() -> None:
    held = entries(3)
    case = pmo_case(77, records=held[:2])
    pmo_case(77, records=held[1:])  # joins with one new record (one it already held)
    case_records_clear(records=[r.key for r in held], note="billed")
    trail = _trail(case)
    assert [(action, who) for action, who, _, _ in trail] == [
        ("opened", "Concord"),
        ("joined", "Concord"),
        ("cleared", "Concord"),
        ("resolved", "Concord"),
    ]
    opened, joined, cleared, resolved = (after for _, _, _, after in trail)
    assert opened["records"] == 2
    assert opened["queue"] == "pmo"
    assert trail[1][2] == {"record_count": 2, "occurrences": 2}
    assert (joined["records"], joined["record_count"], joined["occurrences"]) == (1, 3, 4)
    assert trail[2][2] == {"record_count": 3}
    assert cleared == {"record_count": 0, "records": 3}
    assert resolved == {"status": "resolved", "note": "billed", "automatic": True}
    assert fresh(case).revision == 1  # the status change moved the revision


def test_every_action_is_audited_with_its_actor_before_and_after() -> None:
    ada = finance_user(username="ada")
    bob = finance_user(username="bob")
    case = finance_case()
    actions.case_assign(actor=ada, case_id=case.pk, assignee_id=bob.pk, revision=0)
    actions.case_reassign(actor=ada, case_id=case.pk, assignee_id=ada.pk, revision=1)
    actions.case_unassign(actor=ada, case_id=case.pk, revision=2)
    actions.case_take(actor=bob, case_id=case.pk, revision=3)
    actions.case_comment(actor=bob, case_id=case.pk, text="Asked the customer for the VAT id.")
    actions.case_waive(actor=bob, case_id=case.pk, revision=4, reason="Invoice cancelled.")
    trail = _trail(case)[1:]  # after "opened"
    assert trail == [
        ("assigned", "ada", {"assignee": None}, {"assignee": "bob"}),
        ("taken", "ada", {"assignee": "bob"}, {"assignee": "ada"}),
        ("unassigned", "ada", {"assignee": "ada"}, {"assignee": None}),
        ("taken", "bob", {"assignee": None}, {"assignee": "bob"}),
        (
            "commented",
            "bob",
            {},
            {
                "comment_id": fresh(case).comments.get().pk,
                "text": "Asked the customer for the VAT id.",
            },
        ),
        ("waived", "bob", {"status": "open"}, {"status": "waived", "note": "Invoice cancelled."}),
    ]
    assert [e.revision for e in CaseEvent.objects.filter(case=case).order_by("id")] == [
        0, 1, 2, 3, 4, 4, 5,
    ]  # fmt: skip
    assert CaseEvent.objects.filter(case=case, action="waived").get().actor == bob


def test_a_reassignment_to_someone_else_reads_as_one() -> None:
    ada, bob, cy = (finance_user(username=n) for n in ("ada2", "bob2", "cy2"))
    case = finance_case()
    actions.case_assign(actor=ada, case_id=case.pk, assignee_id=bob.pk, revision=0)
    actions.case_reassign(actor=ada, case_id=case.pk, assignee_id=cy.pk, revision=1)
    assert _trail(case)[-1] == ("reassigned", "ada2", {"assignee": "bob2"}, {"assignee": "cy2"})


def test_resolving_by_hand_is_audited() -> None:
    ada = finance_user(username="ada3")
    case = finance_case()
    actions.case_resolve_by_hand(actor=ada, case_id=case.pk, revision=0, note="Fixed in Xero.")
    assert _trail(case)[-1] == (
        "resolved",
        "ada3",
        {"status": "open"},
        {"status": "resolved", "note": "Fixed in Xero."},
    )
    assert fresh(case).status == "resolved"


def test_an_event_cannot_be_saved_again_or_deleted() -> None:
    case = finance_case()
    event = CaseEvent.objects.get(case=case)
    event.after = {"forged": True}
    with pytest.raises(AuditTrailImmutable):
        event.save()
    with pytest.raises(AuditTrailImmutable):
        event.delete()
    assert CaseEvent.objects.get(pk=event.pk).after["queue"] == "finance"


def test_the_queryset_refuses_update_and_delete() -> None:
    case = finance_case()
    events = CaseEvent.objects.filter(case=case)
    with pytest.raises(AuditTrailImmutable):
        events.update(actor_label="someone else")
    with pytest.raises(AuditTrailImmutable):
        events.delete()
    with pytest.raises(AuditTrailImmutable):
        CaseEvent.objects.bulk_update(list(events), ["actor_label"])
    with pytest.raises(AuditTrailImmutable):
        CaseEvent.objects.update_or_create(pk=events.get().pk)
    assert events.get().actor_label == "Concord"


def test_a_case_with_a_trail_cannot_be_deleted_with_it() -> None:
    case = finance_case()
    with pytest.raises(ProtectedError):
        case.delete()
    assert CaseEvent.objects.filter(case_id=case.pk).count() == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigger is PostgreSQL's")
def test_the_database_refuses_update_and_delete_of_the_trail() -> None:
    case = finance_case()
    for sql in (
        "UPDATE exceptions_caseevent SET actor_label = 'x'",
        "DELETE FROM exceptions_caseevent",
    ):
        with (
            pytest.raises(ProgrammingError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)
    assert CaseEvent.objects.filter(case=case).count() == 1


def test_the_admin_shows_the_trail_read_only() -> None:
    superuser = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(superuser)
    case = finance_case()
    event = CaseEvent.objects.get(case=case)
    base = "/admin/exceptions/caseevent/"
    assert client.get(base).status_code == 200
    page = client.get(f"{base}{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.post(f"{base}{event.pk}/change/", {"actor_label": "x"}).status_code == 403
    assert client.get(f"{base}{event.pk}/delete/").status_code == 403
    assert client.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"{base}add/").status_code == 403
    bulk = client.post(base, {"action": "delete_selected", "_selected_action": [event.pk]})
    assert bulk.status_code == 200  # no such action: the list again
    assert CaseEvent.objects.get(pk=event.pk).actor_label == "Concord"
