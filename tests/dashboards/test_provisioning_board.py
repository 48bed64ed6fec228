"""The PMO provisioning board (dashboards/provisioning.py) through its real URLs: who may see it,
what a row shows, the filters, sorts, keyset pages, CSV, the htmx fragment that refreshes
itself, one run's page, and queries that do not grow with the rows shown."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext

from exceptions.models import ExceptionCase
from exceptions.services import Blocked, case_open_or_join
from integrations.models import RunState, WorkflowRun
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO
from integrations.workflows import checks
from tests.factories import CustomerFactory, LegalEntityFactory, UserFactory
from tests.provisioning_runs import provisioning_runs

pytestmark = pytest.mark.django_db

BOARD = "/provisioning/"
ROW = re.compile(r'<tr id="run-(\d+)" class="board-row( late stuck)?"')


def _client(role: str) -> tuple[Client, User]:
    person = UserFactory.create(role=role)
    client = Client()
    client.force_login(person)
    return client, person


def _ids(page: str) -> list[int]:
    return [int(pk) for pk, _ in ROW.findall(page)]


@pytest.mark.parametrize(
    ("role", "status"), [(PMO, 200), (INTEGRATION_ADMIN, 200), (FINANCE, 403), ("", 403)]
)
def test_pmo_and_integration_admins_see_the_board_others_do_not(role: str, status: int) -> None:
    client, _ = _client(role)
    for path in (BOARD, f"{BOARD}export/"):
        assert client.get(path).status_code == status
    nav = client.get("/").content.decode()
    assert (f'href="{BOARD}"' in nav) is (status == 200)


def test_a_row_shows_stage_time_customer_entity_failure_and_its_case() -> None:
    client, _ = _client(PMO)
    entity = LegalEntityFactory.create(code="UK01")
    customer = CustomerFactory.create(name="Acme GmbH")
    (blocked,) = provisioning_runs(
        1,
        step="validate",
        since=timedelta(hours=3),
        state=RunState.BLOCKED,
        detail="contract C-9: no payment terms",
        region="emea",
        legal_entity=entity,
        context={"customer_id": customer.pk, "account": "001A"},
    )
    case = case_open_or_join(
        case_type="provisioning_billing_terms_missing",
        subject={"contract_id": 9, "contract": "C-9", "missing": "x", "opportunity": "O"},
        records=[Blocked("workflowrun", blocked.pk)],
        process="provisioning",
        step="validate",
    )
    WorkflowRun.objects.filter(pk=blocked.pk).update(exception_case=case)
    (fresh,) = provisioning_runs(
        1, step="erp_customer", since=timedelta(minutes=2), context={"account": "001B"}
    )
    (done,) = provisioning_runs(1, step="write_back", since=timedelta(days=1), state="done")

    page = client.get(BOARD).content.decode()

    # Under way first, the longest at its stage first; then the done ones.
    assert _ids(page) == [blocked.pk, fresh.pk, done.pk]
    row = page[page.index(f'id="run-{blocked.pk}"') :].split("</tr>")[0]
    assert 'class="board-row late stuck"' in row
    for text in (
        "Acme GmbH",
        "EMEA",
        "UK01",
        "Checking account, contract and tax profile",
        "3 hours",
        "Stuck",
        "Blocked by a case",
        "contract C-9: no payment terms",
        f'href="/cases/{case.pk}/"',
    ):
        assert text in row, text
    fresh_row = page[page.index(f'id="run-{fresh.pk}"') :].split("</tr>")[0]
    assert "CRM account 001B" in fresh_row
    assert "Customer in the ERP" in fresh_row
    assert "Stuck" not in fresh_row
    assert "Provisioned" in page[page.index(f'id="run-{done.pk}"') :].split("</tr>")[0]


def test_a_stuck_run_links_to_the_case_the_check_opened() -> None:
    client, _ = _client(INTEGRATION_ADMIN)
    (run,) = provisioning_runs(1, step="erp_dimension", since=timedelta(hours=2))
    checks.run_stuck_check()
    case = ExceptionCase.objects.get(case_type="workflow_run_stuck", status="open")

    page = client.get(BOARD).content.decode()

    row = page[page.index(f'id="run-{run.pk}"') :].split("</tr>")[0]
    assert f'href="/cases/{case.pk}/"' in row


def test_filters_by_region_entity_stage_state_and_stuck() -> None:
    client, _ = _client(PMO)
    uk, de = LegalEntityFactory.create(code="UK01"), LegalEntityFactory.create(code="DE01")
    emea = provisioning_runs(
        2, step="psa_project", since=timedelta(hours=2), region="emea", legal_entity=uk
    )
    apac = provisioning_runs(
        3, step="psa_project", since=timedelta(minutes=5), region="apac", legal_entity=de
    )
    done = provisioning_runs(1, step="write_back", since=timedelta(days=2), state="done")
    blocked = provisioning_runs(1, step="validate", since=timedelta(minutes=1), state="blocked")

    def shown(query: str) -> set[int]:
        response = client.get(f"{BOARD}?{query}")
        assert response.status_code == 200, response.content
        return set(_ids(response.content.decode()))

    ids = {r.pk for r in emea}, {r.pk for r in apac}
    assert shown("region=emea") == ids[0]
    assert shown(f"legal_entity={de.pk}") == ids[1]
    assert shown("stage=psa_project") == ids[0] | ids[1]
    assert shown("stage=done") == {done[0].pk}
    assert shown("state=blocked") == {blocked[0].pk}
    assert shown("stuck=yes") == ids[0]
    assert shown("stuck=no") == ids[1] | {done[0].pk, blocked[0].pk}
    assert shown(f"q={emea[0].label}") == {emea[0].pk}
    empty = client.get(f"{BOARD}?region=americas").content.decode()
    assert "No provisioning run matches these filters." in empty
    assert client.get(f"{BOARD}?stage=nowhere").status_code == 400


def test_the_empty_board_says_why() -> None:
    client, _ = _client(PMO)
    assert "No opportunity has been won yet" in client.get(BOARD).content.decode()


def test_sorts_and_keyset_pages_walk_every_run_once() -> None:
    client, _ = _client(PMO)
    runs = [
        provisioning_runs(1, step="psa_client", since=timedelta(minutes=n))[0] for n in range(60)
    ]
    page = client.get(f"{BOARD}?sort=stage_time").content.decode()
    first = _ids(page)
    assert len(first) == 50
    assert first[:3] == [runs[59].pk, runs[58].pk, runs[57].pk]  # longest at its stage first
    following = re.search(r'href="(/provisioning/\?[^"]*cursor=[^"]+)"', page)
    assert following is not None
    rest = _ids(client.get(following.group(1).replace("&amp;", "&")).content.decode())
    assert len(rest) == 10
    assert sorted(first + rest) == sorted(r.pk for r in runs)
    newest = _ids(client.get(f"{BOARD}?sort=started").content.decode())
    assert newest[0] == runs[0].pk


def test_csv_has_every_filtered_run_in_the_sort_order() -> None:
    client, _ = _client(PMO)
    entity = LegalEntityFactory.create(code="=HACK")
    runs = provisioning_runs(
        60, step="erp_customer", since=timedelta(hours=2), region="emea", legal_entity=entity
    )
    provisioning_runs(5, step="erp_customer", since=timedelta(hours=2), region="apac")

    response = client.get(f"{BOARD}export/?region=emea&sort=started_oldest")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(bytes(chunk) for chunk in response.streaming_content).decode()
    lines = list(csv.reader(io.StringIO(body)))
    assert lines[0][:6] == ["run", "opportunity", "customer", "region", "legal entity", "stage"]
    assert [int(line[0]) for line in lines[1:]] == [r.pk for r in runs]
    assert lines[1][4] == "'=HACK"  # no formula reaches a spreadsheet
    assert lines[1][5] == "Customer in the ERP"
    assert lines[1][8] == "yes"


def test_htmx_gets_the_fragment_that_polls_itself_every_15_seconds() -> None:
    client, _ = _client(PMO)
    provisioning_runs(2, step="psa_project", since=timedelta(minutes=3), region="emea")

    response = client.get(f"{BOARD}?region=emea", headers={"HX-Request": "true"})

    body = response.content.decode()
    assert "<html" not in body
    assert body.lstrip().startswith('<section id="board-results"')
    assert 'hx-trigger="every 15s"' in body
    assert 'hx-get="/provisioning/?region=emea"' in body
    assert len(_ids(body)) == 2
    assert "HX-Request" in response["Vary"]


def test_a_runs_page_shows_its_steps_timings_ids_and_case() -> None:
    client, _ = _client(PMO)
    (run,) = provisioning_runs(
        1, step="psa_client", since=timedelta(minutes=90), detail="Refused by Harvest"
    )

    page = client.get(f"{BOARD}{run.pk}/").content.decode()

    assert "Client in the PSA" in page
    assert "Customer in the ERP" in page
    assert f"ERP customer <code>cust-{run.pk}</code>" in page
    assert "Refused by Harvest" in page
    assert "1 hour so far" in page
    assert "1 minute" in page  # a finished step's time
    assert "Stuck" in page
    assert client.get(f"{BOARD}999999/").status_code == 404


@pytest.mark.parametrize("path", [BOARD, f"{BOARD}?sort=started&stuck=yes"])
def test_the_board_makes_as_many_queries_for_50_rows_as_for_5(path: str) -> None:
    client, _ = _client(PMO)
    entity = LegalEntityFactory.create()
    customer = CustomerFactory.create()

    def add(count: int) -> None:
        provisioning_runs(
            count,
            step="erp_customer",
            since=timedelta(hours=2),
            legal_entity=entity,
            context={"customer_id": customer.pk},
        )

    add(5)
    client.get(path)  # the session's first read
    with CaptureQueriesContext(connection) as few:
        page = client.get(path).content.decode()
    assert len(_ids(page)) == 5
    add(45)
    with CaptureQueriesContext(connection) as many:
        page = client.get(path).content.decode()
    assert len(_ids(page)) == 50
    assert len(many.captured_queries) == len(few.captured_queries)
