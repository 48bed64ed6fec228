from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.http import HttpRequest, HttpResponseBase


class PagesLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Every page needs a login (deny by default), except the API.

    The API authenticates by session or token inside DRF, which answers 401/403 in JSON; a
    redirect to the login page would be the wrong answer for a token client.
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
        return super().process_view(request, view_func, view_args, view_kwargs)
