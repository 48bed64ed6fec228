from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase

from integrations.roles import user_has_role

# Pages a signed-in user with no role may still open: signing out.
OPEN_TO_EVERY_USER = frozenset({"logout", "admin:logout"})


class PagesLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Every page needs a login and a role (deny by default), except the API.

    A signed-in user whose groups grant nothing gets the 403 page everywhere but the public pages
    (sign-in, health) and signing out; each page still checks its own permission on top.

    The API authenticates by session or token inside DRF, which answers 401/403 in JSON; a
    redirect to the login page would be the wrong answer for a token client. Its role gate is
    integrations.api.auth.HasRole.
    """

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponseBase | None:
        if request.path_info.startswith("/api/"):
            return None
        response = super().process_view(request, view_func, view_args, view_kwargs)
        if response is not None or not getattr(view_func, "login_required", True):
            return response
        match = request.resolver_match
        if match is not None and match.view_name in OPEN_TO_EVERY_USER:
            return None
        if not user_has_role(request.user):
            raise PermissionDenied("Your account has no role in Concord.")
        return None
