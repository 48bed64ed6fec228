"""Fix in place in the REST API (/api/v1/cases/<id>/fix/): the same form class validates as on
the page (the same words), the same `fix_apply` writes (the same refusals: 403, 404, 409), the
same audit (the record's AuditEvent and the case's "fixed" event); GET describes the form, its
fields and whether the user may apply it. A billing-profile fix goes through to the Xero
sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from exceptions.models import CaseEvent, ExceptionCase, WorkQueue
from exceptions.services import case_resolve
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    AuditEvent,
    Connection,
    Customer,
    Invoice,
    LegalEntity,
    OutboxMessage,
)
from integrations.roles import PMO, VIEWER
from integrations.workflows.time_to_erp import invoice_reference
from tests.exceptions.cases import admin_user, finance_user, pmo_user, user
from tests.exceptions.test_fix_forms import (
    _admin_case,
    _case_about,
    _ownership_case,
    umbrella,  # noqa: F401 - fixture
)
from tests.factories import CustomerFactory, UserFactory
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)
from tests.workflows.test_fixes import (
    VAT,
    assert_billed,
    billing_firm,
    blocked_case,
    customer_rules,
    dispatch_all,
    fiona,  # noqa: F401 - fixture
    refused_case,
    sandbox_contact,
    sandbox_invoices,
    umbrella_firm,
    xero,  # noqa: F401 - fixture
    xero_contact,
)

pytestmark = pytest.mark.django_db


def _api(person: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(person)
    return client


def _url(case: ExceptionCase | int) -> str:
    return f"/api/v1/cases/{case if isinstance(case, int) else case.pk}/fix/"


def _post(person: User, case: ExceptionCase | int, body: dict[str, Any]) -> Any:
    return _api(person).post(_url(case), body, format="json")


def _nothing_written(customer: Customer) -> None:
    customer.refresh_from_db()
    assert customer.tax_number == ""
    assert not AuditEvent.objects.filter(object_type="customer").exists()
    assert not CaseEvent.objects.filter(action="fixed").exists()


# --- What the fix is -----------------------------------------------------------------------------


def test_get_describes_the_billing_profile_form_with_its_values_now(umbrella: Customer) -> None:  # noqa: F811
    case = _case_about(umbrella)
    response = _api(finance_user()).get(_url(case))
    assert response.status_code == 200
    body = response.json()
    assert (body["form"], body["title"], body["mode"]) == (
        "customer_billing_profile",
        "customer billing profile",
        "form",
    )
    assert (body["target"], body["adds"]) == ("the customer Umbrella GmbH", False)
    assert (body["can_apply"], body["why_not"]) == (True, "")
    assert (body["case"]["id"], body["case"]["revision"]) == (case.pk, 0)
    assert (body["admin_url"], body["retry_url"], body["incoming"]) == (None, None, None)
    fields = {f["name"]: f for f in body["fields"]}
    # The page's fields in the page's order; the revision is the request's own.
    assert list(fields) == ["tax_number", "country", "billing_email", "billing_address"]
    assert [(f["type"], f["label"], f["required"]) for f in body["fields"]] == [
        ("string", "Tax number", False),
        ("string", "Country", False),
        ("email", "Billing e-mail", False),
        ("text", "Billing address", False),
    ]
    assert fields["tax_number"]["help_text"] == (
        "The VAT or tax number, with its country prefix (DE811907980)."
    )
    assert (fields["tax_number"]["initial"], fields["country"]["initial"]) == ("", "DE")
    assert fields["country"]["choices"] is None


def test_a_project_form_lists_its_choices_and_bills_the_held_time_once_applied(
    xero: Connection,  # noqa: F811
) -> None:
    project = billing_firm(xero, legal_entity=None)
    case = blocked_case("project_without_legal_entity")
    pmo = UserFactory.create(role=PMO, username="pat")
    entity = LegalEntity.objects.get()

    body = _api(pmo).get(_url(case)).json()
    (field,) = body["fields"]
    assert (field["name"], field["type"], field["label"], field["required"]) == (
        "legal_entity",
        "choice",
        "Legal entity",
        True,
    )
    assert field["choices"] == [{"value": entity.pk, "label": str(entity)}]
    assert field["initial"] is None
    assert body["target"] == "the project P-GLX Globex rollout"

    response = _post(pmo, case, {"revision": case.revision, "values": {"legal_entity": entity.pk}})

    assert response.status_code == 200, response.json()
    result = response.json()
    assert result["summary"].startswith("Legal entity set on P-GLX Globex rollout; ")
    assert result["summary"].endswith("billed 2 of 2 held time entries.")
    assert result["changed"] == {"legal_entity": [None, entity.pk]}
    assert result["case"]["status"] == "resolved"
    assert_billed(case)
    project.refresh_from_db()
    assert project.legal_entity == entity
    audit = AuditEvent.objects.get(object_type="project", object_id=str(project.pk))
    assert audit.actor_label == "pat"
    assert CaseEvent.objects.filter(case=case, action="fixed", actor=pmo).exists()


# --- The fix through the API, against the Xero sandbox -------------------------------------------


def test_a_billing_profile_fix_is_written_to_xero_then_the_invoice_goes_once(
    xero: Connection,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
    fiona: User,  # noqa: F811
) -> None:
    contact_id = xero_contact(xero, "Umbrella GmbH")
    customer = umbrella_firm(xero, contact_id=contact_id)
    case = refused_case(xero)
    described = _api(fiona).get(_url(case)).json()
    assert described["can_apply"] is True
    assert {f["name"]: f["initial"] for f in described["fields"]}["tax_number"] == ""

    # Only the tax number: the fields left out keep their values (country DE stands).
    response = _post(fiona, case, {"revision": case.revision, "values": {"tax_number": VAT}})

    assert response.status_code == 200, response.json()
    body = response.json()
    system = f"Xero ({xero.name})"
    assert body["summary"] == (
        f"Tax number set on Umbrella GmbH; written to {system} through the outbox; "
        "the invoice will be sent again once it is there."
    )
    assert body["changed"] == {"tax_number": ["", VAT]}
    assert (body["case"]["id"], body["case"]["status"]) == (case.pk, "open")
    assert body["case"]["revision"] == case.revision + 1
    customer.refresh_from_db()
    assert (customer.tax_number, customer.country) == (VAT, "DE")
    # The same audit as the page: the record's AuditEvent (who, before and after) and the
    # case's "fixed" event.
    audit = AuditEvent.objects.get(object_type="customer", object_id=str(customer.pk))
    assert (audit.actor_label, audit.changes["tax_number"]) == ("fiona", ["", VAT])
    # Nothing else of the billing profile was touched (owned_by: who owns the new value).
    assert set(audit.changes) == {"tax_number", "owned_by"}
    fixed = CaseEvent.objects.get(case=case, action="fixed")
    assert (fixed.actor, fixed.before, fixed.after["tax_number"]) == (
        fiona,
        {"tax_number": ""},
        VAT,
    )
    assert fixed.after["written"] == [f"written to {system} through the outbox"]
    update = OutboxMessage.objects.get(process="fix_in_place")
    assert update.payload == {"ContactID": contact_id, "TaxNumber": VAT}

    dispatch_all(xero)

    assert sandbox_contact(sandbox, "Umbrella GmbH")["TaxNumber"] == VAT
    invoice = Invoice.objects.get()
    assert len(sandbox_invoices(sandbox, invoice_reference(invoice))) == 1
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    # A second post of the same fix: the case is closed now.
    again = _post(fiona, case, {"revision": case.revision, "values": {"tax_number": VAT}})
    assert again.status_code == 409
    assert again.json() == {"detail": f"Case #{case.pk} is resolved already; nothing was changed."}


# --- The same words as the page ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "errors"),
    [
        (
            {"tax_number": "DE12345", "country": "DE"},
            {
                "tax_number": [
                    "DE12345 is not a valid DE tax number: The number has an invalid length."
                ]
            },
        ),
        ({"country": "Germany"}, {"country": ["Give the two-letter country code (DE, GB, FR)."]}),
        (
            {"billing_email": "accounts at umbrella"},
            {"billing_email": ["Enter a valid email address."]},
        ),
    ],
)
def test_the_api_refuses_what_the_page_refuses_in_the_same_words(
    umbrella: Customer,  # noqa: F811
    values: dict[str, str],
    errors: dict[str, list[str]],
) -> None:
    case = _case_about(umbrella)
    person = finance_user()

    response = _post(person, case, {"revision": case.revision, "values": values})

    assert response.status_code == 400
    assert response.json()["errors"] == errors
    (words,) = next(iter(errors.values()))
    assert words in response.json()["detail"]
    page = Client()
    page.force_login(person)
    html = page.post(f"/cases/{case.pk}/fix/", {"revision": case.revision, **values})
    assert html.status_code == 400
    assert words in html.content.decode()
    _nothing_written(umbrella)


def test_a_field_the_form_does_not_have_and_a_body_without_revision_are_refused(
    umbrella: Customer,  # noqa: F811
) -> None:
    case = _case_about(umbrella)
    person = finance_user()
    unknown = _post(person, case, {"revision": case.revision, "values": {"vat": VAT}})
    assert unknown.status_code == 400
    assert unknown.json() == {
        "detail": "The form has no field vat; its fields are tax_number, country, "
        "billing_email, billing_address. Nothing was changed.",
        "errors": {"vat": ["The form has no such field."]},
    }
    no_revision = _post(person, case, {"values": {"tax_number": VAT}})
    assert no_revision.status_code == 400
    assert list(no_revision.json()) == ["revision"]
    not_an_object = _post(person, case, {"revision": case.revision, "values": [VAT]})
    assert not_an_object.status_code == 400
    assert list(not_an_object.json()) == ["values"]
    # Values the record already holds: fix_apply's own refusal.
    same = _post(person, case, {"revision": case.revision, "values": {"country": "DE"}})
    assert same.status_code == 400
    assert same.json() == {"detail": "Nothing was changed: Umbrella GmbH already has these values."}
    _nothing_written(umbrella)


# --- Each refusal --------------------------------------------------------------------------------


def test_another_queue_is_refused_403_and_no_such_case_404(umbrella: Customer) -> None:  # noqa: F811
    case = _case_about(umbrella)
    pmo = pmo_user()
    for response in (
        _api(pmo).get(_url(case)),
        _post(pmo, case, {"revision": case.revision, "values": {"tax_number": VAT}}),
    ):
        assert response.status_code == 403
        assert response.json() == {
            "detail": f"Case #{case.pk} is in a queue you do not work in; you cannot fix it."
        }
    for response in (
        _api(finance_user()).get(_url(987654)),
        _post(finance_user(), 987654, {"revision": 0, "values": {}}),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "There is no case #987654."}
    # A user who works in no queue is refused the whole cases API.
    assert _api(user()).get(_url(case)).status_code == 403
    _nothing_written(umbrella)


def test_a_queue_member_without_the_fix_permission_is_told_why_and_refused(
    umbrella: Customer,  # noqa: F811
) -> None:
    case = _case_about(umbrella)
    member = user(VIEWER)
    WorkQueue.objects.get(code="finance").members.add(member)
    words = (
        "Fixing a vendor validation case needs the permission integrations.change_customer, "
        "which you do not have."
    )

    described = _api(member).get(_url(case))
    assert described.status_code == 200
    assert described.json()["can_apply"] is False
    assert described.json()["why_not"] == f"{words} The Finance queue fixes it."

    refused = _post(member, case, {"revision": case.revision, "values": {"tax_number": VAT}})
    assert refused.status_code == 403
    assert refused.json() == {"detail": words}
    _nothing_written(umbrella)


def test_a_stale_revision_is_refused_409_and_nothing_is_written(umbrella: Customer) -> None:  # noqa: F811
    case = _case_about(umbrella)
    ada = finance_user(username="ada")
    taken = _api(ada).post(f"/api/v1/cases/{case.pk}/take/", {"revision": 0}, format="json")
    assert taken.status_code == 200

    response = _post(finance_user(), case, {"revision": 0, "values": {"tax_number": VAT}})

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Case #{case.pk} changed since you opened it (revision 0, now 1); nothing "
        "was changed. Reload it."
    }
    _nothing_written(umbrella)


def test_a_closed_case_is_described_as_closed_and_refused_409(umbrella: Customer) -> None:  # noqa: F811
    case = _case_about(umbrella)
    case_resolve(case_id=case.pk, note="Not ours to bill.", status="waived")
    person = finance_user()

    body = _api(person).get(_url(case)).json()
    assert body["can_apply"] is False
    assert body["why_not"] == (
        "This case is waived: Not ours to bill. There is nothing left to fix here."
    )
    case.refresh_from_db()
    response = _post(person, case, {"revision": case.revision, "values": {"tax_number": VAT}})
    assert response.status_code == 409
    assert response.json() == {"detail": f"Case #{case.pk} is waived already; nothing was changed."}
    _nothing_written(umbrella)


# --- Forms that are a way elsewhere, and an ownership decision -----------------------------------


def test_a_connection_settings_case_links_to_the_admin_and_has_nothing_to_post(
    xero: Connection,  # noqa: F811
) -> None:
    case = _admin_case(
        "permanent_error",
        {
            "vendor": "Xero",
            "about": "customer Globex",
            "connection_id": xero.pk,
            "error_kind": "auth",
            "error": "auth: refused",
            "attempts": 1,
        },
        xero.pk,
    )
    admin = admin_user()

    body = _api(admin).get(_url(case)).json()

    admin_url = f"http://testserver/admin/integrations/connection/{xero.pk}/change/"
    retry_url = f"http://testserver/api/v1/cases/{case.pk}/retry/"
    assert (body["mode"], body["fields"], body["target"]) == ("link", [], None)
    assert (body["admin_url"], body["retry_url"]) == (admin_url, retry_url)
    words = (
        "There is nothing to post for a connection settings case. The cause is the "
        f"connection's settings (address, tenant, credentials): fix them at {admin_url}, then "
        f"retry the case. Retry: POST {retry_url} with the revision you read."
    )
    assert (body["can_apply"], body["why_not"]) == (False, words)

    response = _post(admin, case, {"revision": case.revision, "values": {}})
    assert response.status_code == 400
    assert response.json() == {"detail": words}
    assert not CaseEvent.objects.filter(case=case, action="fixed").exists()


def test_an_ownership_decision_shows_what_came_in_and_is_decided_through_the_api(
    xero: Connection,  # noqa: F811
) -> None:
    customer_rules()
    mapping_defaults_install(connection=xero)
    globex = CustomerFactory.create(name="Globex Ltd")
    case = _ownership_case(globex, xero)
    admin = admin_user()
    body = _api(admin).get(_url(case)).json()
    assert body["incoming"] == {"name": "Globex Limited"}
    decision = {f["name"]: f for f in body["fields"]}["decision"]
    assert (decision["type"], decision["required"]) == ("choice", True)
    assert decision["choices"] == [
        {"value": "accept", "label": "Accept the incoming value"},
        {"value": "keep", "label": "Keep the owner's value"},
    ]

    response = _post(
        admin,
        case,
        {"revision": case.revision, "values": {"decision": "keep", "note": "Legal name per CRM"}},
    )

    assert response.status_code == 200, response.json()
    assert response.json()["summary"].startswith("Kept the owning system's name on Globex Ltd")
    assert response.json()["case"]["status"] == "resolved"
    globex.refresh_from_db()
    assert globex.name == "Globex Ltd"
    case.refresh_from_db()
    assert case.resolution_note == "Legal name per CRM"


def test_a_signed_out_caller_is_asked_to_sign_in(umbrella: Customer) -> None:  # noqa: F811
    case = _case_about(umbrella)
    assert APIClient().get(_url(case)).status_code == 401
    assert APIClient().post(_url(case), {"revision": 0}, format="json").status_code == 401
