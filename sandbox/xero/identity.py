"""Xero's identity API: the client-credentials token and the list of connected tenants
(xero-identity.yaml)."""

from __future__ import annotations

import base64
import secrets
import time

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, form_fields, refuse
from .base import SYSTEM, XeroBase
from .tenants import TENANTS

CLIENT_ID = "concord-xero"
CLIENT_SECRET = "sandbox-xero-secret"  # noqa: S105 - a documented sandbox credential
TOKEN_TTL_S = 1800  # Xero access tokens live 30 minutes


class Identity(XeroBase):
    async def token(self, request: Request) -> Response:
        form = await form_fields(request)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                client_id = client_secret = None
        if form.get("grant_type") != "client_credentials":
            refuse(request, "auth")
            return JSON({"error": "unsupported_grant_type"}, 400)
        if client_id != CLIENT_ID or client_secret != CLIENT_SECRET:
            refuse(request, "auth")
            return JSON({"error": "invalid_client"}, 400)
        token = secrets.token_urlsafe(32)
        self.sandbox.tokens[token] = {"system": SYSTEM, "expires": time.time() + TOKEN_TTL_S}
        scope = str(
            form.get("scope") or "accounting.transactions accounting.contacts accounting.settings"
        )
        return JSON(
            {
                "access_token": token,
                "expires_in": TOKEN_TTL_S,
                "token_type": "Bearer",
                "scope": scope,
            }
        )

    async def connections(self, request: Request) -> Response:
        created = "2024-01-02T09:00:00.0000000Z"
        return JSON(
            [
                {
                    "id": t.connection_id,
                    "authEventId": "5c4f3a2b-1d0e-4f9a-8b7c-6d5e4f3a2b10",
                    "tenantId": t.id,
                    "tenantType": "ORGANISATION",
                    "tenantName": t.name,
                    "createdDateUtc": created,
                    "updatedDateUtc": created,
                }
                for t in TENANTS.values()
            ]
        )
