"""The queue pages as a person sees them (Django's test client): the queue list with its default
queues, filters, search, sorts, keyset pages and totals; the CSV export; the bulk actions; my
work; the SLA view; who is refused; and a fixed number of queries however many rows show."""

from __future__ import annotations

import csv
import io
import itertools
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from exceptions import actions, selectors
from exceptions.models import CaseEvent, ExceptionCase, WorkQueue
from exceptions.services import Blocked, case_open_or_join
from exceptions.views import queues
from integrations.models import Invoice, OutboxMessage
from integrations.roles import VIEWER
from integrations.sync.outbox import outbox_enqueue, outbox_message
from tests.exceptions.cases import (
    admin_user,
    entries,
    finance_case,
    finance_user,
    fresh,
    mapping_case,
    pmo_case,
    pmo_user,
    user,
)
from tests.factories import (
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    TimeEntryFactory,
    make_connection,
)

pytestmark = pytest.mark.django_db

ROW = re.compile(r'id="case-(\d+)"')
NEXT = re.compile(r'<a href="([^"]+)"[^>]*rel="next"')


def _client(person: User) -> Client:
    client = Client()
    client.force_login(person)
    return client


def _html(response: Any) -> str:
    return response.content.decode()


def _rows(response: Any) -> list[int]:
    return [int(pk) for pk in ROW.findall(_html(response))]


def _due_in(case: ExceptionCase, delta: timedelta) -> ExceptionCase:
    ExceptionCase.objects.filter(pk=case.pk).update(sla_due_at=timezone.now() + delta)
    return case


def _unescape(url: str) -> str:
    return url.replace("&amp;", "&")


# --- Who sees which queues ----------------------------------------------------------------------


def test_a_finance_user_sees_their_queue_and_not_the_others() -> None:
    theirs = finance_case("Umbrella GmbH")
    pmo_case()
    response = _client(finance_user()).get("/cases/")
    assert response.status_code == 200
    assert _rows(response) == [theirs.pk]
    html = _html(response)
    assert "Umbrella GmbH" in html
    assert f'href="/cases/{theirs.pk}/"' in html
    # Their one queue, ticked; no other queue offered.
    assert 'value="finance" checked' in html
    assert 'value="pmo"' not in html


def test_someone_in_two_queues_sees_both_and_can_narrow_to_one() -> None:
    ada = finance_user()
    WorkQueue.objects.get(code="pmo").members.add(ada)
    money, project = finance_case(), pmo_case()
    client = _client(ada)
    assert set(_rows(client.get("/cases/"))) == {money.pk, project.pk}
    assert _rows(client.get("/cases/?queue=&queue=finance")) == [money.pk]
    # Every box unticked (only the form's hidden empty value): every queue they work in.
    assert set(_rows(client.get("/cases/?queue="))) == {money.pk, project.pk}


def test_an_integration_admin_starts_on_their_own_queues_and_can_widen() -> None:
    admin = admin_user()  # the role's group works the Integration admins queue
    money, project = finance_case(), pmo_case()
    mapping = mapping_case(7, "Contacts", "no value map for DefaultCurrency 'XBT'")
    client = _client(admin)
    first = client.get("/cases/")
    assert _rows(first) == [mapping.pk]
    html = _html(first)
    assert 'value="integration_admin" checked' in html
    assert 'value="finance">' in html  # offered, not ticked
    assert "tick others to widen" in html
    widened = client.get("/cases/?queue=&queue=pmo&queue=finance")
    assert set(_rows(widened)) == {money.pk, project.pk}
    assert set(_rows(client.get("/cases/?queue="))) == {money.pk, project.pk, mapping.pk}


def test_a_superuser_in_no_queue_sees_every_queue_by_default() -> None:
    root = user("", is_superuser=True)
    cases = {finance_case().pk, pmo_case().pk}
    assert set(_rows(_client(root).get("/cases/"))) == cases


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/cases/"),
        ("get", "/cases/mine/"),
        ("get", "/cases/sla/"),
        ("get", "/cases/export.csv"),
        ("post", "/cases/bulk/"),
    ],
)
def test_a_user_in_no_queue_is_refused_every_queue_page(method: str, path: str) -> None:
    case = finance_case()
    viewer = _client(user(VIEWER))  # has a role (may read records) but works in no queue
    response = getattr(viewer, method)(
        path, {"action": "take", "case": case.pk, f"rev-{case.pk}": 0}
    )
    assert response.status_code == 403
    assert "You work in no exception queue" in _html(response)
    assert fresh(case).assignee_id is None


def test_pmo_asking_for_the_finance_queue_is_refused_and_sees_no_finance_case() -> None:
    finance_case("Secret Finance Customer Ltd")
    pmo = _client(pmo_user())
    for path in (
        "/cases/?queue=finance",
        "/cases/export.csv?queue=finance",
        "/cases/sla/?queue=finance",
    ):
        response = pmo.get(path)
        assert response.status_code == 403, path
        html = _html(response)
        assert "You do not work in the Finance queue" in html, path
        assert "Secret Finance Customer" not in html, path
    # A queue that does not exist is a bad request, not a 500.
    assert pmo.get("/cases/?queue=nowhere").status_code == 400
    assert pmo.get("/cases/sla/?queue=nowhere").status_code == 404


# --- Filters, search, sorts ---------------------------------------------------------------------


def test_each_filter_narrows_the_list() -> None:
    admin, ada = admin_user(), finance_user(username="ada")
    entity = LegalEntityFactory.create(name="Concord APAC Pte")
    project = ProjectFactory.create(legal_entity=entity, region="apac")
    small = finance_case(records=entries(1, amount="50"))
    big = finance_case(records=entries(2, amount="600"))
    on_project = pmo_case(project.pk)
    closed = finance_case()
    actions.case_waive(actor=ada, case_id=closed.pk, revision=0, reason="Not ours.")
    actions.case_take(actor=ada, case_id=big.pk, revision=0)
    late = _due_in(small, -timedelta(minutes=5))
    _due_in(big, timedelta(hours=2))  # P2: due soon within 4 hours
    _due_in(on_project, timedelta(days=3))
    client = _client(admin)

    def ids(query: str) -> set[int]:
        # "queue=" with no value: every queue (an admin starts on their own queue only).
        response = client.get(f"/cases/?queue=&{query}")
        assert response.status_code == 200, (query, _html(response))
        return set(_rows(response))

    assert ids("") == {small.pk, big.pk, on_project.pk}  # open ones by default
    assert ids("status=waived") == {closed.pk}
    assert ids("queue=pmo") == {on_project.pk}
    assert _rows(client.get("/cases/")) == []  # the Integration admins queue: empty
    assert ids("case_type=vendor_validation") == {small.pk, big.pk}
    assert ids("process=time_to_erp&amount_min=150") == {big.pk}
    assert ids("amount_max=100") == {small.pk, on_project.pk}
    assert ids(f"legal_entity={entity.pk}") == {on_project.pk}
    assert ids("region=apac") == {on_project.pk}
    assert ids("assignee=none") == {small.pk, on_project.pk}
    assert ids(f"assignee={ada.pk}") == {big.pk}
    assert ids("sla=breached") == {late.pk}
    assert ids("sla=due_soon") == {big.pk}
    assert ids("sla=ok") == {on_project.pk}
    assert set(_rows(_client(ada).get("/cases/?assignee=me"))) == {big.pk}
    # What the form shows back: the chosen values stay selected.
    html = _html(client.get(f"/cases/?region=apac&legal_entity={entity.pk}&sla=breached"))
    assert '<option value="apac" selected>' in html
    assert f'<option value="{entity.pk}" selected>Concord APAC Pte</option>' in html
    assert '<option value="breached" selected>' in html


def test_search_finds_cases_by_the_ids_a_person_has_in_hand() -> None:
    client = _client(admin_user())
    entity = LegalEntityFactory.create()
    acme = CustomerFactory.create(name="Acme Widgets GmbH", legal_entity=entity)
    project = ProjectFactory.create(code="P-APOLLO", customer=acme)
    entry = TimeEntryFactory.create(project=project)
    on_entry = finance_case(records=[Blocked("timeentry", entry.pk, f"TE-{entry.pk}")])
    on_project = pmo_case(project.pk)
    invoice = Invoice.objects.create(
        legal_entity=entity,
        customer=acme,
        number="INV-0042",
        currency="EUR",
        issue_date=timezone.now().date(),
        due_date=timezone.now().date(),
    )
    on_invoice = finance_case(records=[Blocked("invoice", invoice.pk, "Draft invoice")])
    unrelated = finance_case()

    def found(term: str) -> set[int]:
        response = client.get("/cases/", {"q": term, "queue": ""})
        assert response.status_code == 200
        return set(_rows(response))

    assert found("INV-0042") == {on_invoice.pk}
    assert found("p-apollo") == {on_entry.pk, on_project.pk}
    assert found("Acme Widgets") == {on_entry.pk, on_project.pk, on_invoice.pk}
    assert found(f"TE-{entry.pk}") == {on_entry.pk}
    assert found(f"#{unrelated.pk}") == {unrelated.pk}
    nothing = client.get("/cases/", {"q": "nothing like it", "queue": ""})
    assert _rows(nothing) == []
    assert "No case matches these filters" in _html(nothing)
    assert 'value="nothing like it"' in _html(nothing)  # the search box keeps the term


def _sortable_cases() -> list[ExceptionCase]:
    now = timezone.now()
    made = []
    for i, (amount, due_hours, age_minutes) in enumerate(
        [("10", 5, 30), ("900", 1, 10), ("250", None, 50), ("99.5", 3, 20), ("250", 2, 40)]
    ):
        case = finance_case(f"sortable {i}", records=entries(1, amount=amount))
        ExceptionCase.objects.filter(pk=case.pk).update(
            sla_due_at=None if due_hours is None else now + timedelta(hours=due_hours),
            first_seen_at=now - timedelta(minutes=age_minutes),
        )
        made.append(case)
    return made


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("sla", [1, 4, 3, 0, 2]),  # soonest due first; no deadline last
        ("amount", [1, 4, 2, 3, 0]),  # biggest first; a tie by newest id
        ("age", [2, 4, 0, 3, 1]),  # oldest first
    ],
)
def test_each_sort_order(sort: str, order: list[int]) -> None:
    made = _sortable_cases()
    response = _client(finance_user()).get(f"/cases/?sort={sort}")
    assert _rows(response) == [made[i].pk for i in order]
    assert re.search(rf'<a href="[^"]*sort={sort}[^"]*"[^>]*aria-current="true"', _html(response))


def test_keyset_pages_walk_every_case_once_with_next_and_first_page_links() -> None:
    made = {finance_case(f"paged {i}").pk for i in range(120)}
    client = _client(finance_user())
    seen: list[int] = []
    url = "/cases/?sort=age&status=open"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        html = _html(response)
        seen += _rows(response)
        pages += 1
        if pages > 1:
            assert ">First page</a>" in html
            assert "status=open" in url
            assert "sort=age" in url
        else:
            assert ">First page</a>" not in html
        link = NEXT.search(html)
        url = _unescape(link[1]) if link else ""
        assert "page=" not in url  # a cursor, never an offset
    assert pages == 3
    assert len(seen) == len(set(seen)) == 120
    assert set(seen) == made
    assert seen == sorted(seen)  # age order: made one after the other


def test_totals_per_currency_follow_the_filters() -> None:
    finance_case(records=entries(2, amount="100", currency="EUR"))
    finance_case(records=entries(1, amount="40", currency="GBP"))
    finance_case(
        records=[*entries(1, amount="5", currency="EUR"), *entries(1, amount="7", currency="GBP")]
    )
    client = _client(finance_user())
    html = _html(client.get("/cases/"))
    assert "<strong>3</strong> cases" in html
    assert "<strong>EUR 205.00</strong> blocked in 2 cases" in html
    assert "<strong>GBP 47.00</strong> blocked in 2 cases" in html
    narrowed = _html(client.get("/cases/?amount_min=100"))
    assert "<strong>1</strong> case matching these filters" in narrowed
    assert "<strong>EUR 200.00</strong> blocked in 1 case<" in narrowed
    assert "GBP" not in narrowed.split('id="queue-totals"')[1].split("</div>")[0]


def test_empty_states_say_why() -> None:
    client = _client(finance_user())
    none = _html(client.get("/cases/"))
    assert "No open cases in your queues: nothing is blocked." in none
    finance_case()
    filtered = _html(client.get("/cases/?sla=breached"))
    assert "No case matches these filters." in filtered
    assert 'href="/cases/"' in filtered
    assert ">Clear filters</a>" in filtered


def test_bad_filters_and_page_links_are_answered_in_words() -> None:
    finance_case()
    client = _client(finance_user())
    bad = client.get("/cases/?sla=sometime")
    assert bad.status_code == 400
    assert "These filters are not valid" in _html(bad)
    cursor = client.get("/cases/?cursor=not-a-cursor")
    assert cursor.status_code == 400
    assert "This page link is not valid" in _html(cursor)
    sort = client.get("/cases/?sort=colour")
    assert sort.status_code == 400
    assert "Sort by sla, amount, age; not &#x27;colour&#x27;" in _html(sort)
    amount = client.get("/cases/?amount_min=lots")
    assert amount.status_code == 400
    assert "amount_min" in _html(amount)


def test_htmx_gets_the_results_region_only() -> None:
    case = finance_case()
    client = _client(finance_user())
    response = client.get("/cases/?sort=amount", headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = _html(response)
    assert html.lstrip().startswith('<section id="queue-results"')
    assert "<html" not in html
    assert 'id="queue-filters"' not in html
    assert f'id="case-{case.pk}"' in html
    # The filter form's hidden sort follows the sort links (out of band).
    assert (
        '<input type="hidden" name="sort" value="amount" data-queue-sort '
        'hx-swap-oob="outerHTML:#queue-filters input[data-queue-sort]">'
    ) in html
    assert "HX-Request" in response["Vary"]
    # htmx restoring a page missing from its history cache asks for the whole page.
    restore = client.get(
        "/cases/?sort=amount", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert 'id="queue-filters"' in _html(restore)
    full = client.get("/cases/?sort=amount")
    assert "<html" in _html(full)
    assert 'id="queue-filters"' in _html(full)
    assert 'hx-push-url="true"' in _html(full)


# --- CSV export ---------------------------------------------------------------------------------


def _csv(response: Any) -> list[list[str]]:
    assert response.streaming
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def test_the_export_streams_the_filtered_sorted_cases_with_formulas_defused() -> None:
    ada = finance_user(username="ada")
    case = finance_case(
        "Umbrella GmbH", records=entries(3, amount="1050", currency="GBP", hours="7.5")
    )
    actions.case_take(actor=ada, case_id=case.pk, revision=0)
    formula = case_open_or_join(
        case_type="vendor_validation",
        subject={"vendor": "Xero", "noun": "invoice", "about": "x", "complaint": "y"},
        records=entries(1, amount="10"),
        process='=HYPERLINK("http://evil")',
        step="post_invoice",
    )
    ExceptionCase.objects.filter(pk=formula.pk).update(message="=1+2 +cmd @SUM -x")
    pmo_case()  # not finance's
    response = _client(ada).get("/cases/export.csv?sort=amount")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="cases-')
    header, *rows = _csv(response)
    assert header == queues.EXPORT_COLUMNS
    assert [row[0] for row in rows] == [str(case.pk), str(formula.pk)]  # amount order
    first = dict(zip(header, rows[0], strict=True))
    assert first["queue"] == "Finance"
    assert first["case type"] == "vendor_validation"
    assert first["priority"] == "P2"
    assert first["status"] == "open"
    assert first["amount"] == "3150.00"
    assert first["currency"] == "GBP"
    assert first["hours"] == "22.50"
    assert first["records"] == "3"
    assert first["assignee"] == "ada"
    assert "Umbrella GmbH" in first["message"]
    assert first["SLA state"] in {"ok", "due_soon", "breached"}
    second = dict(zip(header, rows[1], strict=True))
    assert second["message"] == "'=1+2 +cmd @SUM -x"
    assert second["process"] == '\'=HYPERLINK("http://evil")'


def test_the_export_walks_every_page_and_respects_the_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queues, "EXPORT_PAGE", 7)  # many pages from a few cases
    made = [finance_case(f"export {i}").pk for i in range(30)]
    waived = finance_case("waived one")
    actions.case_waive(actor=finance_user(), case_id=waived.pk, revision=0, reason="n/a")
    client = _client(finance_user())
    _, *rows = _csv(client.get("/cases/export.csv?sort=age"))
    assert [int(row[0]) for row in rows] == made
    _, *rows = _csv(client.get("/cases/export.csv?status=waived"))
    assert [int(row[0]) for row in rows] == [waived.pk]
    _, *rows = _csv(client.get("/cases/export.csv", {"q": "export 7"}))
    assert rows == []  # a customer name search: no customer is called that
    bad = client.get("/cases/export.csv?sla=whenever")
    assert bad.status_code == 400
    assert "These filters are not valid" in _html(bad)
    # The queue page links the export with its filters.
    page = _html(client.get("/cases/?sort=age&case_type=vendor_validation"))
    assert 'href="/cases/export.csv?sort=age&amp;case_type=vendor_validation"' in page


# --- Bulk actions -------------------------------------------------------------------------------


def _bulk(cases: list[ExceptionCase], action: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"action": action, "case": [c.pk for c in cases], **extra}
    for case in cases:
        data[f"rev-{case.pk}"] = fresh(case).revision
    return data


def test_bulk_take_redirects_back_to_the_same_filtered_list_with_the_result() -> None:
    ada = finance_user(username="ada")
    cases = [finance_case() for _ in range(3)]
    client = _client(ada)
    back = "/cases/?sort=amount&assignee=none"
    response = client.post("/cases/bulk/", _bulk(cases[:2], "take", next=back))
    assert response.status_code == 302
    assert response["Location"] == back
    page = client.get(back)
    assert "You took 2 cases." in _html(page)
    assert _rows(page) == [cases[2].pk]  # the two taken are no longer unassigned
    assert {fresh(c).assignee_id for c in cases[:2]} == {ada.pk}
    assert CaseEvent.objects.filter(action="taken", actor=ada).count() == 2


def test_bulk_assign_unassign_waive_and_resolve() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    one, two = finance_case(), finance_case()
    client = _client(ada)
    client.post("/cases/bulk/", _bulk([one, two], "assign", assignee=bob.pk, next="/cases/"))
    assert "Assigned 2 cases to bob." in _html(client.get("/cases/"))
    assert {fresh(one).assignee_id, fresh(two).assignee_id} == {bob.pk}
    # The assign select offers the queue's people.
    assert f'<option value="{bob.pk}">bob</option>' in _html(client.get("/cases/"))
    client.post("/cases/bulk/", _bulk([one], "unassign", next="/cases/"))
    assert fresh(one).assignee_id is None
    refused = client.post(
        "/cases/bulk/", _bulk([one], "waive", text="  ", next="/cases/"), follow=True
    )
    assert "A waiver needs a reason: say why this case needs no fix." in _html(refused)
    assert fresh(one).status == "open"
    client.post(
        "/cases/bulk/", _bulk([one], "waive", text="Billed by hand in March.", next="/cases/")
    )
    assert (fresh(one).status, fresh(one).resolution_note) == ("waived", "Billed by hand in March.")
    client.post("/cases/bulk/", _bulk([two], "resolve", text="Fixed in Xero.", next="/cases/"))
    assert fresh(two).status == "resolved"
    assert list(
        CaseEvent.objects.filter(actor=ada).order_by("id").values_list("action", flat=True)
    ) == ["assigned", "assigned", "unassigned", "waived", "resolved"]


def test_a_stale_revision_refuses_the_whole_bulk_action_in_words() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    first, second = finance_case(), finance_case()
    seen = _bulk([first, second], "take", next="/cases/")  # ada's page, before bob acted
    actions.case_take(actor=bob, case_id=second.pk, revision=0)
    client = _client(ada)
    response = client.post("/cases/bulk/", seen, follow=True)
    assert "bob took this case" in _html(response)
    assert "nothing was done" in _html(response)
    assert fresh(first).assignee_id is None  # all or nothing
    assert fresh(second).assignee_id == bob.pk
    # With htmx: the results region, status 409, the same words.
    seen = _bulk([first], "take", next="/cases/?sort=age")
    actions.case_take(actor=bob, case_id=first.pk, revision=0)
    response = client.post("/cases/bulk/", seen, headers={"HX-Request": "true"})
    assert response.status_code == 409
    html = _html(response)
    assert html.lstrip().startswith('<section id="queue-results"')
    assert "bob took this case" in html
    assert 'id="queue-messages"' in html
    assert fresh(first).assignee_id == bob.pk
    assert not CaseEvent.objects.filter(actor=ada).exists()


def test_nothing_selected_and_a_foreign_next_are_handled() -> None:
    client = _client(finance_user())
    response = client.post("/cases/bulk/", {"action": "take", "next": "https://evil.example/"})
    assert response.status_code == 302
    assert response["Location"] == "/cases/"
    assert "Select at least one case." in _html(client.get("/cases/"))


def _parked_case(about: str, conn: Any) -> ExceptionCase:
    """A finance case with one outbox row parked on it (a refused invoice)."""
    case = finance_case(about, complaint="TaxNumber is required")
    row = outbox_message(
        connection=conn,
        process="time_to_erp",
        step="post_invoice",
        operation="put_invoices",
        record=CustomerFactory.create(),
        version=1,
        payload={"Reference": f"R-{about}"},
    )
    outbox_enqueue(messages=[row])
    OutboxMessage.objects.filter(connection=conn, exception_case__isnull=True).update(
        state="parked", exception_case=case
    )
    return case


def test_bulk_retry_replays_each_case_once_and_says_so_with_htmx() -> None:
    conn = make_connection(name="Xero UK")
    cases = [_parked_case(f"Umbrella {i}", conn) for i in range(3)]
    ada = finance_user(username="ada")
    response = _client(ada).post(
        "/cases/bulk/", _bulk(cases, "retry", next="/cases/"), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    html = _html(response)
    assert "Retried 3 cases" in html
    for case in cases:
        assert re.search(rf"#{case.pk} replayed 1 (other )?parked outbox row", html)
        assert (
            OutboxMessage.objects.filter(exception_case=case, replay_of__isnull=False).count() == 1
        )
        assert CaseEvent.objects.filter(case=case, action="retried", actor=ada).count() == 1


def test_bulk_retry_with_nothing_to_rerun_is_refused() -> None:
    cases = [pmo_case() for _ in range(2)]  # held entries that no longer exist: nothing to bill
    client = _client(pmo_user())
    response = client.post("/cases/bulk/", _bulk(cases, "retry", next="/cases/"), follow=True)
    assert "None of these cases has anything left to retry; nothing was done." in _html(response)
    assert not CaseEvent.objects.filter(action="retried").exists()


# --- My work and the SLA view -------------------------------------------------------------------


def test_my_work_lists_my_open_cases_and_says_when_there_are_none() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    client = _client(ada)
    empty = _html(client.get("/cases/mine/"))
    assert "Nothing assigned to you. Take a case from" in empty
    assert '<a href="/cases/?queue=finance">Finance</a>' in empty
    mine, theirs, done = finance_case(), finance_case(), finance_case()
    actions.case_take(actor=ada, case_id=mine.pk, revision=0)
    actions.case_take(actor=bob, case_id=theirs.pk, revision=0)
    actions.case_take(actor=ada, case_id=done.pk, revision=0)
    actions.case_resolve_by_hand(actor=ada, case_id=done.pk, revision=1)
    response = client.get("/cases/mine/")
    assert _rows(response) == [mine.pk]
    # Unassign from my work: back to my work, which is empty now.
    back = client.post("/cases/bulk/", _bulk([mine], "unassign", next="/cases/mine/"))
    assert back["Location"] == "/cases/mine/"
    assert _rows(client.get("/cases/mine/")) == []


def test_my_work_pages_by_cursor() -> None:
    ada = finance_user()
    made = []
    for i in range(55):
        case = finance_case(f"mine {i}")
        actions.case_take(actor=ada, case_id=case.pk, revision=0)
        made.append(case.pk)
    client = _client(ada)
    first = client.get("/cases/mine/?sort=age")
    link = NEXT.search(_html(first))
    assert link is not None
    second = client.get(_unescape(link[1]))
    assert ">First page</a>" in _html(second)
    assert _rows(first) + _rows(second) == made


def test_the_sla_view_counts_and_lists_breached_and_due_soon_per_queue() -> None:
    ada = finance_user()
    older = _due_in(finance_case("late a"), -timedelta(hours=5))
    newer = _due_in(finance_case("late b"), -timedelta(minutes=10))
    soon = _due_in(finance_case("soon"), timedelta(hours=1))
    _due_in(finance_case("fine"), timedelta(days=2))
    pmo_case()
    client = _client(ada)
    response = client.get("/cases/sla/")
    assert response.status_code == 200
    html = _html(response)
    assert 'id="sla-finance"' in html
    assert 'id="sla-pmo"' not in html
    assert "<strong>4</strong> open" in html
    assert "<strong>1</strong> due soon" in html
    assert "<strong>2</strong> breached" in html
    breached = html.split("<h3>Breached")[1].split("<h3>Due soon")[0]
    assert breached.index(f"#{older.pk} ") < breached.index(
        f"#{newer.pk} "
    )  # longest overdue first
    due = html.split("<h3>Due soon")[1]
    assert f'href="/cases/{soon.pk}/"' in due
    assert client.get("/cases/sla/?queue=finance").status_code == 200


def test_the_sla_view_shows_a_capped_count_as_more_than_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(selectors, "COUNT_CAP", 2)
    for i in range(4):
        _due_in(finance_case(f"late {i}"), -timedelta(hours=i + 1))
    html = _html(_client(finance_user()).get("/cases/sla/"))
    assert "<strong>2+</strong> open" in html
    assert "<strong>2+</strong> breached" in html


# --- Queries per page ---------------------------------------------------------------------------


def _queries(client: Client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200
    return len(captured.captured_queries)


_amounts = itertools.cycle(["10", "250", "99.5", "1000"])


def _more_cases(ada: User, count: int) -> None:
    for i in range(count):
        case = finance_case(
            records=entries(1, amount=next(_amounts), currency="EUR" if i % 2 else "GBP")
        )
        _due_in(case, timedelta(hours=(i % 5) - 2))
        actions.case_take(actor=ada, case_id=case.pk, revision=0)


@pytest.mark.parametrize(
    "path", ["/cases/", "/cases/?q=Acme&sort=amount", "/cases/mine/", "/cases/sla/"]
)
def test_a_page_costs_the_same_queries_with_5_or_50_rows(path: str) -> None:
    ada = finance_user()
    CustomerFactory.create(name="Acme")
    client = _client(ada)
    _more_cases(ada, 5)
    client.get(path)  # the session's first read
    few = _queries(client, path)
    _more_cases(ada, 45)
    many = _queries(client, path)
    assert many == few, (few, many)
    html = _html(client.get(path))
    if path in ("/cases/", "/cases/mine/"):
        assert len(ROW.findall(html)) == 50
    elif path == "/cases/sla/":
        assert html.count('class="sla-badge') >= 20
