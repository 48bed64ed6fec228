"""Pages: a login wall in front of everything, and each role sees only its own pages."""

from __future__ import annotations

import pytest
from django.test import Client

from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, ROLES, SALES_OPS, VIEWER
from tests.factories import CustomerFactory, ProjectFactory, TimeEntryFactory, UserFactory

pytestmark = pytest.mark.django_db

PAGES = {
    "/finance/": FINANCE,
    "/pmo/": PMO,
    "/sales-ops/": SALES_OPS,
    "/integration-admin/": INTEGRATION_ADMIN,
    "/config/": INTEGRATION_ADMIN,
}


@pytest.mark.parametrize("url", ["/", *PAGES, "/admin/integrations/customer/"])
def test_anonymous_is_sent_to_the_login_page(url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_login_page_is_public_and_signs_in() -> None:
    UserFactory.create(username="pmo1", role=PMO)
    client = Client()
    assert b"Sign in to Concord" in client.get("/login/").content
    failed = client.post("/login/", {"username": "pmo1", "password": "wrong"})
    assert b"didn't match" in failed.content
    response = client.post(
        "/login/", {"username": "pmo1", "password": "correct horse battery staple"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_opens_only_its_own_pages(role: str) -> None:
    client = Client()
    client.force_login(UserFactory.create(role=role))
    home = client.get("/")
    assert home.status_code == 200
    for url, owner in PAGES.items():
        response = client.get(url)
        assert response.status_code == (200 if owner == role else 403), (role, url)
        # The navigation offers only what the role may open.
        assert (url.encode() in home.content) == (owner == role), (role, url)


def test_viewer_cannot_open_the_admin() -> None:
    client = Client()
    client.force_login(UserFactory.create(role=VIEWER))
    assert client.get("/admin/").status_code == 302


def test_finance_page_shows_unbilled_time_and_missing_tax_numbers(
    django_assert_max_num_queries,
) -> None:
    project = ProjectFactory.create()
    for _ in range(3):
        TimeEntryFactory.create(project=project)  # 3 x 7.5 approved hours
    TimeEntryFactory.create(project=project, approval_state="submitted")
    CustomerFactory.create(name="Umbrella plc", tax_number="")
    client = Client()
    client.force_login(UserFactory.create(role=FINANCE))
    with django_assert_max_num_queries(10):
        page = client.get("/finance/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "<strong>22.50</strong>" in text
    assert "Umbrella plc" in text


def test_pages_show_empty_states() -> None:
    client = Client()
    client.force_login(UserFactory.create(role=PMO))
    assert b"No projects yet." in client.get("/pmo/").content


def test_integration_admin_page_shows_circuit_state_and_recent_calls(
    django_assert_max_num_queries,
) -> None:
    from django.utils import timezone

    from integrations.models import ConnectionHealth, SyncAttempt
    from tests.factories import make_connection

    xero = make_connection()
    make_connection(name="Harvest", role="psa", vendor="harvest", base_url="http://127.0.0.1:1/")
    ConnectionHealth.objects.create(connection=xero, circuit_state="open")
    for outcome, status in [("success", 200), ("transient", 429), ("transient", 500)]:
        SyncAttempt.objects.create(
            connection=xero,
            operation="put_invoices",
            started_at=timezone.now(),
            latency_ms=12,
            status_code=status,
            outcome=outcome,
        )
    client = Client()
    client.force_login(UserFactory.create(role=INTEGRATION_ADMIN))
    with django_assert_max_num_queries(12):
        page = client.get("/integration-admin/")
    text = page.content.decode()
    assert "Open" in text
    assert "1 / 2 / 1" in text  # ok / failed / throttled in the last hour
    assert "no calls yet" in text  # the Harvest connection has never called out


def test_integration_admin_page_queries_do_not_grow_with_connections_or_calls() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from integrations.models import SyncAttempt
    from tests.factories import make_connection

    client = Client()
    client.force_login(UserFactory.create(role=INTEGRATION_ADMIN))

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/integration-admin/").status_code == 200
        return len(captured)

    make_connection()
    with_one = queries()
    for index in range(3):
        extra = make_connection(name=f"Harvest {index}", role="psa", vendor="harvest")
        for _ in range(2):
            SyncAttempt.objects.create(
                connection=extra,
                operation="get_projects",
                started_at=timezone.now(),
                latency_ms=5,
                status_code=200,
                outcome="success",
            )
    assert queries() == with_one
