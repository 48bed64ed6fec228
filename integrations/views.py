"""The webhook endpoint: one URL per connection. Thin: verify and store through the service.

In production the WSGI layer in integrations/wsgi.py answers these requests before Django's
middleware (the same service call); this view serves them under any other server.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from integrations.sync.webhooks import webhook_answer


@csrf_exempt  # signed by the sender instead; there is no browser session here
@login_not_required
@require_POST
def webhook(request: HttpRequest, connection_id: int) -> JsonResponse:
    if "chunked" in request.headers.get(
        "Transfer-Encoding", ""
    ).lower() and not request.headers.get("Content-Length"):
        # Django reads a body by its Content-Length; without one it would see an empty body and
        # answer "signature does not match", which sends the sender looking in the wrong place.
        return JsonResponse(
            {"error": "Send the delivery with a Content-Length (chunked bodies are not read)."},
            status=411,
        )
    status, body = webhook_answer(connection_id, request.body, dict(request.headers))
    return JsonResponse(body, status=status)
