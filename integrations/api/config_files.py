"""/api/v1/config/: the configuration as one JSON document, for scripts promoting it from a test
installation to production (the console's /config/files/ page does the same for people).

- ``GET export/``: the document (integrations/workflows/config_files.py: versioned, natural
  keys, stable order, never a secret).
- ``POST import/?dry_run=1`` with the document as the body: what it would change, per section,
  and what would be refused; nothing is written. The answer carries ``sha256`` and
  ``diff_sha256``.
- ``POST import/?sha256=...&diff_sha256=...``: apply it, only with the hashes its dry run gave
  (400 without them; 409 when the file or the configuration changed since; 400 with the
  refusals when a service refuses anything, and then nothing is written).

Integration admins only, as the mappings API (403 for anyone else, 401 without credentials).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations.api.mappings import IntegrationAdmin
from integrations.workflows.config_files import (
    config_check_header,
    config_export,
    config_import,
)
from integrations.workflows.errors import ConfigPreviewStale


class ConfigExportView(APIView):
    """This installation's mappings, value maps, rules and connections (never credentials)."""

    permission_classes = [IntegrationAdmin]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        return Response(config_export())


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


class ConfigImportView(APIView):
    """Preview (``?dry_run=1``) or apply a configuration document."""

    permission_classes = [IntegrationAdmin]

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        parameters=[
            OpenApiParameter("dry_run", OpenApiTypes.BOOL, description="Preview only."),
            OpenApiParameter("sha256", OpenApiTypes.STR, description="The dry run's sha256."),
            OpenApiParameter(
                "diff_sha256", OpenApiTypes.STR, description="The dry run's diff_sha256."
            ),
        ],
        responses=OpenApiTypes.OBJECT,
    )
    def post(self, request: Request) -> Response:
        dry_run = _truthy(request.query_params.get("dry_run", ""))
        sha256 = request.query_params.get("sha256", "")
        diff_sha256 = request.query_params.get("diff_sha256", "")
        if not dry_run and not (sha256 and diff_sha256):
            return Response(
                {
                    "detail": [
                        "Preview first: POST the file with ?dry_run=1, then apply it with the "
                        "sha256 and diff_sha256 the preview gave (?sha256=...&diff_sha256=...)."
                    ]
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            document = config_check_header(request.data)
            result = config_import(
                document=document,
                actor=request.user,
                dry_run=dry_run,
                sha256=sha256,
                diff_sha256=diff_sha256,
            )
        except ConfigPreviewStale as stale:
            return Response({"detail": stale.messages}, status=status.HTTP_409_CONFLICT)
        except ValidationError as refused:
            return Response({"detail": refused.messages}, status=status.HTTP_400_BAD_REQUEST)
        body = result.as_dict()
        if not dry_run and not result.applied:
            body["detail"] = result.refusals or ["The file changes nothing: nothing to apply."]
            return Response(body, status=status.HTTP_400_BAD_REQUEST)
        return Response(body)
