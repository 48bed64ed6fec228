"""Who sees and acts on which cases: a user their queues' cases only, integration admins all,
a user in no group nothing; the same rule in the selectors, the actions and the API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from exceptions import actions, selectors
from exceptions.access import case_access
from exceptions.errors import CaseForbidden, CaseRefused
from exceptions.models import CaseEvent, WorkQueue
from tests.exceptions.cases import (
    admin_user,
    finance_case,
    finance_user,
    fresh,
    pmo_case,
    pmo_user,
    user,
)

pytestmark = pytest.mark.django_db


def _api(person: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(person)
    return client


def test_each_role_works_its_own_queue_and_admins_all() -> None:
    assert case_access(finance_user()).queues == {"finance"}
    assert case_access(pmo_user()).queues == {"pmo"}
    assert case_access(admin_user()).all_queues
    nobody = case_access(user(""))
    assert nobody.none


def test_an_explicit_member_works_the_queue_without_its_role() -> None:
    helper = finance_user()
    WorkQueue.objects.get(code="pmo").members.add(helper)
    assert case_access(helper).queues == {"finance", "pmo"}


def test_a_pmo_user_neither_sees_nor_acts_on_a_finance_case() -> None:
    pmo = pmo_user()
    theirs, finances = pmo_case(), finance_case()
    listed = selectors.case_list(user=pmo).cases
    assert [c.pk for c in listed] == [theirs.pk]
    with pytest.raises(CaseForbidden, match=r"in the Finance queue, which you do not work in"):
        selectors.case_detail(user=pmo, case_id=finances.pk)
    with pytest.raises(CaseForbidden):
        actions.case_take(actor=pmo, case_id=finances.pk, revision=0)
    with pytest.raises(CaseForbidden):
        actions.case_comment(actor=pmo, case_id=finances.pk, text="mine now")
    with pytest.raises(CaseForbidden):
        actions.case_bulk(actor=pmo, action="take", revisions={theirs.pk: 0, finances.pk: 0})
    assert fresh(finances).assignee_id is None
    assert fresh(theirs).assignee_id is None  # all or nothing
    assert not CaseEvent.objects.filter(actor=pmo).exists()


def test_an_integration_admin_sees_and_acts_on_every_queue() -> None:
    admin = admin_user()
    cases = [pmo_case(), finance_case()]
    assert {c.pk for c in selectors.case_list(user=admin).cases} == {c.pk for c in cases}
    actions.case_take(actor=admin, case_id=cases[1].pk, revision=0)
    assert fresh(cases[1]).assignee_id == admin.pk


def test_a_case_goes_only_to_someone_who_works_its_queue() -> None:
    ada, pmo = finance_user(), pmo_user(username="pat")
    case = finance_case()
    with pytest.raises(CaseRefused, match="pat does not work in the Finance queue"):
        actions.case_assign(actor=ada, case_id=case.pk, assignee_id=pmo.pk, revision=0)
    assert fresh(case).assignee_id is None


def test_the_api_refuses_a_pmo_user_a_finance_case() -> None:
    pmo = _api(pmo_user())
    theirs, finances = pmo_case(), finance_case()
    listed = pmo.get("/api/v1/cases/")
    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()["results"]] == [theirs.pk]
    detail = pmo.get(f"/api/v1/cases/{finances.pk}/")
    assert detail.status_code == 403
    assert detail.json()["detail"] == (
        f"Case #{finances.pk} is in the Finance queue, which you do not work in."
    )
    taken = pmo.post(f"/api/v1/cases/{finances.pk}/take/", {"revision": 0}, format="json")
    assert taken.status_code == 403
    retried = pmo.post(f"/api/v1/cases/{finances.pk}/retry/", {"revision": 0}, format="json")
    assert retried.status_code == 403
    assert fresh(finances).revision == 0
    assert pmo.get("/api/v1/cases/999999/").status_code == 404


def test_the_api_shows_an_integration_admin_every_queue() -> None:
    admin = _api(admin_user())
    cases = [pmo_case(), finance_case()]
    listed = admin.get("/api/v1/cases/").json()["results"]
    assert {c["id"] for c in listed} == {c.pk for c in cases}
    assert admin.get(f"/api/v1/cases/{cases[1].pk}/").status_code == 200
    queues = {q["code"] for q in admin.get("/api/v1/queues/").json()}
    assert queues == {"finance", "pmo", "sales_ops", "integration_admin"}


def test_the_api_refuses_a_user_in_no_queue_everywhere() -> None:
    nobody = _api(user(""))
    case = finance_case()
    for path in ("/api/v1/cases/", f"/api/v1/cases/{case.pk}/", "/api/v1/queues/"):
        response = nobody.get(path)
        assert response.status_code == 403, path
    response = nobody.post(f"/api/v1/cases/{case.pk}/take/", {"revision": 0}, format="json")
    assert response.status_code == 403
    assert "You work in no exception queue" in response.json()["detail"]
    assert APIClient().get("/api/v1/cases/").status_code == 401


def test_the_admin_shows_cases_to_those_who_work_their_queues() -> None:
    finances, theirs = finance_case(), pmo_case()
    admin = Client()
    admin.force_login(admin_user(is_staff=True))
    listed = admin.get("/admin/exceptions/exceptioncase/")
    assert listed.status_code == 200
    assert f"/admin/exceptions/exceptioncase/{finances.pk}/change/" in listed.content.decode()
    assert f"/admin/exceptions/exceptioncase/{theirs.pk}/change/" in listed.content.decode()
    pmo = Client()
    pmo.force_login(pmo_user(is_staff=True))
    page = pmo.get("/admin/exceptions/exceptioncase/").content.decode()
    assert f"/admin/exceptions/exceptioncase/{theirs.pk}/change/" in page
    assert f"/admin/exceptions/exceptioncase/{finances.pk}/change/" not in page
    assert pmo.get(f"/admin/exceptions/exceptioncase/{finances.pk}/change/").status_code == 302
