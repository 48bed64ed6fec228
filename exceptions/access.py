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
    # The queues the user may see when not all of them (empty for an integration admin).
    queues: frozenset[str]
    # The queues the user is a member of (an integration admin's own, besides seeing all).
    own: frozenset[str] = frozenset()

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
    # One query: the codes of the user's queues, and ALL_QUEUES if they are an integration
    # admin (no queue code is "*"). Semi-joins on the membership tables, not joins and a
    # DISTINCT: a tenth of the planning.
    groups = Group.user_set.through.objects.filter(user_id=user.pk)
    by_group = WorkQueue.groups.through.objects.filter(
        group_id__in=groups.values("group_id")
    ).values("workqueue_id")
    named = WorkQueue.members.through.objects.filter(user_id=user.pk).values("workqueue_id")
    codes = set(
        WorkQueue.objects.filter(Q(pk__in=by_group) | Q(pk__in=named))
        .order_by()
        .values_list("code", flat=True)
        .union(
            Group.objects.filter(user=user, name=INTEGRATION_ADMIN)
            .annotate(mark=Value(ALL_QUEUES))
            .values_list("mark", flat=True)
        )
    )
    own = frozenset(codes - {ALL_QUEUES})
    if user.is_superuser or ALL_QUEUES in codes:
        access = CaseAccess(all_queues=True, queues=frozenset(), own=own)
    else:
        access = CaseAccess(all_queues=False, queues=own, own=own)
    setattr(user, _CACHE_ATTR, access)
    return access


def access_forget(user: Any) -> None:
    """Drop the cached answer (after a change of the user's groups or queues)."""
    if user is not None and hasattr(user, _CACHE_ATTR):
        delattr(user, _CACHE_ATTR)
