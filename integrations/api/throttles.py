"""The API's throttles: per user on every endpoint, per client address on the token endpoint.

Over the rate DRF answers 429 with Retry-After. Rates come from
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] (config/settings.py, from the environment) and are read
on every request, so a test can lower them with the settings fixture. This module is loaded by
DRF's settings while rest_framework.views is still being defined: it imports nothing of DRF's
views at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle, UserRateThrottle

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView


class _RatesFromSettings(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        # SimpleRateThrottle binds the rates dict once, at import; read the current one instead.
        rate = api_settings.DEFAULT_THROTTLE_RATES[str(self.scope)]
        return None if rate is None else str(rate)


class UserThrottle(_RatesFromSettings, UserRateThrottle):
    """Every API call, counted per user (per client address before sign-in): scope `user`."""

    scope = "user"


class TokenThrottle(_RatesFromSettings):
    """Token requests counted per client address, signed in or not: scope `token`. The lockout
    stops guessing one username; this stops one address trying many."""

    scope = "token"

    def get_cache_key(self, request: Request, view: APIView) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
