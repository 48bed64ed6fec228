"""People's actions on cases: the revision they saw, refusals in words, retry through the
registered handlers, the root-cause group and bulk actions (all or nothing)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from exceptions import actions
from exceptions.access import case_access
from exceptions.errors import CaseConflict, CaseRefused
from exceptions.models import CaseEvent, ExceptionCase
from exceptions.retry import retry_handler_for
from exceptions.selectors import case_group
from integrations.models import OutboxMessage, Project, RateCard, TimeEntry
from integrations.sync.outbox import outbox_enqueue, outbox_message
from integrations.workflows.time_to_erp import billing_run
from tests.exceptions.cases import (
    admin_user,
    finance_case,
    finance_user,
    fresh,
    mapping_case,
    pmo_user,
)
from tests.factories import (
    ContractFactory,
    CustomerFactory,
    ProjectFactory,
    TimeEntryFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db


def test_an_action_on_a_revision_someone_moved_is_refused_naming_who_and_when() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    case = finance_case()
    actions.case_take(actor=ada, case_id=case.pk, revision=0)
    with pytest.raises(CaseConflict) as refused:
        actions.case_take(actor=bob, case_id=case.pk, revision=0)
    assert re.fullmatch(
        r"ada took this case \d+ seconds? ago; nothing was done\.", str(refused.value)
    )
    assert fresh(case).assignee_id == ada.pk


def test_the_refusal_counts_minutes_and_names_the_assignee() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    case = finance_case()
    actions.case_assign(actor=ada, case_id=case.pk, assignee_id=bob.pk, revision=0)
    # What it reads like three minutes later.
    event = CaseEvent.objects.filter(case=case).order_by("-id").first()
    assert event is not None
    refusal = actions._changed_since(bob, fresh(case), 0)
    assert re.fullmatch(
        r"ada assigned this case to bob \d+ seconds? ago; nothing was done\.", refusal
    )
    event.at = timezone.now() - timedelta(minutes=3)  # as read back, not saved
    assert actions._ago(event) == "3 minutes ago"


def test_an_action_on_a_closed_case_says_who_closed_it() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    case = finance_case()
    actions.case_waive(actor=ada, case_id=case.pk, revision=0, reason="Duplicate invoice.")
    with pytest.raises(CaseConflict, match=r"^ada waived this case .* ago; nothing was done\.$"):
        actions.case_take(actor=bob, case_id=case.pk, revision=None)
    with pytest.raises(CaseConflict, match=r"^You waived this case"):
        actions.case_resolve_by_hand(actor=ada, case_id=case.pk, revision=None)


def test_a_waiver_needs_a_reason() -> None:
    ada = finance_user()
    case = finance_case()
    with pytest.raises(CaseRefused, match="A waiver needs a reason"):
        actions.case_waive(actor=ada, case_id=case.pk, revision=0, reason="   ")
    assert fresh(case).status == ExceptionCase.Status.OPEN
    assert fresh(case).revision == 0


def test_taking_a_case_one_already_has_is_refused_and_changes_nothing() -> None:
    ada = finance_user()
    case = finance_case()
    actions.case_take(actor=ada, case_id=case.pk, revision=0)
    with pytest.raises(CaseConflict, match=r"is assigned to .* already"):
        actions.case_take(actor=ada, case_id=case.pk, revision=1)
    assert fresh(case).revision == 1


def test_comments_need_text_and_never_conflict() -> None:
    ada, bob = finance_user(), finance_user()
    case = finance_case()
    with pytest.raises(CaseRefused, match="needs some text"):
        actions.case_comment(actor=ada, case_id=case.pk, text=" ")
    actions.case_comment(actor=ada, case_id=case.pk, text="one")
    actions.case_comment(actor=bob, case_id=case.pk, text="two")
    assert list(fresh(case).comments.values_list("text", flat=True)) == ["one", "two"]
    assert fresh(case).revision == 0


def _billing_firm(projects: int) -> list[Project]:
    """Closed projects with approved time: billing raises one inactive-project case each."""
    customer = CustomerFactory.create()
    contract = ContractFactory.create(customer=customer, currency="EUR")
    RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("100"))
    out = []
    for _ in range(projects):
        project = ProjectFactory.create(customer=customer, contract=contract, status="closed")
        TimeEntryFactory.create_batch(2, project=project)
        out.append(project)
    return out


def test_retry_re_runs_the_held_work_and_is_audited() -> None:
    (project,) = _billing_firm(1)
    billing_run()
    case = ExceptionCase.objects.get(case_type="time_on_inactive_project")
    pat = pmo_user(username="pat")
    outcome = actions.case_retry(actor=pat, case_id=case.pk, revision=0)
    assert (outcome.count, outcome.status, outcome.revision) == (2, "open", 1)
    assert outcome.summary == "billed 0 of 2 held time entries; 2 still blocked"
    retried = CaseEvent.objects.get(case=case, action="retried")
    assert retried.actor == pat
    assert retried.before == {"status": "open", "record_count": 2}
    assert retried.after["count"] == 2
    assert project.pk == fresh(case).project_id


def test_retry_of_a_case_with_nothing_left_to_re_run_is_refused() -> None:
    (project,) = _billing_firm(1)
    billing_run()
    case = ExceptionCase.objects.get(case_type="time_on_inactive_project")
    TimeEntry.objects.filter(project=project).update(
        approval_state="draft"
    )  # nothing approved to bill any more
    with pytest.raises(CaseConflict, match=f"Case #{case.pk} has nothing left to retry"):
        actions.case_retry(actor=pmo_user(), case_id=case.pk, revision=0)
    assert not CaseEvent.objects.filter(case=case, action="retried").exists()
    assert fresh(case).revision == 0


def test_a_case_type_without_a_handler_cannot_be_retried() -> None:
    case = finance_case()
    ExceptionCase.objects.filter(pk=case.pk).update(case_type="poll_stale")
    assert retry_handler_for(fresh(case)) is None
    with pytest.raises(CaseRefused, match="has no work Concord can re-run"):
        actions.case_retry(actor=admin_user(), case_id=case.pk, revision=0)


def test_retry_replays_an_outbox_case_s_parked_rows_once() -> None:
    case = finance_case()
    connection = make_connection()
    rows = [
        outbox_message(
            connection=connection,
            process="time_to_erp",
            step="post_invoice",
            operation="put_invoices",
            record=CustomerFactory.create(),
            version=1,
            payload={"Reference": f"R{i}"},
        )
        for i in range(3)
    ]
    outbox_enqueue(messages=rows)
    OutboxMessage.objects.update(state="parked", exception_case=case)
    ada = finance_user()
    outcome = actions.case_retry(actor=ada, case_id=case.pk, revision=0)
    assert (outcome.count, outcome.summary) == (3, "replayed 3 parked outbox row(s)")
    replays = OutboxMessage.objects.filter(replay_of__isnull=False)
    assert replays.count() == 3
    assert set(replays.values_list("state", flat=True)) == {"pending"}
    # Nothing is parked any more: a second look finds nothing to do.
    with pytest.raises(CaseConflict, match="nothing left to retry"):
        actions.case_retry(actor=ada, case_id=case.pk, revision=1)
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3


def test_the_group_is_the_cases_sharing_the_root_cause_scope() -> None:
    a = mapping_case(1, "Contacts", "no name")
    b = mapping_case(1, "Contacts", "no currency")
    other_type = mapping_case(1, "Invoices", "no name")
    other_connection = mapping_case(2, "Contacts", "no name")
    assert a.group_key == b.group_key
    assert len({a.group_key, other_type.group_key, other_connection.group_key}) == 3
    group = case_group(case=a, access=case_access(admin_user()))
    assert [c.pk for c in group] == [a.pk, b.pk]


def test_retrying_the_group_retries_every_case_the_person_saw() -> None:
    projects = _billing_firm(3)
    billing_run()
    cases = list(ExceptionCase.objects.order_by("pk"))
    assert len(cases) == 3
    assert len({c.group_key for c in cases}) == 1  # every inactive project: one group
    pat = pmo_user()
    seen = {cases[0].pk: 0, cases[1].pk: 0}  # the third opened after pat looked
    Project.objects.filter(pk__in=[p.pk for p in projects]).update(status="active")
    result = actions.case_retry_group(actor=pat, case_id=cases[0].pk, revisions=seen)
    assert [r.case_id for r in result.retried] == [cases[0].pk, cases[1].pk]
    assert result.not_seen == [cases[2].pk]
    # Active now, but no ERP route: the entries move to the no-route case; these stay open.
    assert [r.summary for r in result.retried] == [
        "billed 0 of 2 held time entries; 2 still blocked",
        "billed 0 of 2 held time entries; 2 still blocked",
    ]
    assert CaseEvent.objects.filter(action="retried").count() == 2


def test_a_group_retry_on_a_stale_revision_does_nothing() -> None:
    _billing_firm(2)
    billing_run()
    first, second = ExceptionCase.objects.order_by("pk")
    pat, sam = pmo_user(username="pat"), pmo_user(username="sam")
    actions.case_retry(actor=sam, case_id=second.pk, revision=0)
    with pytest.raises(CaseConflict, match=r"^sam retried this case .* ago; nothing was done"):
        actions.case_retry_group(actor=pat, case_id=first.pk, revisions={first.pk: 0, second.pk: 0})
    assert CaseEvent.objects.filter(action="retried").count() == 1
    with pytest.raises(CaseRefused, match="not in the group"):
        actions.case_retry_group(
            actor=pat, case_id=first.pk, revisions={first.pk: 0, finance_case().pk: 0}
        )


def test_bulk_actions_are_all_or_nothing() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    a, b, c = finance_case(), finance_case(), finance_case()
    actions.case_take(actor=bob, case_id=c.pk, revision=0)
    with pytest.raises(CaseConflict, match=r"^bob took this case"):
        actions.case_bulk(actor=ada, action="take", revisions={a.pk: 0, b.pk: 0, c.pk: 0})
    assert [fresh(x).assignee_id for x in (a, b)] == [None, None]
    done = actions.case_bulk(
        actor=ada, action="assign", revisions={a.pk: 0, b.pk: 0}, assignee_id=bob.pk
    )
    assert [x.assignee_id for x in done] == [bob.pk, bob.pk]
    with pytest.raises(CaseRefused, match="A waiver needs a reason"):
        actions.case_bulk(actor=ada, action="waive", revisions={a.pk: 1, b.pk: 1})
    waived = actions.case_bulk(
        actor=ada, action="waive", revisions={a.pk: 1, b.pk: 1}, text="Credit notes issued."
    )
    assert {x.status for x in waived} == {"waived"}
    assert {x.resolution_note for x in waived} == {"Credit notes issued."}
