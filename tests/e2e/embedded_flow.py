"""The sync engine on the embedded default (SQLite in WAL mode, no PostgreSQL, no Redis), as
`make run` runs it on a fresh machine: the paths PostgreSQL never takes (the page writer inline,
COPY's INSERT fallback, one INSERT per webhook event, in-process limits) against the sandbox.

    python -m tests.e2e.embedded_flow <sandbox url>     (run by test_embedded_default.py)

Prints one JSON object with what it did; the test checks it against the sandbox."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time

import httpx


def main(sandbox_url: str) -> dict[str, object]:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection as db

    call_command("migrate", interactive=False, verbosity=0)

    from integrations.mapping.services import mapping_defaults_install
    from integrations.models import (
        BillingEvent,
        Connection,
        CrossReference,
        InboundMessage,
        Invoice,
        OutboxMessage,
        TimeEntry,
    )
    from integrations.sync.dispatch import outbox_dispatch
    from integrations.sync.inbound import inbound_process_batch
    from integrations.sync.polling import poll_connection
    from integrations.sync.webhooks import webhook_receive
    from integrations.workflows.time_to_erp import billing_run
    from tests.firms import approved_time_firm

    # 1. Approved time to Xero: the billing run and the dispatcher, in this process.
    xero = approved_time_firm(sandbox_url, projects=12, entries_per_project=5)
    report = billing_run()
    deadline = time.monotonic() + 60
    while (
        OutboxMessage.objects.exclude(state__in=["done", "parked", "skipped"]).exists()
        and time.monotonic() < deadline
    ):
        outbox_dispatch(connection_id=xero.pk, worker="embedded")
    # 2. Harvest polled: clients, users, projects, time entries, in dependency order.
    harvest = Connection(
        name="Harvest (embedded)",
        vendor="harvest",
        role="psa",
        base_url=f"{sandbox_url}/harvest/v2",
        rate_limit_per_minute=100_000,
    )
    harvest.credentials = {
        "access_token": "sandbox-harvest-token",
        "account_id": "100001",
        "webhook_secret": "embedded-secret",
    }
    harvest.save()
    mapping_defaults_install(connection=harvest)
    polls = poll_connection(connection_id=harvest.pk)
    # 3. The entry changes in Harvest; a signed change-feed webhook says so; stored, applied.
    polled = TimeEntry.objects.filter(source_system="psa").order_by("pk").first()
    assert polled is not None
    external_id = CrossReference.objects.get(
        connection=harvest, content_type__model="timeentry", object_id=polled.pk
    ).external_id
    changed = httpx.patch(
        f"{sandbox_url}/_control/records/harvest/time_entries/{external_id}",
        json={"notes": "Changed after the poll"},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    body = json.dumps(
        {
            "system": "harvest",
            "events": [
                {"id": "evt-embedded", "object": "time_entries", "record_id": int(external_id)}
            ],
        }
    ).encode()
    ts = str(int(time.time()))
    signature = hmac.new(b"embedded-secret", ts.encode() + b"." + body, hashlib.sha256)
    headers = {
        "x-sandbox-timestamp": ts,
        "x-sandbox-signature": f"v1={signature.hexdigest()}",
        "x-sandbox-event-id": "delivery-embedded",
    }
    first = webhook_receive(connection=harvest, body=body, headers=headers)
    again = webhook_receive(connection=harvest, body=body, headers=headers)
    processed = inbound_process_batch(connection_id=harvest.pk)
    return {
        "database": db.vendor,
        "billed": report.billed,
        "invoices": Invoice.objects.count(),
        "invoiced_events": BillingEvent.objects.filter(status="invoiced").count(),
        "outbox": {s: OutboxMessage.objects.filter(state=s).count() for s in ("done", "parked")},
        "polled_time_entries": polls["time_entries"].read,
        "poll_failed": sum(r.failed for r in polls.values()),
        "poll_errors": list(
            InboundMessage.objects.filter(source="poll", state="failed").values_list(
                "object_type", "error"
            )
        ),
        "time_entries_from_psa": TimeEntry.objects.filter(source_system="psa").count(),
        "webhook": [first.accepted, again.duplicates],
        "webhook_processed": processed,
        "webhook_state": InboundMessage.objects.get(dedupe_key="event:evt-embedded").state,
        "notes_after_webhook": TimeEntry.objects.get(pk=polled.pk).notes,
    }


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    print(json.dumps(main(sys.argv[1])))
