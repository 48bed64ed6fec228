from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import reverse

# (label, url name, permission). The navigation shows a section only to those who may open it.
SECTIONS = [
    ("Overview", "dashboards:home", None),
    ("Finance", "dashboards:finance", "dashboards.view_finance"),
    ("PMO", "dashboards:pmo", "dashboards.view_pmo"),
    ("Sales ops", "dashboards:sales_ops", "dashboards.view_sales_ops"),
    ("Integration admin", "dashboards:integration_admin", "dashboards.view_integration_admin"),
]


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_sections": []}
    return {
        "nav_sections": [
            {"label": label, "url": reverse(name), "active": request.path == reverse(name)}
            for label, name, perm in SECTIONS
            if perm is None or user.has_perm(perm)
        ]
    }
