"""GET /api/v1/actuals/: actuals for forecasting (integrations/actuals.py), as JSON (default,
`?format=json`) or a streamed CSV (`?format=csv`), with the page's filters:

    period=month|quarter|week  from=YYYY-MM-DD  to=YYYY-MM-DD
    legal_entity=<id>  region=americas|emea|apac  customer=<id>  project=<code>

Finance, PMO and integration admins only (integrations.actuals.actuals_access); others 403.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations.actuals import (
    ActualsFilterSet,
    Period,
    actuals_access,
    actuals_csv_lines,
    actuals_data,
    actuals_filename,
    actuals_report,
)
from integrations.models import Project


class SeesActuals(BasePermission):
    message = "Actuals are for Finance, PMO and integration admins."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return actuals_access(request.user)


class CSVRenderer(BaseRenderer):
    """`?format=csv`. The report streams its own lines (actuals_csv_lines); this renders only
    what else a CSV request can get: a refusal, as field,message lines."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["field", "message"])
        items = data.items() if isinstance(data, dict) else [("detail", data)]
        for key, messages in items:
            for message in messages if isinstance(messages, list) else [messages]:
                writer.writerow([key, str(message)])
        return out.getvalue().encode()


PARAMETERS = [
    OpenApiParameter("format", str, enum=["json", "csv"], description="Default json."),
    OpenApiParameter(
        "period", str, enum=[code for code, _ in Period.CHOICES], description="Default month."
    ),
    OpenApiParameter(
        "from",
        OpenApiTypes.DATE,
        description="Widened to the start of its period (default: 12 months, 4 quarters or "
        "13 weeks back).",
    ),
    OpenApiParameter(
        "to", OpenApiTypes.DATE, description="Widened to the end of its period (default today)."
    ),
    OpenApiParameter("legal_entity", int, description="A legal entity's id."),
    OpenApiParameter("region", str, enum=Project.Region.values),
    OpenApiParameter("customer", int, description="A customer's id."),
    OpenApiParameter("project", str, description="A project's code."),
]


class ActualsView(APIView):
    """Per project and period: approved hours (billable, non-billable), revenue, cost and margin
    in the project's currency and in its legal entity's base currency, with totals per base
    currency. A figure that needs an exchange rate that does not exist is null, and the row's
    `missing_rates` names the pair."""

    permission_classes = [SeesActuals]
    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        operation_id="actuals",
        parameters=PARAMETERS,
        responses={
            (200, "application/json"): OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="{period, from, to, rows: [...], totals: [...]}: the columns of "
                "integrations.actuals.COLUMNS per row, decimals as strings, missing as null.",
            ),
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="A header line, then one line per row."
            ),
            400: OpenApiResponse(description="A filter is not valid (per field, in words)."),
            403: OpenApiResponse(description="Not Finance, PMO or an integration admin."),
        },
    )
    def get(self, request: Request) -> HttpResponseBase:
        filterset = ActualsFilterSet(request.query_params, queryset=Project.objects.all())
        if not filterset.is_valid():
            return Response(filterset.errors, status=400)
        report = actuals_report(filterset=filterset)
        if request.accepted_renderer.format == "csv":
            response = StreamingHttpResponse(
                actuals_csv_lines(report), content_type="text/csv; charset=utf-8"
            )
            response["Content-Disposition"] = (
                f'attachment; filename="{actuals_filename(report, "csv")}"'
            )
            return response
        return Response(actuals_data(report))
