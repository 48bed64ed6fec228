"""The fix-in-place form and page (/cases/<id>/fix/): the tax number checked with python-stdnum,
the fragment for htmx and the whole page without JavaScript, what was typed kept with its
errors (400), the result in words after a fix, a closed case, and every refusal in words."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from exceptions.forms import CustomerBillingProfileForm, tax_number_checked
from exceptions.models import CaseEvent, ExceptionCase, WorkQueue
from exceptions.services import Blocked, case_open_or_join, case_resolve
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    AuditEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    InboundMessage,
    MappingSet,
    OutboxMessage,
    OwnershipRule,
)
from integrations.roles import VIEWER
from tests.exceptions.cases import (
    admin_user,
    entries,
    finance_case,
    finance_user,
    mapping_case,
    pmo_user,
    sales_user,
    user,
)
from tests.factories import ContractFactory, CustomerFactory, make_connection
from tests.workflows.test_fixes import customer_rules

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def test_a_tax_number_is_checked_for_the_country_its_prefix_names() -> None:
    assert tax_number_checked("de 811 907 980", "GB") == "DE811907980"
    assert tax_number_checked("GB980780684", "DE") == "GB980780684"
    # No prefix: the customer's country decides; kept as stdnum writes it.
    assert tax_number_checked("811907980", "DE") == "811907980"
    # A country whose numbers stdnum does not know is kept as typed.
    assert tax_number_checked(" 12-3456789 ", "US") == "12-3456789"
    assert tax_number_checked("", "DE") == ""


def test_the_form_refuses_a_wrong_tax_number_and_a_country_name() -> None:
    form = CustomerBillingProfileForm(
        {"revision": "0", "tax_number": "DE123", "country": "DE", "billing_email": ""}
    )
    assert not form.is_valid()
    assert form.errors["tax_number"] == [
        "DE123 is not a valid DE tax number: The number has an invalid length."
    ]
    form = CustomerBillingProfileForm({"revision": "0", "country": "Germany"})
    assert not form.is_valid()
    assert form.errors["country"] == ["Give the two-letter country code (DE, GB, FR)."]


def _case_about(customer: Customer) -> ExceptionCase:
    case = finance_case(f"customer {customer.name}")
    ExceptionCase.objects.filter(pk=case.pk).update(customer=customer)
    case.refresh_from_db()
    return case


def _client(person: User) -> Client:
    client = Client()
    client.force_login(person)
    return client


@pytest.fixture
def umbrella() -> Customer:
    customer_rules()
    return CustomerFactory.create(name="Umbrella GmbH", tax_number="", country="DE")


def test_htmx_gets_the_form_as_a_fragment_and_a_plain_request_the_whole_page(
    umbrella: Customer,
) -> None:
    case = _case_about(umbrella)
    client = _client(finance_user())

    fragment = client.get(f"/cases/{case.pk}/fix/", headers=HTMX)
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert "<html" not in html
    assert "Fix in place: customer billing profile" in html
    assert "You are editing <strong>the customer Umbrella GmbH</strong>" in html
    assert f'hx-post="/cases/{case.pk}/fix/"' in html
    assert 'name="revision" value="0"' in html
    assert 'name="country" value="DE"' in html

    page = client.get(f"/cases/{case.pk}/fix/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<html" in html
    assert f'href="/cases/{case.pk}/"' in html
    assert f"Fix case #{case.pk}" in html
    assert 'id="fix"' in html


def test_what_was_typed_comes_back_with_its_error(umbrella: Customer) -> None:
    case = _case_about(umbrella)
    response = _client(finance_user()).post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "tax_number": "DE12345", "country": "DE"},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "DE12345 is not a valid DE tax number" in html
    assert 'value="DE12345"' in html
    umbrella.refresh_from_db()
    assert umbrella.tax_number == ""


def test_a_fix_without_javascript_redirects_with_the_result_in_words(umbrella: Customer) -> None:
    case = _case_about(umbrella)
    fiona = finance_user(username="fiona")
    client = _client(fiona)
    response = client.post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "tax_number": "DE811907980", "country": "DE"},
        follow=True,
    )
    assert response.redirect_chain == [(f"/cases/{case.pk}/fix/", 302)]
    html = response.content.decode()
    # No ERP connection routed, none holds the customer: said so, never "written to".
    assert (
        "Tax number set on Umbrella GmbH; Umbrella GmbH is not in the ERP yet, so nothing is "
        "written there: the invoice sent again creates it there, carrying the new tax number; "
        "nothing held was left to send again."
    ) in html
    umbrella.refresh_from_db()
    assert umbrella.tax_number == "DE811907980"
    assert AuditEvent.objects.get(object_type="customer").changes["tax_number"] == [
        "",
        "DE811907980",
    ]
    fixed = CaseEvent.objects.get(case=case, action="fixed")
    assert fixed.actor == fiona
    assert fixed.after["tax_number"] == "DE811907980"


def test_a_fix_with_htmx_answers_the_fragment_with_the_result(umbrella: Customer) -> None:
    case = _case_about(umbrella)
    response = _client(finance_user()).post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "tax_number": "DE811907980", "country": "DE"},
        headers=HTMX,
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert 'role="status">Tax number set on Umbrella GmbH;' in html
    # The form again, at the case's new revision, with the fixed value.
    assert f'name="revision" value="{case.revision + 1}"' in html
    assert 'value="DE811907980"' in html


def test_a_stale_revision_is_refused_keeping_what_was_typed(umbrella: Customer) -> None:
    case = _case_about(umbrella)
    client = _client(finance_user())
    client.post(f"/cases/{case.pk}/fix/", {"revision": case.revision, "billing_email": "a@b.de"})
    response = client.post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "tax_number": "DE811907980", "country": "DE"},
        headers=HTMX,
    )
    assert response.status_code == 409
    html = response.content.decode()
    assert "changed since you opened it" in html
    assert 'value="DE811907980"' in html
    assert f'name="revision" value="{case.revision + 1}"' in html


def test_a_closed_case_says_so_instead_of_a_form(umbrella: Customer) -> None:
    case = _case_about(umbrella)
    case_resolve(case_id=case.pk, note="Not ours to bill.", status="waived")
    response = _client(finance_user()).get(f"/cases/{case.pk}/fix/", headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "This case is waived: Not ours to bill." in html
    assert "<form" not in html
    late = _client(finance_user()).post(
        f"/cases/{case.pk}/fix/", {"revision": case.revision, "tax_number": "DE811907980"}
    )
    assert late.status_code == 409
    assert "This case is waived" in late.content.decode()


def test_another_queue_and_a_missing_permission_are_refused_in_words(umbrella: Customer) -> None:
    case = _case_about(umbrella)
    pmo = _client(pmo_user())
    page = pmo.get(f"/cases/{case.pk}/fix/")
    assert page.status_code == 403
    assert "which you do not work in" not in page.content.decode()
    assert "queue you do not work in" in page.content.decode()
    fragment = pmo.post(f"/cases/{case.pk}/fix/", {"revision": 0, "tax_number": "x"}, headers=HTMX)
    assert fragment.status_code == 403
    assert "queue you do not work in" in fragment.content.decode()

    # In the finance queue by name, but without the right to edit customers: told so on the
    # case page (no form), and refused a fix.
    member = user(VIEWER)
    WorkQueue.objects.get(code="finance").members.add(member)
    viewer = _client(member)
    response = viewer.get(f"/cases/{case.pk}/fix/", headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert (
        "Fixing a vendor validation case needs the permission integrations.change_customer, "
        "which you do not have. The Finance queue fixes it."
    ) in html
    assert "<form" not in html
    refused = viewer.post(
        f"/cases/{case.pk}/fix/", {"revision": 0, "tax_number": "DE811907980"}, headers=HTMX
    )
    assert refused.status_code == 403
    assert "needs the permission integrations.change_customer" in refused.content.decode()
    umbrella.refresh_from_db()
    assert umbrella.tax_number == ""


def test_no_such_case_is_a_404() -> None:
    response = _client(finance_user()).get("/cases/987654/fix/", headers=HTMX)
    assert response.status_code == 404
    assert "There is no case #987654." in response.content.decode()


# --- The forms that are a way elsewhere plus Retry, and the merge --------------------------------


def _admin_case(case_type: str, subject: dict[str, object], connection_id: int) -> ExceptionCase:
    return case_open_or_join(
        case_type=case_type,
        subject=subject,
        records=entries(1),
        process="time_to_erp",
        step="post_invoice",
        connection_id=connection_id,
    )


def test_a_replay_case_offers_retry_with_the_revision_seen() -> None:
    xero = make_connection()
    case = _admin_case(
        "retries_exhausted",
        {
            "vendor": "Xero",
            "about": "customer Globex",
            "connection_id": xero.pk,
            "error_kind": "timeout",
            "error": "timeout: no answer",
            "attempts": 15,
        },
        xero.pk,
    )
    html = _client(admin_user()).get(f"/cases/{case.pk}/fix/", headers=HTMX).content.decode()
    assert "Fix in place: outbox replay" in html
    assert f'action="/cases/{case.pk}/retry/"' in html
    assert f'name="revision" value="{case.revision}"' in html
    assert ">Retry</button>" in html


def test_connection_and_mapping_cases_link_to_their_admin_pages() -> None:
    xero = make_connection()
    mapping_defaults_install(connection=xero)
    admin = _client(admin_user())
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
    html = admin.get(f"/cases/{case.pk}/fix/", headers=HTMX).content.decode()
    assert f'href="/admin/integrations/connection/{xero.pk}/change/"' in html
    assert ">Retry</button>" in html

    mapping = MappingSet.objects.get(connection=xero, object_type="Contacts", status="published")
    case = mapping_case(xero.pk, "Contacts", "TaxNumber: not a string")
    html = admin.get(f"/cases/{case.pk}/fix/", headers=HTMX).content.decode()
    assert f'href="/config/mappings/{xero.pk}/Contacts/">Open the mapping editor</a>' in html
    assert mapping.object_type == "Contacts"


def test_a_possible_duplicate_is_merged_into_the_record_kept() -> None:
    kept = CustomerFactory.create(name="Initech Ltd", tax_number="GB980780684")
    new = CustomerFactory.create(name="Initech Limited", tax_number="")
    case = case_open_or_join(
        case_type="possible_duplicate",
        subject={
            "model": "customer",
            "record_id": new.pk,
            "record": str(new),
            "match_id": kept.pk,
            "match": str(kept),
            "connection_id": 1,
            "connection": "Salesforce",
            "why": "rule name, similarity 91",
        },
        records=entries(1),
        process="inbound",
        step="identity",
    )
    sam = sales_user(username="sam")
    client = _client(sam)
    html = client.get(f"/cases/{case.pk}/fix/", headers=HTMX).content.decode()
    assert f"Initech Limited (#{new.pk}, new from Salesforce)" in html
    response = client.post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "keep": kept.pk, "note": "Same VAT number"},
        headers=HTMX,
    )
    assert response.status_code == 200
    assert (
        f"Merged Initech Limited (#{new.pk}) into Initech Ltd (#{kept.pk}); the case is resolved."
    ) in response.content.decode()
    assert list(Customer.objects.values_list("pk", flat=True)) == [kept.pk]
    case.refresh_from_db()
    assert case.status == "resolved"
    assert CaseEvent.objects.filter(case=case, action="fixed", actor=sam).exists()


def test_a_contract_the_crm_sent_invalid_is_fixed_and_written_back_to_it() -> None:
    OwnershipRule.objects.get_or_create(
        object_type="contract", field="", defaults={"owner_role": "crm"}
    )
    salesforce = make_connection(name="Salesforce", vendor="salesforce", role="crm")
    mapping_defaults_install(connection=salesforce)
    contract = ContractFactory.create(number="C-77", total_value=Decimal("0"))
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Contract),
        object_id=contract.pk,
        connection=salesforce,
        external_id="800AA0000000001",
    )
    message = InboundMessage.objects.create(
        connection=salesforce,
        source="webhook",
        object_type="Contract",
        external_id="800AA0000000001",
        dedupe_key="evt-1",
        payload={"Id": "800AA0000000001", "Budget__c": -5},
        state="failed",
    )
    case = case_open_or_join(
        case_type="crm_record_invalid",
        subject={
            "connection_id": salesforce.pk,
            "connection": salesforce.name,
            "system": "Salesforce",
            "object_type": "Contract",
            "fields": "total_value",
            "problem": "Ensure this value is greater than or equal to 0.",
            "record": "Contract 800AA0000000001 (C-77)",
        },
        records=[Blocked(record_type="inboundmessage", record_id=message.pk)],
        process="inbound",
        step="validate",
        connection_id=salesforce.pk,
    )
    client = _client(sales_user())
    html = client.get(f"/cases/{case.pk}/fix/", headers=HTMX).content.decode()
    assert "You are editing <strong>the contract C-77" in html
    assert 'name="total_value" value="0.00"' in html

    response = client.post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "total_value": "12000.00"},
        headers=HTMX,
    )

    assert response.status_code == 200
    assert (
        "Total value set on C-77; written to Salesforce (Salesforce) through the outbox; the "
        "case closes itself when Salesforce sends the record again, corrected."
    ) in response.content.decode()
    contract.refresh_from_db()
    assert contract.total_value == Decimal("12000.00")
    update = OutboxMessage.objects.get(process="fix_in_place")
    assert (update.operation, update.payload) == (
        "update_contract",
        {"Id": "800AA0000000001", "Budget__c": 12000.0},
    )


def _ownership_case(customer: Customer, xero: Connection) -> ExceptionCase:
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=customer.pk,
        connection=xero,
        external_id="c-1",
    )
    InboundMessage.objects.create(
        connection=xero,
        source="webhook",
        object_type="Contacts",
        external_id="c-1",
        dedupe_key="evt-9",
        payload={"ContactID": "c-1", "Name": "Globex Limited"},
        state="conflict",
    )
    return case_open_or_join(
        case_type="ownership_conflict",
        subject={
            "model": "customer",
            "record_id": customer.pk,
            "record": f"customer {customer}",
            "connection_id": xero.pk,
            "connection": "Xero (new)",
            "fields": ["name"],
            "changes": "name to 'Globex Limited' (owned by the CRM)",
        },
        records=[Blocked(record_type="customer", record_id=customer.pk)],
        process="inbound",
        step="ownership",
        connection_id=xero.pk,
    )


def test_an_ownership_conflict_is_decided_accept_or_keep() -> None:
    customer_rules()
    xero = make_connection()
    mapping_defaults_install(connection=xero)
    globex = CustomerFactory.create(name="Globex Ltd")
    case = _ownership_case(globex, xero)
    client = _client(admin_user())
    html = client.get(f"/cases/{case.pk}/fix/", headers=HTMX).content.decode()
    assert "Xero (new) sent <q>Globex Limited</q>" in html

    response = client.post(
        f"/cases/{case.pk}/fix/", {"revision": case.revision, "decision": "accept"}, headers=HTMX
    )
    assert response.status_code == 200
    assert (
        "Accepted Xero (new)&#x27;s name; Globex Limited is not in the CRM yet, so nothing is "
        "written there: changed in Concord only; the case is resolved."
    ) in response.content.decode()
    globex.refresh_from_db()
    assert globex.name == "Globex Limited"
    case.refresh_from_db()
    assert case.status == "resolved"
    assert case.resolution_note == "Accepted Xero (new)'s name."


def test_keeping_the_owners_value_resolves_with_the_note_and_changes_nothing() -> None:
    customer_rules()
    xero = make_connection()
    mapping_defaults_install(connection=xero)
    globex = CustomerFactory.create(name="Globex Ltd")
    case = _ownership_case(globex, xero)
    response = _client(admin_user()).post(
        f"/cases/{case.pk}/fix/",
        {"revision": case.revision, "decision": "keep", "note": "Legal name per the CRM"},
    )
    assert response.status_code == 302
    globex.refresh_from_db()
    assert globex.name == "Globex Ltd"
    case.refresh_from_db()
    assert (case.status, case.resolution_note) == ("resolved", "Legal name per the CRM")


def test_a_contact_the_erp_sent_invalid_is_fixed_and_written_back_not_replayed() -> None:
    customer_rules()
    xero = make_connection()
    mapping_defaults_install(connection=xero)
    globex = CustomerFactory.create(name="Globex Ltd", billing_email="")
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=globex.pk,
        connection=xero,
        external_id="c-7",
    )
    message = InboundMessage.objects.create(
        connection=xero,
        source="poll",
        object_type="Contacts",
        external_id="c-7",
        dedupe_key="poll-7",
        payload={"ContactID": "c-7", "Name": "Globex Ltd", "EmailAddress": "not an address"},
        state="failed",
    )
    case = case_open_or_join(
        case_type="erp_record_invalid",
        subject={
            "connection_id": xero.pk,
            "connection": xero.name,
            "system": "Xero",
            "object_type": "Contacts",
            "fields": "billing_email",
            "problem": "Enter a valid email address.",
            "record": "Contacts c-7 (Globex Ltd)",
        },
        records=[Blocked(record_type="inboundmessage", record_id=message.pk)],
        process="inbound",
        step="validate",
        connection_id=xero.pk,
    )
    response = _client(finance_user()).post(
        f"/cases/{case.pk}/fix/",
        {
            "revision": case.revision,
            "billing_email": "ap@globex.example",
            # As the form shows them (a browser sends every field).
            "tax_number": globex.tax_number,
            "country": globex.country,
        },
        headers=HTMX,
    )
    assert response.status_code == 200
    assert (
        "Billing email set on Globex Ltd; written to Xero (Xero (new)) through the outbox; the "
        "case closes itself when Xero sends the record again, corrected."
    ) in response.content.decode()
    update = OutboxMessage.objects.get(process="fix_in_place")
    assert update.payload == {"ContactID": "c-7", "EmailAddress": "ap@globex.example"}
    # Not replayed: the held message still carries the bad address.
    assert not InboundMessage.objects.filter(replay_of=message).exists()
    case.refresh_from_db()
    assert case.status == "open"
