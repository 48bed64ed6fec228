"""What people do with cases: assign, take, reassign, unassign, comment, waive, retry, retry the
root-cause group, resolve by hand, and the same for a selection of cases (bulk).

Every action is keyword-only, runs in one transaction with the case row locked
(select_for_update) while it checks and acts, is allowed only on a case of the actor's queues
(exceptions/access.py), and leaves an audit row with the values before and after
(exceptions.models.CaseEvent).

Two people acting on one case at once: every action but a comment names the `revision` of the
case its person saw (the pages and the API send it back). The second to get the lock finds a
newer revision and is refused with who did what since: "Ada retried this case 2 seconds ago;
nothing was done." So a case is never retried twice for one look at it. A caller with no
revision to give (a script) passes None and skips that check; the lock still orders the two.

Retry runs the handler registered for the case type by the layer that owns the work
(exceptions/retry.py): parked outbox rows are replayed, held inbound messages are replayed,
held time entries are billed again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from exceptions.access import case_access
from exceptions.catalogue import CATALOGUE
from exceptions.errors import CaseConflict, CaseForbidden, CaseNotFound, CaseRefused
from exceptions.models import CaseComment, CaseEvent, ExceptionCase, WorkQueue
from exceptions.retry import RetryResult, retry_handler_for
from exceptions.services import Actor, case_event, case_resolve

OPEN = ExceptionCase.Status.OPEN
Action = CaseEvent.Action

# A comment is a note, not a document: 10,000 characters is several pages.
COMMENT_MAX = 10_000
# Cases one bulk action or group retry takes: 500 is ten pages of the queue list, and keeps one
# transaction's locks and its retries (each a replay or a billing run) within seconds.
BULK_MAX = 500

BULK_ACTIONS = ("assign", "take", "unassign", "waive", "retry", "resolve")


@dataclass(frozen=True)
class RetryOutcome:
    case_id: int
    count: int
    summary: str
    revision: int
    status: str


@dataclass(frozen=True)
class GroupRetry:
    """What a group retry did: the cases retried, those with nothing left to re-run, and those
    of the group the person had not seen (opened since), which it left alone."""

    retried: list[RetryOutcome]
    nothing_to_retry: list[int]
    not_seen: list[int]


# --- One case -----------------------------------------------------------------------------------


@transaction.atomic
def case_assign(
    *, actor: Actor, case_id: int, assignee_id: int, revision: int | None
) -> ExceptionCase:
    """Give the case to `assignee_id`, a person who works in its queue."""
    case = _locked(actor, case_id, revision)
    return _assign(case, actor, assignee_id)


@transaction.atomic
def case_reassign(
    *, actor: Actor, case_id: int, assignee_id: int, revision: int | None
) -> ExceptionCase:
    """Give an assigned case to someone else (the same as assign; audited as a reassignment)."""
    case = _locked(actor, case_id, revision)
    return _assign(case, actor, assignee_id)


@transaction.atomic
def case_take(*, actor: Actor, case_id: int, revision: int | None) -> ExceptionCase:
    """Assign the case to the actor."""
    case = _locked(actor, case_id, revision)
    return _assign(case, actor, _person(actor).pk)


@transaction.atomic
def case_unassign(*, actor: Actor, case_id: int, revision: int | None) -> ExceptionCase:
    case = _locked(actor, case_id, revision)
    return _unassign(case, actor)


@transaction.atomic
def case_comment(*, actor: Actor, case_id: int, text: str) -> CaseComment:
    """Add a comment, on an open or a closed case. Comments never conflict: no revision."""
    text = text.strip()
    if not text:
        raise CaseRefused("A comment needs some text.")
    if len(text) > COMMENT_MAX:
        raise CaseRefused(f"A comment is at most {COMMENT_MAX:,} characters.")
    case = _locked(actor, case_id, None, open_only=False)
    comment = CaseComment.objects.create(case=case, author=_person(actor), text=text)
    case_event(
        case=case,
        action=Action.COMMENTED,
        actor=actor,
        after={"comment_id": comment.pk, "text": text[:200]},
        at=comment.at,
    ).save()
    return comment


@transaction.atomic
def case_waive(*, actor: Actor, case_id: int, revision: int | None, reason: str) -> ExceptionCase:
    """Close the case without a fix, saying why (mandatory): it needs none, or not here."""
    case = _locked(actor, case_id, revision)
    return _waive(case, actor, reason)


@transaction.atomic
def case_resolve_by_hand(
    *, actor: Actor, case_id: int, revision: int | None, note: str = ""
) -> ExceptionCase:
    """Close the case as resolved: its cause was fixed some other way."""
    case = _locked(actor, case_id, revision)
    return _resolve(case, actor, note)


@transaction.atomic
def case_retry(*, actor: Actor, case_id: int, revision: int | None) -> RetryOutcome:
    """Re-run the work the case holds up (replay its parked outbox rows or held inbound
    messages, bill its held time entries again)."""
    case = _locked(actor, case_id, revision)
    outcome = _retry(case, actor)
    if outcome is None:
        raise CaseConflict(f"Case #{case.pk} has nothing left to retry; nothing was done.")
    return outcome


# --- Many cases ---------------------------------------------------------------------------------


@transaction.atomic
def case_retry_group(*, actor: Actor, case_id: int, revisions: Mapping[int, int]) -> GroupRetry:
    """Retry every open case of this case's root-cause group that the person saw.

    The group: open cases of the same type, process and step, in the same queue, whose subjects
    share the type's group keys (exceptions.services.case_group_key: the fingerprint's keys
    but its most specific one). So fixing a mapping retries every mapping error of that
    connection and object type, whatever the field each one tripped on; fixing the firm's
    rates retries every "missing rate" case of a contract; and the group of a type scoped to
    one record (an inactive project) is every such case in the queue. `revisions` names each
    case of the group the person saw and its revision: all are checked before any is retried
    (one stale: nothing is done), and cases of the group opened since they looked are left
    alone (they are reported)."""
    anchor = _get(actor, case_id)
    if case_id not in revisions:
        raise CaseRefused(
            f"Give the revision of case #{case_id} and of each case of its group you saw."
        )
    if anchor.group_key:
        members = list(
            ExceptionCase.objects.select_for_update()
            .filter(group_key=anchor.group_key, queue=anchor.queue, status=OPEN)
            .order_by("pk")[:BULK_MAX]
        )
    else:  # a case from before groups: a group of its own
        members = list(ExceptionCase.objects.select_for_update().filter(pk=case_id))
    by_id = {case.pk: case for case in members}
    if case_id not in by_id:  # the anchor itself was closed since
        _check(actor, _get(actor, case_id), revisions[case_id], open_only=True)
    strangers = sorted(set(revisions) - set(by_id))
    if strangers:
        closed = ExceptionCase.objects.filter(pk__in=strangers, group_key=anchor.group_key)
        for case in closed.order_by("pk"):
            _check(actor, case, revisions[case.pk], open_only=True)
        raise CaseRefused(
            f"Cases {_ids(strangers)} are not in the group of case #{case_id}; nothing was done."
        )
    seen = [by_id[pk] for pk in sorted(revisions)]
    for case in seen:
        _check(actor, case, revisions[case.pk], open_only=True)
    retried: list[RetryOutcome] = []
    nothing: list[int] = []
    for case in seen:
        outcome = _retry(case, actor)
        if outcome is None:
            nothing.append(case.pk)
        else:
            retried.append(outcome)
    if not retried:
        raise CaseConflict(
            f"No case of the group of case #{case_id} has anything left to retry; nothing was done."
        )
    return GroupRetry(
        retried=retried,
        nothing_to_retry=nothing,
        not_seen=sorted(set(by_id) - set(revisions)),
    )


@transaction.atomic
def case_bulk(
    *,
    actor: Actor,
    action: str,
    revisions: Mapping[int, int],
    assignee_id: int | None = None,
    text: str = "",
) -> list[Any]:
    """One action on a selection of cases (the queue page's bulk actions): `revisions` maps each
    selected case to the revision the person saw. All or nothing: every case is locked (in id
    order) and checked first (access, revision, still open), and one refusal refuses them all.
    `text` is a waiver's reason or a resolution's note. Returns the cases (for retry: the
    outcome of each; a case with nothing left to re-run is left out)."""
    if action not in BULK_ACTIONS:
        raise CaseRefused(f"Bulk actions are {', '.join(BULK_ACTIONS)}; not {action!r}.")
    if not revisions:
        raise CaseRefused("Select at least one case.")
    if len(revisions) > BULK_MAX:
        raise CaseRefused(f"Select at most {BULK_MAX} cases at once.")
    if action == "waive" and not text.strip():
        raise CaseRefused(_NO_REASON)
    if action == "assign" and assignee_id is None:
        raise CaseRefused("Say whom to assign the cases to.")
    cases = list(
        ExceptionCase.objects.select_for_update().filter(pk__in=list(revisions)).order_by("pk")
    )
    missing = sorted(set(revisions) - {case.pk for case in cases})
    if missing:
        raise CaseNotFound(f"There is no case {_ids(missing)}; nothing was done.")
    for case in cases:
        _check(actor, case, revisions[case.pk], open_only=True)
    done: list[Any] = []
    for case in cases:
        if action == "assign":
            done.append(_assign(case, actor, assignee_id))  # type: ignore[arg-type]
        elif action == "take":
            done.append(_assign(case, actor, _person(actor).pk, bulk=True))
        elif action == "unassign":
            done.append(_unassign(case, actor, bulk=True))
        elif action == "waive":
            done.append(_waive(case, actor, text))
        elif action == "resolve":
            done.append(_resolve(case, actor, text))
        else:
            outcome = _retry(case, actor)
            if outcome is not None:
                done.append(outcome)
    if action == "retry" and not done:
        raise CaseConflict("None of these cases has anything left to retry; nothing was done.")
    return done


# --- Checks ---------------------------------------------------------------------------------------


def _get(actor: Actor, case_id: int) -> ExceptionCase:
    case = ExceptionCase.objects.filter(pk=case_id).first()
    if case is None:
        raise CaseNotFound(f"There is no case #{case_id}.")
    _check_access(actor, case)
    return case


def _locked(
    actor: Actor, case_id: int, revision: int | None, *, open_only: bool = True
) -> ExceptionCase:
    """The case, locked for the rest of the transaction, once the actor may act on it as seen."""
    case = ExceptionCase.objects.select_for_update().filter(pk=case_id).first()
    if case is None:
        raise CaseNotFound(f"There is no case #{case_id}.")
    _check(actor, case, revision, open_only=open_only)
    return case


def _check(actor: Actor, case: ExceptionCase, revision: int | None, *, open_only: bool) -> None:
    _check_access(actor, case)
    if revision is not None and case.revision != revision:
        raise CaseConflict(_changed_since(actor, case, revision))
    if open_only and case.status != OPEN:
        raise CaseConflict(_closed(actor, case))


def _check_access(actor: Actor, case: ExceptionCase) -> None:
    if not case_access(actor).allows(case.queue):
        raise CaseForbidden(
            f"Case #{case.pk} is in the {_queue_name(case.queue)} queue, which you do not work "
            "in; nothing was done."
        )


def _person(actor: Actor) -> Any:
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise CaseRefused("Only a signed-in person can do this.")
    return actor


# --- The actions on a locked case ---------------------------------------------------------------


def _assign(case: ExceptionCase, actor: Actor, assignee_id: int, *, bulk: bool = False) -> Any:
    assignee = get_user_model().objects.filter(pk=assignee_id, is_active=True).first()
    if assignee is None:
        raise CaseRefused(f"There is no active user #{assignee_id} to assign case #{case.pk} to.")
    if not case_access(assignee).allows(case.queue):
        raise CaseRefused(
            f"{assignee.get_username()} does not work in the {_queue_name(case.queue)} queue, "
            f"so case #{case.pk} cannot be given to them; nothing was done."
        )
    if case.assignee_id == assignee.pk:
        if bulk:
            return case
        raise CaseConflict(
            f"Case #{case.pk} is assigned to {assignee.get_username()} already; nothing was done."
        )
    before = {"assignee": _username(case.assignee_id)}
    taken = actor is not None and assignee.pk == actor.pk
    if taken:
        action = Action.TAKEN
    elif case.assignee_id is None:
        action = Action.ASSIGNED
    else:
        action = Action.REASSIGNED
    case.assignee = assignee
    return _changed(
        case, actor, action, ["assignee"], before, {"assignee": assignee.get_username()}
    )


def _unassign(case: ExceptionCase, actor: Actor, *, bulk: bool = False) -> ExceptionCase:
    if case.assignee_id is None:
        if bulk:
            return case
        raise CaseConflict(f"Case #{case.pk} is not assigned to anyone; nothing was done.")
    before = {"assignee": _username(case.assignee_id)}
    case.assignee = None
    return _changed(case, actor, Action.UNASSIGNED, ["assignee"], before, {"assignee": None})


_NO_REASON = "A waiver needs a reason: say why this case needs no fix."


def _waive(case: ExceptionCase, actor: Actor, reason: str) -> ExceptionCase:
    reason = reason.strip()
    if not reason:
        raise CaseRefused(_NO_REASON)
    closed = case_resolve(
        case_id=case.pk, note=reason, status=ExceptionCase.Status.WAIVED, actor=actor
    )
    assert closed is not None  # noqa: S101 - locked above, so still there
    return closed


def _resolve(case: ExceptionCase, actor: Actor, note: str) -> ExceptionCase:
    person = _person(actor)
    note = note.strip() or f"Resolved by hand by {person.get_username()}."
    closed = case_resolve(case_id=case.pk, note=note, actor=actor)
    assert closed is not None  # noqa: S101 - locked above, so still there
    return closed


def _retry(case: ExceptionCase, actor: Actor) -> RetryOutcome | None:
    """Run the case type's retry handler; None when it found nothing to re-run (then nothing
    was written, so nothing is audited)."""
    handler = retry_handler_for(case)
    if handler is None:
        kind = CATALOGUE.get(case.case_type)
        fix = f" Fix its cause ({kind.fix_form.replace('_', ' ')})" if kind else " Fix its cause"
        raise CaseRefused(
            f"A {case.case_type.replace('_', ' ')} case has no work Concord can re-run."
            f"{fix}; it closes by itself once the cause is gone."
        )
    before = {"status": case.status, "record_count": case.record_count}
    result: RetryResult = handler(case)
    if result.count == 0:
        return None
    # The handler may have moved the case (a billing run that billed everything resolves it):
    # bump the revision on top of whatever it wrote, then read back what stands.
    ExceptionCase.objects.filter(pk=case.pk).update(revision=F("revision") + 1)
    case.refresh_from_db(fields=["revision", "status", "record_count", "resolved_at"])
    case_event(
        case=case,
        action=Action.RETRIED,
        actor=actor,
        before=before,
        after={
            "count": result.count,
            "summary": result.summary,
            "status": case.status,
            "record_count": case.record_count,
        },
    ).save()
    return RetryOutcome(
        case_id=case.pk,
        count=result.count,
        summary=result.summary,
        revision=case.revision,
        status=case.status,
    )


def _changed(
    case: ExceptionCase,
    actor: Actor,
    action: str,
    fields: Sequence[str],
    before: dict[str, Any],
    after: dict[str, Any],
) -> ExceptionCase:
    case.revision += 1
    case.save(update_fields=[*fields, "revision"])
    case_event(case=case, action=action, actor=actor, before=before, after=after).save()
    return case


# --- Words ----------------------------------------------------------------------------------------

_VERBS: dict[str, str] = {
    Action.OPENED: "opened",
    Action.RESOLVED: "resolved",
    Action.WAIVED: "waived",
    Action.ASSIGNED: "assigned",
    Action.REASSIGNED: "reassigned",
    Action.UNASSIGNED: "unassigned",
    Action.TAKEN: "took",
    Action.RETRIED: "retried",
    Action.FIXED: "fixed",
}


def _changed_since(actor: Actor, case: ExceptionCase, seen: int) -> str:
    """ "Ada retried this case 2 seconds ago; nothing was done." (the latest change since the
    revision the person saw)."""
    event = (
        CaseEvent.objects.filter(case=case, revision__gt=seen)
        .exclude(action=Action.COMMENTED)
        .order_by("-id")
        .first()
    )
    if event is None:
        return (
            f"Case #{case.pk} changed since you saw it (revision {seen}, now {case.revision}); "
            "nothing was done. Reload it."
        )
    return f"{_who_did(actor, event)} {_ago(event)}; nothing was done."


def _closed(actor: Actor, case: ExceptionCase) -> str:
    event = (
        CaseEvent.objects.filter(case=case, action__in=[Action.RESOLVED, Action.WAIVED])
        .order_by("-id")
        .first()
    )
    if event is None:
        return f"Case #{case.pk} is {case.status}; nothing was done."
    return f"{_who_did(actor, event)} {_ago(event)}; nothing was done."


def _who_did(actor: Actor, event: CaseEvent) -> str:
    """ "Ada retried this case", "You took this case", "Concord resolved this case"."""
    if event.actor_id is None:
        who = "Concord"
    elif actor is not None and event.actor_id == actor.pk:
        who = "You"
    else:
        who = event.actor_label
    verb = _VERBS.get(event.action, event.get_action_display().lower())
    text = f"{who} {verb} this case"
    if event.action in (Action.ASSIGNED, Action.REASSIGNED) and event.after.get("assignee"):
        text += f" to {event.after['assignee']}"
    return text


def _ago(event: CaseEvent) -> str:
    seconds = max(0, int((timezone.now() - event.at).total_seconds()))
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size or size == 1:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"  # pragma: no cover - the loop always returns


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(f"#{pk}" for pk in ids)


def _username(user_id: int | None) -> str | None:
    if user_id is None:
        return None
    user = get_user_model().objects.filter(pk=user_id).first()
    return user.get_username() if user is not None else str(user_id)


def _queue_name(code: str) -> str:
    name = WorkQueue.objects.filter(code=code).values_list("name", flat=True).first()
    return name or code
