"""Salesforce's OAuth 2.0 client-credentials token and the API versions list."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, form_fields, refuse
from .base import SalesforceBase
from .schema import API_VERSION, DATA, ORG_ID, SYSTEM

CLIENT_ID = "concord-salesforce"
CLIENT_SECRET = "sandbox-salesforce-secret"  # noqa: S105 - a documented sandbox credential


class Auth(SalesforceBase):
    async def token(self, request: Request) -> Response:
        form = await form_fields(request)
        if form.get("grant_type") != "client_credentials":
            refuse(request, "auth")
            return JSON(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                400,
            )
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            refuse(request, "auth")
            return JSON(
                {"error": "invalid_client", "error_description": "invalid client credentials"}, 400
            )
        token = f"{ORG_ID}!{secrets.token_urlsafe(32)}"
        self.sandbox.tokens[token] = {"system": SYSTEM, "expires": float("inf")}
        issued = str(int(time.time() * 1000))
        instance = f"{str(request.base_url).rstrip('/')}/salesforce"
        return JSON(
            {
                "access_token": token,
                "instance_url": instance,
                "id": f"{instance}/id/{ORG_ID}/0055g00000SandbxAAA",
                "token_type": "Bearer",
                "issued_at": issued,
                "signature": base64.b64encode(
                    hashlib.sha256((instance + issued).encode()).digest()
                ).decode(),
            }
        )

    async def versions(self, request: Request) -> Response:
        return JSON([{"label": "Spring '24", "url": DATA, "version": API_VERSION[1:]}])
