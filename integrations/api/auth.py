"""The API's doors: the token endpoint (under lockout, with a tight throttle of its own), and
the role gate of the index, the schema and the docs. The throttles are in throttles.py."""

from __future__ import annotations

from typing import Any

from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.routers import APIRootView
from rest_framework.views import APIView

from integrations.api.throttles import TokenThrottle
from integrations.roles import user_has_role


class HasRole(BasePermission):
    """Deny by default: a signed-in user in no role group is refused (403)."""

    message = "Your account has no role in Concord; ask an integration admin for one."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return user_has_role(request.user)


class TokenObtainView(ObtainAuthToken):
    """Exchange a username and password for the user's API token (`Authorization: Token <key>`).

    Repeated failed sign-ins lock the username from the caller's address for a while (429 with
    Retry-After), and each address may ask only a few times a minute.
    """

    throttle_classes = [TokenThrottle]

    def get_serializer_context(self) -> dict[str, Any]:
        # The password check goes through django-axes' backend, which flags the request it is
        # given when the sign-in is locked out. Hand it Django's request, not DRF's wrapper, so
        # the flag lands where AxesMiddleware looks: the answer is then the lockout error
        # (config/lockout.py) rather than DRF's generic "unable to log in".
        return {**super().get_serializer_context(), "request": self.request._request}


class ApiRootView(APIRootView):
    """The index of the API's endpoints, for users who hold a role."""

    permission_classes = [HasRole]
