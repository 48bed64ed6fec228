"""The portal's roles as Django groups, and what each may do. Deny by default.

Groups are kept in sync with this table after every migrate, so a new model or permission
reaches the roles without a hand-written data migration.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, Group, Permission, PermissionsMixin
from django.db import transaction

FINANCE = "Finance"
PMO = "PMO"
SALES_OPS = "Sales ops"
INTEGRATION_ADMIN = "Integration admin"
VIEWER = "Viewer"
ROLES = (FINANCE, PMO, SALES_OPS, INTEGRATION_ADMIN, VIEWER)

CANONICAL_MODELS = (
    "legalentity",
    "customer",
    "contract",
    "project",
    "resource",
    "assignment",
    "ratecard",
    "timeentry",
    "expense",
    "milestone",
    "billingevent",
    "invoice",
    "payment",
    "exchangerate",
    "taxrate",
)


def _view(*models: str) -> set[str]:
    return {f"integrations.view_{m}" for m in models}


def _edit(*models: str) -> set[str]:
    return {f"integrations.{action}_{m}" for m in models for action in ("view", "add", "change")}


ROLE_PERMISSIONS: dict[str, set[str]] = {
    VIEWER: _view(*CANONICAL_MODELS),
    FINANCE: _view(*CANONICAL_MODELS)
    | _edit("customer", "legalentity", "taxrate", "exchangerate", "invoice", "payment")
    | _edit("billingevent")
    | _view("reconciliationrun", "reconciliationgap")
    | {"dashboards.view_finance"},
    PMO: _view(*CANONICAL_MODELS)
    | _edit("project", "assignment", "resource", "timeentry", "expense", "milestone")
    | {"dashboards.view_pmo"},
    SALES_OPS: _view(*CANONICAL_MODELS)
    | _edit("customer", "contract", "ratecard")
    | {"dashboards.view_sales_ops"},
    INTEGRATION_ADMIN: _view(*CANONICAL_MODELS)
    | _edit("connection", "crossreference", "ownershiprule", "routingrule")
    | _edit("mappingset", "fieldmapping", "valuemap", "valuemapentry")
    | _edit("outboxmessage", "inboundmessage")  # change = replay
    | _view("syncattempt", "connectionhealth", "pollcursor")
    | _view("reconciliationrun", "reconciliationgap")
    | {
        "integrations.delete_crossreference",
        "integrations.view_auditevent",
        "integrations.view_heartbeat",
        "dashboards.view_integration_admin",
        "django_celery_beat.view_periodictask",
        "django_celery_beat.change_periodictask",
    },
}


def roles_sync() -> None:
    """Create the role groups and set their permissions exactly to ROLE_PERMISSIONS."""
    wanted = set().union(*ROLE_PERMISSIONS.values())
    by_name: dict[str, Permission] = {}
    for perm in Permission.objects.select_related("content_type"):
        name = f"{perm.content_type.app_label}.{perm.codename}"
        if name in wanted:
            by_name[name] = perm
    with transaction.atomic():
        for role, names in ROLE_PERMISSIONS.items():
            group, _ = Group.objects.get_or_create(name=role)
            group.permissions.set([by_name[n] for n in sorted(names) if n in by_name])


def user_has_role(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether the user holds a role: a group that grants something (superusers hold them all).

    The deny-by-default gate of the pages and the API's index, schema and docs. It reads the
    group permissions Django caches on the user object, the same set the page's own permission
    check reads next, so the gate costs no query of its own on a page that checks one.
    """
    return (
        isinstance(user, PermissionsMixin)
        and user.is_authenticated
        and bool(user.get_group_permissions())
    )
