from __future__ import annotations

import functools
from typing import Any

from django.http import HttpRequest
from django.urls import get_script_prefix, reverse

from dashboards.provisioning import BOARD_PERMISSIONS
from exceptions.access import case_access
from integrations.actuals import ACTUALS_PERMISSIONS

# (label, url name, permission or any of several). The navigation shows a section only to those
# who may open it.
SECTIONS: list[tuple[str, str, str | tuple[str, ...] | None]] = [
    ("Overview", "dashboards:home", None),
    ("Finance", "dashboards:finance", "dashboards.view_finance"),
    ("PMO", "dashboards:pmo", "dashboards.view_pmo"),
    ("Provisioning", "dashboards:provisioning", BOARD_PERMISSIONS),
    ("Sales ops", "dashboards:sales_ops", "dashboards.view_sales_ops"),
    ("Actuals", "dashboards:actuals", ACTUALS_PERMISSIONS),
    ("Integration admin", "dashboards:integration_admin", "dashboards.view_integration_admin"),
    ("Configuration", "console:index", "dashboards.view_integration_admin"),
]
# The exception queues: shown to whoever works in at least one queue (exceptions/access.py).
CASE_SECTIONS = [
    ("Cases", "exceptions:queue"),
    ("My work", "exceptions:my_work"),
    ("SLA", "exceptions:sla"),
]


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_sections": []}
    names = [
        name
        for label, name, perm in SECTIONS
        if perm is None
        or any(user.has_perm(p) for p in ((perm,) if isinstance(perm, str) else perm))
    ]
    labels = {name: label for label, name, _ in SECTIONS}
    if not case_access(user).none:
        names += [name for _, name in CASE_SECTIONS]
        labels.update({name: label for label, name in CASE_SECTIONS})
    prefix = get_script_prefix()
    return {
        "nav_sections": [
            {"label": labels[name], "url": url, "active": request.path == url}
            for name in names
            for url in (_path(prefix, name),)
        ]
    }


@functools.lru_cache(maxsize=64)
def _path(script_prefix: str, name: str) -> str:
    """A section's path: reversed once per process (and script prefix), not twice per page."""
    return reverse(name)
