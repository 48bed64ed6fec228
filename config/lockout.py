"""How the portal answers a locked-out sign-in (django-axes), and whose address a request is.

Axes counts failed sign-ins per username and client address (AXES_LOCKOUT_PARAMETERS); past the
limit it refuses even the right password until the cool-off has passed since the last failure.
AxesMiddleware then replaces the answer with `lockout_response`: a page for the sign-in forms,
a JSON error for the API's token endpoint, both 429 with Retry-After.
"""

from __future__ import annotations

import math
from datetime import timedelta

from axes.helpers import get_client_parameters, get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from rest_framework.throttling import BaseThrottle


def client_ip(request: HttpRequest) -> str | None:
    """The client address by the same rule as the API's throttles (REST_FRAMEWORK["NUM_PROXIES"]:
    REMOTE_ADDR, or the entry that many hops from the right of X-Forwarded-For), so a lockout
    and a throttle never disagree on who is asking."""
    return BaseThrottle().get_ident(request)  # type: ignore[arg-type]


def _seconds_left(request: HttpRequest, credentials: dict[str, str] | None) -> int:
    """Seconds until the lock lifts: the cool-off counted from the latest failure that counts."""
    cool_off = get_cool_off(request) or timedelta(0)
    username = get_client_username(request, credentials)
    latest = None
    for filters in get_client_parameters(
        username,
        request.axes_ip_address,  # type: ignore[attr-defined]
        request.axes_user_agent,  # type: ignore[attr-defined]
        request,
        credentials,
    ):
        found = AccessAttempt.objects.filter(**filters).aggregate(at=Max("attempt_time"))["at"]
        if found is not None and (latest is None or found > latest):
            latest = found
    if latest is None:
        return math.ceil(cool_off.total_seconds())
    return max(1, math.ceil((latest + cool_off - timezone.now()).total_seconds()))


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None,
    credentials: dict[str, str] | None,
) -> HttpResponse:
    seconds = _seconds_left(request, credentials)
    minutes = math.ceil(seconds / 60)
    message = (
        f"Too many failed sign-ins. Signing in is locked; "
        f"try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )
    response: HttpResponse
    if request.path_info.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=429)
    else:
        response = render(
            request,
            "registration/locked_out.html",
            {"message": message, "minutes": minutes},
            status=429,
        )
    response["Retry-After"] = str(seconds)
    return response
