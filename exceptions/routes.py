"""People's writes of case routing rules (``CaseRoute``: case type, process, legal entity,
region -> queue and priority) and of the SLA per priority (``SlaPolicy``), validated and
audited.

A routing rule is only as good as the names in it: a case type the catalogue does not know, a
process no code opens cases for, or a region no project has would match no case and look as
if it did, so each is refused in words; so is a second rule for exactly the same conditions
(the oldest would win every tie, and the newer would never apply). Which rule wins for a case
is exceptions/services.py ``_route``: the most specific. Writes are audited as configuration
rows (integrations/services/config_rows.py: object type ``caseroute`` / ``slapolicy``, with
before and after values); the cases themselves keep their own trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet, Value
from django.db.models.functions import Coalesce

from exceptions.catalogue import CATALOGUE
from exceptions.models import CaseRoute, ExceptionCase, SlaPolicy
from integrations.models import Project
from integrations.services.config_rows import (
    config_row_create,
    config_row_delete,
    config_row_update,
)

Actor = AbstractBaseUser | AnonymousUser | None

# The processes that open cases: the workflows' (time_to_erp, fix_in_place), the reference
# data links (reference_data), and the sync engine's inbound and polling steps. A test checks
# each code constant is here; a process a case has been opened for is accepted too.
PROCESSES: dict[str, str] = {
    "time_to_erp": "Approved time to ERP invoices",
    "fix_in_place": "Fixes made on a case",
    "reference_data": "Reference data and project links",
    "inbound": "Changes received from a system",
    "polling": "Polling a system",
}
ROUTE_FIELDS = ("case_type", "process", "legal_entity", "region", "queue", "priority", "note")


def process_choices() -> list[tuple[str, str]]:
    """The known processes, and any other a case has been opened for."""
    seen = set(ExceptionCase.objects.order_by().values_list("process", flat=True).distinct()[:200])
    extra = sorted(p for p in seen if p and p not in PROCESSES)
    return [*PROCESSES.items(), *((p, p.replace("_", " ")) for p in extra)]


def case_route_list() -> QuerySet[CaseRoute]:
    """The routing rules with their queue and legal entity, and sort values for the columns
    that may be empty ("" for none, 0 for the catalogue's priority)."""
    return CaseRoute.objects.select_related("legal_entity", "queue").annotate(
        entity_code=Coalesce("legal_entity__code", Value("")),
        queue_code=Coalesce("queue_id", Value("")),
        priority_sort=Coalesce("priority", Value(0)),
    )


def sla_policy_list() -> QuerySet[SlaPolicy]:
    return SlaPolicy.objects.order_by("priority")


def _route_problems(values: Mapping[str, Any], route: CaseRoute | None) -> dict[str, str]:
    problems: dict[str, str] = {}
    case_type = str(values.get("case_type") or "")
    if case_type and case_type not in CATALOGUE:
        problems["case_type"] = f"'{case_type}' is not a case type in the catalogue."
    process = str(values.get("process") or "")
    if process and process not in dict(process_choices()):
        problems["process"] = (
            f"No case is opened for a process '{process}'; choose one of: "
            f"{', '.join(dict(process_choices()))}."
        )
    region = str(values.get("region") or "")
    if region and region not in Project.Region.values:
        problems["region"] = (
            f"'{region}' is not a region; choose one of: {', '.join(Project.Region.values)}."
        )
    if not values.get("queue") and not values.get("priority"):
        problems["__all__"] = (
            "Choose a queue, a priority or both: a rule that sets neither changes nothing."
        )
    if problems:
        return problems
    entity = values.get("legal_entity")
    same = CaseRoute.objects.filter(
        case_type=case_type,
        process=process,
        region=region,
        legal_entity=entity if entity else None,
    )
    if route is not None:
        same = same.exclude(pk=route.pk)
    twin = same.first()
    if twin is not None:
        problems["__all__"] = (
            f"Rule #{twin.pk} already routes cases with exactly these conditions "
            f"({twin}); change that rule instead."
        )
    return problems


def _route_values(data: Mapping[str, Any], route: CaseRoute | None) -> dict[str, Any]:
    values = {name: getattr(route, name) for name in ROUTE_FIELDS} if route else {}
    values.update({k: v for k, v in data.items() if k in ROUTE_FIELDS})
    for name in ("case_type", "process", "region", "note"):
        values[name] = values.get(name) or ""
    for name in ("legal_entity", "queue", "priority"):
        values[name] = values.get(name) or None
    return values


@transaction.atomic
def case_route_create(*, data: Mapping[str, Any], actor: Actor) -> CaseRoute:
    values = _route_values(data, None)
    problems = _route_problems(values, None)
    if problems:
        raise ValidationError(problems)
    return config_row_create(model=CaseRoute, data=values, actor=actor)


@transaction.atomic
def case_route_update(*, route: CaseRoute, data: Mapping[str, Any], actor: Actor) -> CaseRoute:
    values = _route_values(data, route)
    problems = _route_problems(values, route)
    if problems:
        raise ValidationError(problems)
    return config_row_update(row=route, data=values, actor=actor)


@transaction.atomic
def case_route_delete(*, route: CaseRoute, actor: Actor) -> None:
    """Cases opened from now on route by the next most specific rule, else the catalogue;
    open cases stay where they are."""
    config_row_delete(row=route, actor=actor)


@transaction.atomic
def sla_policy_update(
    *, policy: SlaPolicy, resolve_within: timedelta, due_soon_within: timedelta, actor: Actor
) -> SlaPolicy:
    """The time to resolve a case of the policy's priority (for cases opened from now on) and
    how close to the deadline it counts as due soon (for every open case)."""
    problems: dict[str, str] = {}
    if resolve_within <= timedelta(0):
        problems["resolve_within"] = "The time to resolve must be more than nothing."
    if due_soon_within < timedelta(0):
        problems["due_soon_within"] = "Due soon cannot be negative."
    elif not problems and due_soon_within >= resolve_within:
        problems["due_soon_within"] = (
            "Due soon must be shorter than the time to resolve, or every case would be due soon "
            "from the moment it opens."
        )
    if problems:
        raise ValidationError(problems)
    return config_row_update(
        row=policy,
        data={"resolve_within": resolve_within, "due_soon_within": due_soon_within},
        actor=actor,
    )
