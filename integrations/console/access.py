"""Who may use the configuration console: integration admins (and superusers), nobody else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import permission_required

CONSOLE_PERMISSION = "dashboards.view_integration_admin"


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A console view: 403 (the portal's refusal page) for anyone without the admin permission."""
    return permission_required(CONSOLE_PERMISSION, raise_exception=True)(view)
