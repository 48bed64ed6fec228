"""Django's model backend, reading a user's own and their groups' permissions in one query.

Every page asks twice: the deny-by-default gate (config.middleware, integrations.roles) reads the
group permissions, the navigation (dashboards.context_processors) all of them. Django's
ModelBackend caches each set on the user object for the request but fills each with a query of
its own; this fills both with one (a UNION ALL), the same sets Django would read.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.db.models import Value

USER_CACHE = "_user_perm_cache"
GROUP_CACHE = "_group_perm_cache"


class OneQueryModelBackend(ModelBackend):
    def _get_permissions(self, user_obj: Any, obj: Any, from_name: str) -> set[str]:
        if (
            obj is None
            and user_obj.is_active
            and not user_obj.is_anonymous
            and not user_obj.is_superuser
            and not hasattr(user_obj, USER_CACHE)
            and not hasattr(user_obj, GROUP_CACHE)
        ):
            sets: dict[str, set[str]] = {"user": set(), "group": set()}
            # Semi-joins on the membership tables rather than Django's joins: less to plan.
            model = type(user_obj)
            own = model.user_permissions.through.objects.filter(user_id=user_obj.pk)
            groups = model.groups.through.objects.filter(user_id=user_obj.pk)
            by_group = Group.permissions.through.objects.filter(
                group_id__in=groups.values("group_id")
            )
            fields = ("source", "content_type__app_label", "codename")
            rows = (
                Permission.objects.filter(pk__in=own.values("permission_id"))
                .annotate(source=Value("user"))
                .values_list(*fields)
                .order_by()
                .union(
                    Permission.objects.filter(pk__in=by_group.values("permission_id"))
                    .annotate(source=Value("group"))
                    .values_list(*fields)
                    .order_by(),
                    all=True,
                )
            )
            for source, app_label, codename in rows:
                sets[source].add(f"{app_label}.{codename}")
            setattr(user_obj, USER_CACHE, sets["user"])
            setattr(user_obj, GROUP_CACHE, sets["group"])
        return super()._get_permissions(user_obj, obj, from_name)  # type: ignore[misc]
