"""Who sees and acts on which cases: the one rule, used by the selectors, the actions and the API.

A user sees and acts on the cases of the queues they work in: a queue's members are the users
of its role groups (WorkQueue.groups: Finance, PMO, ...) and its explicit members. Integration
admins (the role) and superusers see every queue. Anyone else, a user in no group included,
sees nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Q, Value

from exceptions.models import WorkQueue
from integrations.roles import INTEGRATION_ADMIN

# Cached on the user object for the rest of its request or task (two queries once).
_CACHE_ATTR = "_concord_case_access"
# What the access query answers for an integration admin, besides their queues' codes.
ALL_QUEUES = "*"


@dataclass(frozen=True)
class CaseAccess:
    all_queues: bool
    queues: frozenset[str]

    def q(self, prefix: str = "") -> Q:
        """The filter of the cases this user may see (`prefix`: "case__" from a related row)."""
        if self.all_queues:
            return Q()
        return Q(**{f"{prefix}queue__in": sorted(self.queues)})

    def allows(self, queue: str) -> bool:
        return self.all_queues or queue in self.queues

    @property
    def none(self) -> bool:
        return not self.all_queues and not self.queues


NOTHING = CaseAccess(all_queues=False, queues=frozenset())


def case_access(user: Any) -> CaseAccess:
    """The queues `user` works in (all of them for integration admins and superusers)."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return NOTHING
    cached = getattr(user, _CACHE_ATTR, None)
    if isinstance(cached, CaseAccess):
        return cached
    if user.is_superuser:
        access = CaseAccess(all_queues=True, queues=frozenset())
    else:
        # One query: the codes of the user's queues, and ALL_QUEUES if they are an integration
        # admin (no queue code is "*").
        codes = set(
            WorkQueue.objects.filter(Q(members=user) | Q(groups__user=user))
            .order_by()
            .values_list("code", flat=True)
            .union(
                Group.objects.filter(user=user, name=INTEGRATION_ADMIN)
                .annotate(mark=Value(ALL_QUEUES))
                .values_list("mark", flat=True)
            )
        )
        if ALL_QUEUES in codes:
            access = CaseAccess(all_queues=True, queues=frozenset())
        else:
            access = CaseAccess(all_queues=False, queues=frozenset(codes))
    setattr(user, _CACHE_ATTR, access)
    return access


def access_forget(user: Any) -> None:
    """Drop the cached answer (after a change of the user's groups or queues)."""
    if user is not None and hasattr(user, _CACHE_ATTR):
        delattr(user, _CACHE_ATTR)
