"""The cases API: the same selectors, actions, audit and refusals as the pages."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from exceptions.models import CaseEvent
from tests.exceptions.cases import entries, finance_case, finance_user, fresh, pmo_case

pytestmark = pytest.mark.django_db


def _client(person: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(person)
    return client


def test_the_list_pages_by_cursor_with_totals_on_the_first_page() -> None:
    cases = [finance_case(records=entries(1, amount=str(100 * (i + 1)))) for i in range(5)]
    api = _client(finance_user())
    first = api.get("/api/v1/cases/", {"sort": "amount", "limit": "2"})
    assert first.status_code == 200
    body = first.json()
    assert [c["id"] for c in body["results"]] == [cases[4].pk, cases[3].pk]
    assert body["totals"]["cases"] == 5
    assert body["totals"]["by_currency"] == [{"currency": "EUR", "cases": 5, "amount": "1500.00"}]
    seen = [c["id"] for c in body["results"]]
    url = body["next"]
    while url:
        page = api.get(url).json()
        assert page["totals"] is None
        seen += [c["id"] for c in page["results"]]
        url = page["next"]
    assert seen == [c.pk for c in reversed(cases)]
    assert body["results"][0]["sla_state"] == "ok"
    assert body["results"][0]["revision"] == 0


def test_invalid_filters_and_sorts_are_refused_with_a_reason() -> None:
    api = _client(finance_user())
    assert api.get("/api/v1/cases/", {"sort": "colour"}).json() == {
        "detail": "Sort by sla, amount, age; not 'colour'."
    }
    refused = api.get("/api/v1/cases/", {"sla": "whenever"})
    assert refused.status_code == 400
    assert refused.json()["detail"].startswith("These filters are not valid: sla:")
    assert api.get("/api/v1/cases/", {"limit": "many"}).status_code == 400


def test_the_detail_shows_the_case_its_records_group_comments_and_trail() -> None:
    ada = finance_user(username="ada")
    case = finance_case("customer Umbrella", records=entries(2))
    sibling = finance_case("customer Umbrella", complaint="ContactID is unknown")
    api = _client(ada)
    api.post(f"/api/v1/cases/{case.pk}/comment/", {"text": "Chasing."}, format="json")
    detail = api.get(f"/api/v1/cases/{case.pk}/").json()
    assert detail["case"]["id"] == case.pk
    assert detail["kind"]["fix_form"] == "customer_billing_profile"
    assert detail["can_retry"] is True
    assert [r["record_type"] for r in detail["records"]] == ["timeentry", "timeentry"]
    assert [g["id"] for g in detail["group"]] == [case.pk, sibling.pk]
    assert [c["text"] for c in detail["comments"]] == ["Chasing."]
    assert [e["action"] for e in detail["events"]] == ["commented", "opened"]


def test_the_actions_answer_with_the_case_and_refuse_clearly() -> None:
    ada, bob = finance_user(username="ada"), finance_user(username="bob")
    case = finance_case()
    api, other = _client(ada), _client(bob)
    url = f"/api/v1/cases/{case.pk}"

    assert api.post(f"{url}/take/", {}, format="json").status_code == 400  # no revision
    taken = api.post(f"{url}/take/", {"revision": 0}, format="json")
    assert taken.status_code == 200
    assert (taken.json()["assignee_name"], taken.json()["revision"]) == ("ada", 1)
    stale = other.post(f"{url}/take/", {"revision": 0}, format="json")
    assert stale.status_code == 409
    assert stale.json()["detail"].startswith("ada took this case ")
    moved = api.post(f"{url}/assign/", {"revision": 1, "assignee": bob.pk}, format="json")
    assert moved.json()["assignee"] == bob.pk
    assert api.post(f"{url}/unassign/", {"revision": 2}, format="json").status_code == 200
    no_reason = api.post(f"{url}/waive/", {"revision": 3, "reason": ""}, format="json")
    assert no_reason.status_code == 400
    assert no_reason.json()["detail"] == "A waiver needs a reason: say why this case needs no fix."
    waived = api.post(f"{url}/waive/", {"revision": 3, "reason": "Cancelled."}, format="json")
    assert (waived.json()["status"], waived.json()["resolution_note"]) == ("waived", "Cancelled.")
    closed = other.post(f"{url}/resolve/", {"revision": 4}, format="json")
    assert closed.status_code == 409
    assert closed.json()["detail"].startswith("ada waived this case ")
    assert api.post("/api/v1/cases/424242/take/", {"revision": 0}, format="json").status_code == 404
    assert [e.action for e in CaseEvent.objects.filter(case=case).order_by("id")] == [
        "opened",
        "taken",
        "reassigned",
        "unassigned",
        "waived",
    ]


def test_resolve_and_comment_from_the_api() -> None:
    api = _client(finance_user())
    case = finance_case()
    comment = api.post(
        f"/api/v1/cases/{case.pk}/comment/", {"text": "Done in Xero."}, format="json"
    )
    assert comment.status_code == 201
    assert comment.json()["text"] == "Done in Xero."
    resolved = api.post(
        f"/api/v1/cases/{case.pk}/resolve/",
        {"revision": 0, "note": "Fixed by hand."},
        format="json",
    )
    assert resolved.status_code == 200
    assert fresh(case).resolution_note == "Fixed by hand."


def test_bulk_and_retry_group_take_the_revisions_seen() -> None:
    ada = finance_user()
    a, b = finance_case(), finance_case()
    api = _client(ada)
    bulk = api.post(
        "/api/v1/cases/bulk/",
        {"action": "take", "revisions": {str(a.pk): 0, str(b.pk): 0}},
        format="json",
    )
    assert bulk.status_code == 200
    assert [c["assignee"] for c in bulk.json()["cases"]] == [ada.pk, ada.pk]
    again = api.post(
        "/api/v1/cases/bulk/",
        {"action": "unassign", "revisions": {str(a.pk): 0}},
        format="json",
    )
    assert again.status_code == 409
    bad = api.post(
        "/api/v1/cases/bulk/", {"action": "explode", "revisions": {"1": 0}}, format="json"
    )
    assert bad.status_code == 400
    group = api.post(f"/api/v1/cases/{a.pk}/retry-group/", {"revisions": {}}, format="json")
    assert group.status_code == 400


def test_queues_my_work_and_the_sla_view() -> None:
    ada = finance_user()
    mine = finance_case()
    pmo_case()
    api = _client(ada)
    api.post(f"/api/v1/cases/{mine.pk}/take/", {"revision": 0}, format="json")
    queues = api.get("/api/v1/queues/").json()
    assert queues == [
        {
            "code": "finance",
            "name": "Finance",
            "open": 1,
            "due_soon": 0,
            "breached": 0,
            "mine": True,
        }
    ]
    assert [c["id"] for c in api.get("/api/v1/cases/mine/").json()["results"]] == [mine.pk]
    (view,) = api.get("/api/v1/cases/sla/").json()
    assert view["queue"]["code"] == "finance"
    assert (view["due_soon"], view["breached"]) == ([], [])
