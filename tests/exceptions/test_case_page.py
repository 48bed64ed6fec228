"""The case page (/cases/<id>/) and its actions, through Django's test client: what a person
reads on it, each action done and audited, refusals in words (someone acted first, a waiver
without a reason, not your queue, no such case), and a fixed number of queries whatever the case
holds."""

from __future__ import annotations

import html
import itertools
import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from exceptions import actions
from exceptions.models import CaseEvent, ExceptionCase
from exceptions.services import Blocked, case_open_or_join
from integrations.models import (
    Connection,
    CrossReference,
    InboundMessage,
    OutboxMessage,
    SyncAttempt,
)
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.exceptions.cases import (
    admin_user,
    finance_case,
    finance_user,
    fresh,
    pmo_user,
)
from tests.factories import CustomerFactory, TimeEntryFactory, make_connection

pytestmark = pytest.mark.django_db

_names = itertools.count(1)
# What Xero answers when an invoice's tax rate needs the contact's tax number (the sandbox's
# words, sandbox/xero/invoices.py).
XERO_REFUSAL = {
    "ErrorNumber": 10,
    "Type": "ValidationException",
    "Message": "A validation exception occurred",
    "Elements": [{"ValidationErrors": [{"Message": "TaxNumber is required"}]}],
}


# --- Builders (the browser tests use them too) ----------------------------------------------------


def xero(name: str = "") -> Connection:
    return make_connection(name=name or f"Xero (Demo UK {next(_names)})")


def harvest() -> Connection:
    return make_connection(
        name=f"Harvest (demo {next(_names)})",
        role="psa",
        vendor="harvest",
        base_url="http://127.0.0.1:8100/harvest/v2",
    )


def held_time(count: int, *, cross_referenced_in: Connection | None = None) -> list[Blocked]:
    """`count` real time entries (EUR 105.00, 1.5 hours each), each cross-referenced to its
    Harvest entry when a connection is given."""
    held = []
    entry_type = ContentType.objects.get_by_natural_key("integrations", "timeentry")
    for entry in TimeEntryFactory.create_batch(count):
        if cross_referenced_in is not None:
            CrossReference.objects.create(
                content_type=entry_type,
                object_id=entry.pk,
                connection=cross_referenced_in,
                external_id=f"hv-{entry.pk}",
            )
        held.append(
            Blocked("timeentry", entry.pk, f"TE-{entry.pk}", Decimal("105"), "EUR", Decimal("1.5"))
        )
    return held


def park(case: ExceptionCase, rows: int, *, attempts: int = 1, conn: Connection | None = None):
    """`rows` invoices to Xero parked on `case`, each refused `attempts` times."""
    conn = conn or xero()
    customer = CustomerFactory.create(name="Umbrella GmbH")
    batch = [
        outbox_message(
            connection=conn,
            process="time_to_erp",
            step="post_invoice",
            operation="put_invoices",
            record=CustomerFactory.create(),
            version=1,
            payload={
                "Invoices": [
                    {
                        "Type": "ACCREC",
                        "Contact": {"Name": customer.name},
                        "Reference": f"CONCORD-INV-{case.pk}-{i}",
                        "LineItems": [{"Description": "Consulting", "Quantity": 7.5}],
                    }
                ]
            },
        )
        for i in range(rows)
    ]
    outbox_enqueue(messages=batch)
    parked = OutboxMessage.objects.filter(idempotency_key__in=[m.idempotency_key for m in batch])
    parked.update(state="parked", exception_case=case, last_error="TaxNumber is required")
    for row in parked:
        for _ in range(attempts):
            attempt = SyncAttempt.objects.create(
                connection=conn,
                operation="put_invoices",
                started_at=row.created_at,
                latency_ms=87,
                status_code=400,
                outcome="business",
                error="TaxNumber is required",
                vendor_response=json.dumps(XERO_REFUSAL),
            )
            attempt.messages.add(row)
    return list(parked.order_by("pk"))


def parked_case(rows: int = 3, about: str = "customer Umbrella GmbH") -> ExceptionCase:
    """A finance case whose Xero invoices are parked: retrying it replays them."""
    case = finance_case(about, records=held_time(rows))
    park(case, rows)
    return case


def mapping_case_with_payload() -> tuple[ExceptionCase, InboundMessage]:
    """An inbound Xero contact Concord could not map, held on a case (integration admins')."""
    conn = xero()
    message = InboundMessage.objects.create(
        connection=conn,
        source="webhook",
        object_type="Contacts",
        external_id="c-4711",
        dedupe_key="evt-4711",
        payload={"ContactID": "c-4711", "Name": "Umbrella GmbH", "DefaultCurrency": "CHF"},
        state="failed",
        error="No value map entry for currency CHF",
    )
    case = case_open_or_join(
        case_type="mapping_error",
        subject={
            "connection_id": conn.pk,
            "connection": conn.name,
            "object_type": "Contacts",
            "reason": "no value map entry for currency CHF",
        },
        records=[Blocked("inboundmessage", message.pk, "Contacts c-4711")],
        process="inbound",
        step="mapping",
        connection_id=conn.pk,
    )
    return case, message


# --- Helpers --------------------------------------------------------------------------------------


def signed_in(person: User) -> Client:
    client = Client()
    client.force_login(person)
    return client


def page_of(case: ExceptionCase) -> str:
    return reverse("exceptions:case", args=[case.pk])


def act(case: ExceptionCase, action: str) -> str:
    return reverse("exceptions:action", args=[case.pk, action])


HTMX = {"HX-Request": "true"}


def text(response: Any) -> str:
    """The page's text as a person reads it: tags dropped, entities decoded, spaces collapsed."""
    body = re.sub(r"<[^>]+>", " ", response.content.decode())
    return re.sub(r"\s+", " ", html.unescape(body))


def str_of(client: Client, case: ExceptionCase) -> str:
    response = client.get(page_of(case))
    assert response.status_code == 200
    return response.content.decode()


def hidden_revisions(response: Any) -> set[str]:
    return set(re.findall(r'name="revision" value="(\d+)"', response.content.decode()))


# --- What the page shows --------------------------------------------------------------------------


def test_the_page_shows_the_message_the_impact_and_what_is_blocked() -> None:
    ada = finance_user(username="ada")
    hv = harvest()
    case = finance_case("customer Umbrella GmbH", records=held_time(3, cross_referenced_in=hv))
    response = signed_in(ada).get(page_of(case))
    assert response.status_code == 200
    shown = text(response)
    assert "Vendor validation Open" in shown
    assert case.message in shown
    assert "Xero says: TaxNumber is required" in shown
    assert "EUR 315.00 blocked" in shown
    assert "4.50 hours" in shown
    assert "3 records held" in shown
    assert "Queue Finance Priority P2 (high)" in shown
    assert "On time: due in" in shown
    assert "Nobody yet" in shown
    body = response.content.decode()
    for held in case.blocked_records.all():
        # The canonical record in the API, and the same record in Harvest.
        assert f'href="{reverse("timeentry-detail", args=[held.record_id])}"' in body
        assert f"{hv.name}: hv-{held.record_id}" in shown
    assert "Time entry" in shown
    assert "and " not in shown.split("What is blocked")[1].split("Source payload")[0]
    # The fix form loads into its section; the link is the way there without JavaScript.
    fix = reverse("exceptions:fix", args=[case.pk])
    assert f'<section id="fix" aria-label="Fix in place" hx-get="{fix}" hx-trigger="load"' in body
    assert f'<a href="{fix}">Fix customer billing profile</a>' in body


def test_the_sla_reads_breached_or_due_soon_in_words() -> None:
    case = finance_case()
    client = signed_in(finance_user())
    now = timezone.now()
    ExceptionCase.objects.filter(pk=case.pk).update(sla_due_at=now - timedelta(hours=2))
    assert re.search(
        r'<span class="sla breached">Breached 2\shours ago</span>', str_of(client, case)
    )
    # P2's SlaPolicy row: due soon within 4 hours of the deadline.
    ExceptionCase.objects.filter(pk=case.pk).update(sla_due_at=now + timedelta(minutes=90))
    assert re.search(
        r'<span class="sla due_soon">Due soon: in 1\shour, (29|30)\sminutes</span>',
        str_of(client, case),
    )
    ExceptionCase.objects.filter(pk=case.pk).update(sla_due_at=None)
    assert '<span class="sla none">No SLA</span>' in str_of(client, case)


def test_a_big_case_shows_its_first_50_records_and_counts_the_rest() -> None:
    case = finance_case(records=held_time(53))
    response = signed_in(finance_user()).get(page_of(case))
    blocked = response.content.decode().split('id="blocked"')[1].split("</section>")[0]
    assert blocked.count("<tr>") == 1 + 50  # the header and 50 records
    assert "and 3 more." in text(response)


def test_the_page_shows_the_source_payload_pretty_printed() -> None:
    case, message = mapping_case_with_payload()
    response = signed_in(admin_user()).get(page_of(case))
    assert response.status_code == 200
    body = response.content.decode()
    pretty = html.escape(json.dumps(message.payload, indent=2, sort_keys=True))
    assert f"<pre>{pretty}</pre>" in body
    shown = text(response)
    assert "Contacts c-4711 Failed" in shown
    assert "No value map entry for currency CHF" in shown
    assert "No outbound message is parked on this case." in shown


def test_the_page_shows_each_parked_row_with_every_attempt_and_the_vendor_response() -> None:
    case = finance_case("customer Umbrella GmbH")
    rows = park(case, 2, attempts=2)
    response = signed_in(finance_user()).get(page_of(case))
    body, shown = response.content.decode(), text(response)
    for row in rows:
        section = body.split(f'id="outbox-{row.pk}"')[1].split("</article>")[0]
        assert "put_invoices" in section
        assert "Parked" in section
        assert f"CONCORD-INV-{case.pk}" in section
        assert section.count("Business rule failure") == 2
        assert section.count('<td class="num">400</td>') == 2
        assert "&quot;Message&quot;: &quot;TaxNumber is required&quot;" in section
    assert "Attempts, oldest first" in shown
    assert "No raw inbound message is held by this case" in shown


def test_the_page_shows_the_group_comments_and_audit_trail() -> None:
    ada = finance_user(username="ada")
    case = parked_case(1, about="customer Umbrella GmbH")
    sibling = finance_case("customer Umbrella GmbH", complaint="ContactID is unknown")
    other_group = finance_case("customer Initech")
    actions.case_comment(actor=ada, case_id=case.pk, text="Chasing their tax number.")
    actions.case_take(actor=ada, case_id=case.pk, revision=0)
    response = signed_in(ada).get(page_of(case))
    body, shown = response.content.decode(), text(response)
    group = body.split('id="group"')[1].split("</section>")[0]
    assert f'href="{page_of(sibling)}"' in group
    assert f'href="{page_of(other_group)}"' not in group
    assert "1 other open case shares this root cause" in text(response)
    assert f'name="rev-{case.pk}" value="1"' in group
    assert f'name="rev-{sibling.pk}" value="0"' in group
    assert "Retry the whole group (2 cases)" in group
    assert re.search(r"Comments ada , \d+ \w+ \d{4} [\d:]+ Chasing their tax number\.", shown)
    trail = shown.split("Audit trail")[1]
    assert re.search(r"ada Taken assignee: \(none\) → ada", trail)
    assert re.search(r"ada Commented [^→]*text: Chasing their tax number\.", trail)
    assert "Concord Opened" in trail
    assert "Assignee ada (you)" in shown


# --- Actions --------------------------------------------------------------------------------------


def test_retry_replays_the_parked_rows_says_so_and_is_audited() -> None:
    ada = finance_user(username="ada")
    case = parked_case(3)
    client = signed_in(ada)
    response = client.post(act(case, "retry"), {"revision": "0"}, follow=True)
    assert response.redirect_chain == [(page_of(case), 302)]
    event = CaseEvent.objects.get(case=case, action="retried")
    assert event.actor == ada
    assert event.after["count"] == 3
    assert f"Retried: {event.after['summary']}." in text(response)
    assert "replayed 3" in event.after["summary"]
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3
    assert hidden_revisions(response) == {"1"}


def test_an_htmx_action_answers_with_the_case_region_only() -> None:
    case = parked_case(2)
    response = signed_in(finance_user()).post(act(case, "retry"), {"revision": "0"}, headers=HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="case-main"')
    assert "<html" not in body
    assert re.search(r'<p id="case-notice" class="notice success" role="status">Retried: ', body)
    assert hidden_revisions(response) == {"1"}


def test_a_stale_revision_is_refused_naming_who_acted_and_nothing_is_done() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    case = parked_case(3)
    signed_in(ada).post(act(case, "retry"), {"revision": "0"})
    refused = signed_in(bob).post(act(case, "retry"), {"revision": "0"}, headers=HTMX)
    assert refused.status_code == 409
    assert re.search(
        r'role="alert">ada retried this case \d+ seconds? ago; nothing was done\.</p>',
        refused.content.decode(),
    )
    # Re-rendered as it stands now, so the next click acts on what bob now sees.
    assert hidden_revisions(refused) == {"1"}
    assert CaseEvent.objects.filter(case=case, action="retried").count() == 1
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3
    # Without JavaScript: the whole page, with the same words.
    plain = signed_in(bob).post(act(case, "take"), {"revision": "0"})
    assert plain.status_code == 409
    assert "<html" in plain.content.decode()
    assert re.search(r"ada retried this case \d+ seconds? ago; nothing was done\.", text(plain))
    assert fresh(case).assignee is None


def test_a_waiver_without_a_reason_is_refused_and_the_form_says_why() -> None:
    ada = finance_user()
    case = finance_case()
    client = signed_in(ada)
    refused = client.post(act(case, "waive"), {"revision": "0", "reason": "  "}, headers=HTMX)
    assert refused.status_code == 400
    message = "A waiver needs a reason: say why this case needs no fix."
    assert f'<p id="waive-error" class="error">{message}</p>' in refused.content.decode()
    assert fresh(case).status == "open"
    assert not CaseEvent.objects.filter(case=case, action="waived").exists()
    # A waiver refused for another reason keeps what was typed.
    actions.case_take(actor=finance_user(username="bob"), case_id=case.pk, revision=0)
    stale = client.post(
        act(case, "waive"), {"revision": "0", "reason": "Invoice cancelled by the client."}
    )
    assert stale.status_code == 409
    assert ">Invoice cancelled by the client.</textarea>" in stale.content.decode()
    waived = client.post(
        act(case, "waive"),
        {"revision": "1", "reason": "Invoice cancelled by the client."},
        follow=True,
    )
    assert "Waived: Invoice cancelled by the client." in text(waived)
    assert "This case is waived: there is nothing left to do but comment." in text(waived)
    assert fresh(case).status == "waived"
    assert 'name="revision"' not in waived.content.decode()


def test_assign_reassign_take_unassign_comment_and_resolve_through_the_page() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    carl, pat = finance_user(username="carl"), pmo_user(username="pat")
    case = finance_case()
    client = signed_in(ada)
    page = client.get(page_of(case)).content.decode()
    # Only the members of the case's queue are offered.
    assert f'<option value="{bob.pk}">bob</option>' in page
    assert f'<option value="{ada.pk}">ada (you)</option>' in page
    assert f'value="{pat.pk}"' not in page
    steps = [
        ("assign", {"revision": "0", "assignee": str(bob.pk)}, "Assigned to bob."),
        ("reassign", {"revision": "1", "assignee": str(carl.pk)}, "Reassigned to carl."),
        ("unassign", {"revision": "2"}, "Unassigned: the case is back in the queue"),
        ("take", {"revision": "3"}, "You took this case."),
        ("comment", {"text": "Asked the client."}, "Comment added."),
        ("resolve", {"revision": "4", "note": "Fixed in Xero by hand."}, "Resolved: Fixed in"),
    ]
    for action, data, said in steps:
        response = client.post(act(case, action), data, follow=True)
        assert response.status_code == 200, action
        assert said in text(response), action
    assert list(CaseEvent.objects.filter(case=case).values_list("action", flat=True)) == [
        "opened",
        "assigned",
        "reassigned",
        "unassigned",
        "taken",
        "commented",
        "resolved",
    ]
    assert fresh(case).resolution_note == "Fixed in Xero by hand."
    assert "Asked the client." in text(client.get(page_of(case)))


def test_assigning_to_someone_outside_the_queue_is_refused() -> None:
    pat = pmo_user(username="pat")
    case = finance_case()
    response = signed_in(finance_user()).post(
        act(case, "assign"), {"revision": "0", "assignee": str(pat.pk)}, headers=HTMX
    )
    assert response.status_code == 400
    assert "pat does not work in the Finance queue" in text(response)
    assert fresh(case).assignee is None


def test_a_form_without_the_revision_seen_is_refused() -> None:
    case = finance_case()
    response = signed_in(finance_user()).post(act(case, "take"), {}, headers=HTMX)
    assert response.status_code == 400
    assert "did not say which version of the case you saw" in text(response)
    assert fresh(case).assignee is None


def test_retry_buttons_show_only_where_there_is_work_to_re_run() -> None:
    case = parked_case(1)
    finance_case("customer Umbrella GmbH", complaint="ContactID is unknown")
    client = signed_in(finance_user())
    page = client.get(page_of(case)).content.decode()
    assert ">Retry</button>" in page
    assert "Retry the whole group" in page
    ExceptionCase.objects.filter(pk=case.pk).update(case_type="poll_stale")
    page = client.get(page_of(case)).content.decode()
    assert ">Retry</button>" not in page
    assert "Retry the whole group" not in page


def test_retry_the_whole_group_retries_each_case_seen_once() -> None:
    conn = xero()
    first = finance_case("customer Umbrella GmbH")
    second = finance_case("customer Umbrella GmbH", complaint="ContactID is unknown")
    park(first, 2, conn=conn)
    park(second, 1, conn=conn)
    client = signed_in(finance_user(username="ada"))
    response = client.post(
        act(first, "retry-group"), {f"rev-{first.pk}": "0", f"rev-{second.pk}": "0"}, headers=HTMX
    )
    assert response.status_code == 200
    assert f"Retried 2 cases of the group (#{first.pk}: replayed 2" in text(response)
    assert sorted(CaseEvent.objects.filter(action="retried").values_list("case_id", flat=True)) == [
        first.pk,
        second.pk,
    ]
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 3


def test_unknown_actions_and_gets_are_refused() -> None:
    case = finance_case()
    client = signed_in(finance_user())
    assert client.post(act(case, "explode"), {"revision": "0"}).status_code == 404
    assert client.get(act(case, "take")).status_code == 405


# --- Refusals -------------------------------------------------------------------------------------


def test_a_missing_case_is_not_found() -> None:
    client = signed_in(finance_user())
    assert client.get("/cases/424242/").status_code == 404
    assert client.post("/cases/424242/take/", {"revision": "0"}).status_code == 404
    refused = client.post("/cases/424242/take/", {"revision": "0"}, headers=HTMX)
    assert refused.status_code == 404
    assert "There is no case #424242." in text(refused)


def test_pmo_is_refused_a_finance_case_clearly_and_can_do_nothing_to_it() -> None:
    case = finance_case()
    client = signed_in(pmo_user(username="pat"))
    page = client.get(page_of(case))
    assert page.status_code == 403
    shown = text(page)
    assert "You don't have access to this page" in shown
    assert f"Case #{case.pk} is in the Finance queue, which you do not work in." in shown
    assert case.message not in shown
    taken = client.post(act(case, "take"), {"revision": "0"})
    assert taken.status_code == 403
    assert "which you do not work in; nothing was done." in text(taken)
    commented = client.post(act(case, "comment"), {"text": "mine now"}, headers=HTMX)
    assert commented.status_code == 403
    assert commented.content.decode().lstrip().startswith('<div id="case-main"')
    assert "which you do not work in; nothing was done." in text(commented)
    assert fresh(case).assignee is None
    assert not fresh(case).comments.exists()
    assert list(CaseEvent.objects.filter(case=case).values_list("action", flat=True)) == ["opened"]


# --- Queries --------------------------------------------------------------------------------------


def _big(case_records: int, attempts: int, trail: int) -> ExceptionCase:
    """A case holding `case_records` cross-referenced time entries, a parked row with
    `attempts` attempts, an inbound message, and `trail` audit rows besides its opening."""
    hv = harvest()
    case = finance_case(records=held_time(case_records, cross_referenced_in=hv))
    park(case, 1, attempts=attempts)
    ada, bob = finance_user(), finance_user()
    for i in range(trail):
        if i % 2:
            actions.case_comment(actor=bob, case_id=case.pk, text=f"note {i}")
        else:
            actions.case_assign(
                actor=ada,
                case_id=case.pk,
                assignee_id=(ada if i % 4 else bob).pk,
                revision=fresh(case).revision,
            )
    return case


def test_the_page_costs_the_same_queries_whatever_the_case_holds() -> None:
    small, large = _big(1, 1, 1), _big(60, 20, 30)
    person = finance_user()
    counts, pages = [], []
    for case in (small, large):
        client = signed_in(person)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(page_of(case))
        assert response.status_code == 200
        counts.append(len(captured))
        pages.append(response.content.decode())
    # The large page really shows more: 50 records (and 10 more), 20 attempts, 31 audit rows.
    assert "and 10 more." in pages[1]
    assert pages[1].count("Business rule failure") == 20
    trail = pages[1].split('id="trail"')[1]
    assert trail.count("<tr>") == 1 + 31
    assert counts[0] == counts[1], counts
