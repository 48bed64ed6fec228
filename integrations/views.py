"""The webhook endpoint: one URL per connection. Thin: verify and store through the service."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from integrations.sync.webhooks import WebhookRefused, webhook_connection, webhook_receive


@csrf_exempt  # signed by the sender instead; there is no browser session here
@login_not_required
@require_POST
def webhook(request: HttpRequest, connection_id: int) -> JsonResponse:
    connection = webhook_connection(connection_id)
    if connection is None:
        return JsonResponse({"error": "No enabled connection with this id."}, status=404)
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
