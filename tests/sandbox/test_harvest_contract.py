"""Harvest v2: every endpoint the PSA connector uses, validated against harvest-v2.yaml."""

from __future__ import annotations

import time
from typing import Any

import httpx

from .conftest import Contract


def build_project(h: httpx.Client, c: Contract) -> dict[str, Any]:
    client = c.check(h.post("/harvest/v2/clients", json={"name": "Acme GmbH", "currency": "EUR"}))
    task = c.check(
        h.post("/harvest/v2/tasks", json={"name": "Development", "default_hourly_rate": 150.0})
    )
    user = c.check(
        h.post(
            "/harvest/v2/users",
            json={
                "first_name": "Ada",
                "last_name": "Lovelace",
                "email": "ada@concord.example",
                "cost_rate": 70.0,
                "default_hourly_rate": 180.0,
            },
        )
    )
    project = c.check(
        h.post(
            "/harvest/v2/projects",
            json={
                "client_id": client["id"],
                "name": "Platform",
                "code": "P-1",
                "is_billable": True,
                "bill_by": "People",
                "budget_by": "project_cost",
            },
        )
    )
    ta = c.check(
        h.post(
            f"/harvest/v2/projects/{project['id']}/task_assignments",
            json={"task_id": task["id"], "billable": True},
        )
    )
    ua = c.check(
        h.post(
            f"/harvest/v2/projects/{project['id']}/user_assignments", json={"user_id": user["id"]}
        )
    )
    return {"client": client, "task": task, "user": user, "project": project, "ta": ta, "ua": ua}


def test_clients_list_get_create_update(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    created = c.check(
        harvest.post("/harvest/v2/clients", json={"name": "Acme Ltd", "currency": "GBP"})
    )
    assert created["name"] == "Acme Ltd"
    assert created["is_active"] is True
    got = c.check(harvest.get(f"/harvest/v2/clients/{created['id']}"))
    assert got == created
    updated = c.check(
        harvest.patch(f"/harvest/v2/clients/{created['id']}", json={"address": "1 High St"})
    )
    assert updated["address"] == "1 High St"
    assert updated["updated_at"] >= created["updated_at"]
    listed = c.check(harvest.get("/harvest/v2/clients"))
    assert [x["id"] for x in listed["clients"]] == [created["id"]]
    assert listed["total_entries"] == 1
    assert listed["links"]["next"] is None


def test_contacts(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    client = c.check(harvest.post("/harvest/v2/clients", json={"name": "Acme"}))
    contact = c.check(
        harvest.post(
            "/harvest/v2/contacts",
            json={"client_id": client["id"], "first_name": "Jo", "email": "jo@acme.example"},
        )
    )
    assert contact["client"] == {"id": client["id"], "name": "Acme"}
    c.check(harvest.patch(f"/harvest/v2/contacts/{contact['id']}", json={"title": "CFO"}))
    c.check(harvest.get(f"/harvest/v2/contacts/{contact['id']}"))
    assert (
        c.check(harvest.get("/harvest/v2/contacts", params={"client_id": client["id"]}))[
            "total_entries"
        ]
        == 1
    )


def test_users_tasks_roles_company(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    p = build_project(harvest, c)
    user = c.check(harvest.patch(f"/harvest/v2/users/{p['user']['id']}", json={"cost_rate": 75.5}))
    assert user["cost_rate"] == 75.5
    assert user["default_hourly_rate"] == 180.0
    c.check(harvest.get(f"/harvest/v2/users/{user['id']}"))
    users = c.check(harvest.get("/harvest/v2/users"))
    assert users["total_entries"] == 2  # the token's own admin user plus Ada
    c.check(harvest.get("/harvest/v2/users/me"))
    c.check(harvest.patch(f"/harvest/v2/tasks/{p['task']['id']}", json={"is_active": True}))
    c.check(harvest.get(f"/harvest/v2/tasks/{p['task']['id']}"))
    c.check(harvest.get("/harvest/v2/tasks"))
    role = c.check(
        harvest.post("/harvest/v2/roles", json={"name": "Engineer", "user_ids": [user["id"]]})
    )
    c.check(harvest.get(f"/harvest/v2/roles/{role['id']}"))
    c.check(harvest.get("/harvest/v2/roles"))
    c.check(harvest.get("/harvest/v2/company"))


def test_projects_and_assignments(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    p = build_project(harvest, c)
    pid = p["project"]["id"]
    assert p["project"]["client"]["currency"] == "EUR"
    c.check(harvest.get(f"/harvest/v2/projects/{pid}"))
    archived = c.check(harvest.patch(f"/harvest/v2/projects/{pid}", json={"is_active": False}))
    assert archived["is_active"] is False
    assert (
        c.check(harvest.get("/harvest/v2/projects", params={"is_active": "true"}))["total_entries"]
        == 0
    )
    c.check(harvest.get(f"/harvest/v2/projects/{pid}/task_assignments"))
    c.check(harvest.get(f"/harvest/v2/projects/{pid}/task_assignments/{p['ta']['id']}"))
    c.check(
        harvest.patch(
            f"/harvest/v2/projects/{pid}/task_assignments/{p['ta']['id']}",
            json={"hourly_rate": 200.0},
        )
    )
    c.check(harvest.get("/harvest/v2/task_assignments"))
    c.check(harvest.get(f"/harvest/v2/projects/{pid}/user_assignments"))
    c.check(harvest.get(f"/harvest/v2/projects/{pid}/user_assignments/{p['ua']['id']}"))
    ua = c.check(
        harvest.patch(
            f"/harvest/v2/projects/{pid}/user_assignments/{p['ua']['id']}",
            json={"use_default_rates": False, "hourly_rate": 210.0},
        )
    )
    assert ua["hourly_rate"] == 210.0
    c.check(harvest.get("/harvest/v2/user_assignments"))


def test_time_entries_with_approval_state(
    harvest: httpx.Client, harvest_contract: Contract
) -> None:
    c = harvest_contract
    p = build_project(harvest, c)
    body = {
        "user_id": p["user"]["id"],
        "project_id": p["project"]["id"],
        "task_id": p["task"]["id"],
        "spent_date": "2024-03-04",
        "hours": 7.5,
    }
    entry = c.check(
        harvest.post(
            "/harvest/v2/time_entries", json={**body, "external_reference": {"id": "concord-1"}}
        )
    )
    assert entry["billable"] is True
    assert entry["billable_rate"] == 180.0
    assert entry["cost_rate"] == 70.0
    assert entry["is_closed"] is False
    assert entry["approval_status"] == "unsubmitted"
    assert entry["is_running"] is False
    assert entry["user_assignment"]["id"] == p["ua"]["id"]
    assert entry["task_assignment"]["id"] == p["ta"]["id"]
    approved = c.check(
        harvest.patch(
            f"/harvest/v2/time_entries/{entry['id']}", json={"approval_status": "approved"}
        )
    )
    assert approved["is_closed"] is True
    assert approved["is_locked"] is True
    locked = harvest.patch(f"/harvest/v2/time_entries/{entry['id']}", json={"hours": 1.0})
    assert locked.status_code == 422
    c.check(locked)
    c.check(harvest.get(f"/harvest/v2/time_entries/{entry['id']}"))
    listed = c.check(
        harvest.get(
            "/harvest/v2/time_entries",
            params={"project_id": p["project"]["id"], "from": "2024-03-01", "to": "2024-03-31"},
        )
    )
    assert listed["total_entries"] == 1
    assert (
        c.check(harvest.get("/harvest/v2/time_entries", params={"is_billed": "true"}))[
            "total_entries"
        ]
        == 0
    )


def test_time_entry_rules_refused_in_harvest_format(
    harvest: httpx.Client, harvest_contract: Contract
) -> None:
    c = harvest_contract
    p = build_project(harvest, c)
    other_task = c.check(harvest.post("/harvest/v2/tasks", json={"name": "Design"}))
    unassigned = harvest.post(
        "/harvest/v2/time_entries",
        json={
            "project_id": p["project"]["id"],
            "task_id": other_task["id"],
            "spent_date": "2024-03-04",
            "hours": 1,
        },
    )
    assert unassigned.status_code == 422
    assert "not assigned" in c.check(unassigned)["message"]
    missing = harvest.post("/harvest/v2/time_entries", json={"project_id": p["project"]["id"]})
    assert missing.status_code == 422
    assert "blank" in c.check(missing)["message"]
    harvest.patch(f"/harvest/v2/projects/{p['project']['id']}", json={"is_active": False})
    archived = harvest.post(
        "/harvest/v2/time_entries",
        json={
            "project_id": p["project"]["id"],
            "task_id": p["task"]["id"],
            "spent_date": "2024-03-04",
            "hours": 1,
        },
    )
    assert archived.status_code == 422
    assert "archived" in c.check(archived)["message"]


def test_expenses(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    p = build_project(harvest, c)
    category = c.check(
        harvest.post(
            "/harvest/v2/expense_categories",
            json={"name": "Mileage", "unit_name": "mile", "unit_price": 0.5},
        )
    )
    c.check(harvest.get("/harvest/v2/expense_categories"))
    expense = c.check(
        harvest.post(
            "/harvest/v2/expenses",
            json={
                "user_id": p["user"]["id"],
                "project_id": p["project"]["id"],
                "expense_category_id": category["id"],
                "spent_date": "2024-03-05",
                "units": 100,
            },
        )
    )
    assert expense["total_cost"] == 50.0
    assert expense["expense_category"]["unit_price"] == "0.5"
    c.check(
        harvest.patch(f"/harvest/v2/expenses/{expense['id']}", json={"approval_status": "approved"})
    )
    c.check(harvest.get(f"/harvest/v2/expenses/{expense['id']}"))
    assert (
        c.check(harvest.get("/harvest/v2/expenses", params={"user_id": p["user"]["id"]}))[
            "total_entries"
        ]
        == 1
    )


def test_invoices(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    p = build_project(harvest, c)
    invoice = c.check(
        harvest.post(
            "/harvest/v2/invoices",
            json={
                "client_id": p["client"]["id"],
                "currency": "EUR",
                "tax": 19.0,
                "line_items": [
                    {
                        "project_id": p["project"]["id"],
                        "kind": "Service",
                        "description": "March",
                        "quantity": 10,
                        "unit_price": 150,
                        "taxed": True,
                    }
                ],
            },
        )
    )
    assert invoice["amount"] == 1785.0
    assert invoice["state"] == "draft"
    c.check(
        harvest.patch(f"/harvest/v2/invoices/{invoice['id']}", json={"subject": "March services"})
    )
    c.check(harvest.get(f"/harvest/v2/invoices/{invoice['id']}"))
    c.check(harvest.get("/harvest/v2/invoices"))


def test_paging_and_updated_since(harvest: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    ids = [
        c.check(harvest.post("/harvest/v2/clients", json={"name": f"Client {n}"}))["id"]
        for n in range(5)
    ]
    page1 = c.check(harvest.get("/harvest/v2/clients", params={"per_page": 2}))
    assert page1["total_pages"] == 3
    assert page1["next_page"] == 2
    assert len(page1["clients"]) == 2
    seen = [x["id"] for x in page1["clients"]]
    url = page1["links"]["next"]
    while url:
        page = c.check(harvest.get(url))
        seen += [x["id"] for x in page["clients"]]
        url = page["links"]["next"]
    assert sorted(seen) == sorted(ids)
    assert seen == sorted(ids, reverse=True)
    # Harvest timestamps have whole seconds and updated_since is inclusive: step past the second.
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    moved = c.check(harvest.patch(f"/harvest/v2/clients/{ids[0]}", json={"address": "moved"}))
    changed = c.check(
        harvest.get("/harvest/v2/clients", params={"updated_since": moved["updated_at"]})
    )
    assert [x["id"] for x in changed["clients"]] == [ids[0]]
    future = c.check(
        harvest.get("/harvest/v2/clients", params={"updated_since": "2999-01-01T00:00:00Z"})
    )
    assert future["total_entries"] == 0
    assert future["clients"] == []


def test_auth_and_not_found_errors(client: httpx.Client, harvest_contract: Contract) -> None:
    c = harvest_contract
    no_token = client.get("/harvest/v2/clients", headers={"Harvest-Account-Id": "100001"})
    assert no_token.status_code == 401
    assert c.check(no_token)["error"] == "invalid_token"
    wrong_account = client.get(
        "/harvest/v2/clients",
        headers={"Authorization": "Bearer sandbox-harvest-token", "Harvest-Account-Id": "9"},
    )
    assert wrong_account.status_code == 401
    no_agent = client.get(
        "/harvest/v2/clients",
        headers={
            "Authorization": "Bearer sandbox-harvest-token",
            "Harvest-Account-Id": "100001",
            "User-Agent": "",
        },
    )
    assert no_agent.status_code == 403
    assert "User-Agent" in c.check(no_agent)["message"]
    client.headers.update(
        {"Authorization": "Bearer sandbox-harvest-token", "Harvest-Account-Id": "100001"}
    )
    missing = client.get("/harvest/v2/clients/12345")
    assert missing.status_code == 404
    c.check(missing)
    duplicate = [client.post("/harvest/v2/clients", json={"name": "Twice"}) for _ in range(2)][1]
    assert duplicate.status_code == 422
    assert c.check(duplicate)["message"] == "Name has already been taken"


def test_milestone_extension(harvest: httpx.Client, harvest_contract: Contract) -> None:
    """``x_milestones`` is a sandbox extension (not in the spec): same envelope as Harvest lists."""
    p = build_project(harvest, harvest_contract)
    created = harvest.post(
        "/harvest/v2/x_milestones",
        json={
            "project_id": p["project"]["id"],
            "name": "Go-live",
            "amount": 25000.0,
            "due_on": "2024-06-30",
        },
    )
    assert created.status_code == 201
    milestone = created.json()
    assert milestone["status"] == "open"
    assert milestone["currency"] == "EUR"
    assert milestone["project"]["code"] == "P-1"
    done = harvest.patch(
        f"/harvest/v2/x_milestones/{milestone['id']}", json={"status": "complete"}
    ).json()
    assert done["status"] == "complete"
    assert done["completed_at"]
    listed = harvest.get("/harvest/v2/x_milestones", params={"status": "complete"}).json()
    assert listed["total_entries"] == 1
    assert set(listed) >= {
        "x_milestones",
        "per_page",
        "links",
        "next_page",
    }
    bad = harvest.patch(f"/harvest/v2/x_milestones/{milestone['id']}", json={"status": "done"})
    assert bad.status_code == 422
    cards = harvest.post(
        "/harvest/v2/x_rate_cards",
        json={"role": "Engineer", "currency": "EUR", "hourly_rate": 170.0},
    )
    assert cards.status_code == 201
    assert harvest.get("/harvest/v2/x_rate_cards").json()["total_entries"] == 1


def _query(url: str) -> dict[str, str]:
    return dict(httpx.URL(url).params)


def test_cursor_paging_where_the_spec_deprecates_page(
    harvest: httpx.Client, harvest_contract: Contract
) -> None:
    """Clients (and the other lists whose ``page`` the spec marks deprecated) are paged as
    Harvest pages them: a first request without ``page`` gets ``links.next`` with a
    ``cursor``; page numbers are given on the first and the last page only."""
    c = harvest_contract
    ids = [
        c.check(harvest.post("/harvest/v2/clients", json={"name": f"Client {n}"}))["id"]
        for n in range(7)
    ]
    first = c.check(harvest.get("/harvest/v2/clients", params={"per_page": 3}))
    assert (first["page"], first["next_page"], first["previous_page"]) == (1, 2, None)
    assert first["total_pages"] == 3
    assert "cursor" in _query(first["links"]["next"])
    assert "page" not in _query(first["links"]["next"])
    seen = [x["id"] for x in first["clients"]]
    second = c.check(harvest.get(first["links"]["next"]))
    assert (second["next_page"], second["previous_page"]) == (None, None)  # a middle page
    assert "cursor" in _query(second["links"]["next"])
    assert "cursor" in _query(second["links"]["previous"])
    # A record deleted from a page already read moves nothing across the cursor's boundary.
    assert harvest.delete(f"/harvest/v2/clients/{seen[0]}").status_code == 200
    last = c.check(harvest.get(second["links"]["next"]))
    assert last["links"]["next"] is None
    assert last["page"] == last["total_pages"]
    seen += [x["id"] for x in second["clients"]] + [x["id"] for x in last["clients"]]
    assert seen == sorted(ids, reverse=True)
    back = c.check(harvest.get(second["links"]["previous"]))
    assert [x["id"] for x in back["clients"]] == sorted(ids, reverse=True)[1:3]

    # The deprecated ``page`` still works there, with page links, as in Harvest.
    paged = c.check(harvest.get("/harvest/v2/clients", params={"page": 1, "per_page": 3}))
    assert paged["page"] == 1
    assert _query(paged["links"]["next"])["page"] == "2"
    refused = harvest.get("/harvest/v2/clients", params={"cursor": "not-a-cursor"})
    assert refused.status_code == 422
    assert c.check(refused)["message"] == "cursor is invalid"


def test_time_entries_keep_page_numbers(harvest: httpx.Client, harvest_contract: Contract) -> None:
    """Where the spec has no ``cursor`` (time entries, expenses, invoices, an assignment list
    under its project) ``links.next`` names the next page."""
    c = harvest_contract
    made = build_project(harvest, c)
    for day in ("2026-05-04", "2026-05-05", "2026-05-06"):
        c.check(
            harvest.post(
                "/harvest/v2/time_entries",
                json={
                    "project_id": made["project"]["id"],
                    "task_id": made["task"]["id"],
                    "user_id": made["user"]["id"],
                    "spent_date": day,
                    "hours": 1.0,
                },
            )
        )
    first = c.check(harvest.get("/harvest/v2/time_entries", params={"per_page": 2}))
    assert _query(first["links"]["next"])["page"] == "2"
    assert "cursor" not in _query(first["links"]["next"])
    second = c.check(harvest.get(first["links"]["next"]))
    assert second["links"]["next"] is None
    assert len(first["time_entries"]) + len(second["time_entries"]) == 3
    nested = c.check(harvest.get(f"/harvest/v2/projects/{made['project']['id']}/task_assignments"))
    assert "cursor" not in _query(nested["links"]["first"])
