"""The webhook endpoint: one URL per connection. Thin: verify and store through the service."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from integrations.models import Connection
from integrations.sync.webhooks import WebhookRefused, webhook_receive


@csrf_exempt  # signed by the sender instead; there is no browser session here
@login_not_required
@require_POST
def webhook(request: HttpRequest, connection_id: int) -> JsonResponse:
    connection = get_object_or_404(Connection, pk=connection_id, enabled=True)
    try:
        receipt = webhook_receive(
            connection=connection, body=request.body, headers=dict(request.headers)
        )
    except WebhookRefused as refused:
        return JsonResponse({"error": refused.message}, status=refused.status)
    # Answered only now, after the events are committed: a 2xx means nothing can be lost.
    return JsonResponse(
        {"accepted": receipt.accepted, "duplicates": receipt.duplicates}, status=200
    )
