"""Fix in place against the real Xero sandbox: a "missing tax number" invoice case is fixed by a
finance user; the tax number is written through the canonical record (audited) and, where Xero
holds the customer's contact, to Xero through the outbox BEFORE the invoice goes again; the
invoice then lands exactly once and the case resolves itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType

from exceptions.errors import CaseConflict, CaseForbidden, CaseRefused
from exceptions.models import CaseEvent, ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    AuditEvent,
    Connection,
    CrossReference,
    Customer,
    ExchangeRate,
    Invoice,
    LegalEntity,
    OutboxMessage,
    OwnershipRule,
    Project,
    RateCard,
    RoutingRule,
    TaxRate,
    TimeEntry,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS
from integrations.sync.dispatch import outbox_dispatch
from integrations.vendors import connector_for
from integrations.workflows.fixes import fix_apply
from integrations.workflows.time_to_erp import billing_run, invoice_reference
from tests.factories import UserFactory
from tests.firms import approved_time, tm_project_firm
from tests.integrations.conftest import (  # noqa: F401 - fixtures
    NEW_TENANT,
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)

pytestmark = pytest.mark.django_db

VAT = "DE811907980"


def customer_rules() -> None:
    """The customer's ownership rules as migration 0002 seeds them (CRM, the billing profile
    ERP): a transactional test's flush before this one removes seeded rows."""
    for name in ("", "tax_number", "billing_address", "billing_email", "country"):
        OwnershipRule.objects.get_or_create(
            object_type="customer", field=name, defaults={"owner_role": "erp" if name else "crm"}
        )


def umbrella_firm(xero: Connection, *, contact_id: str = "") -> Customer:
    """A UK entity billing Umbrella GmbH, which has no VAT number, under EU reverse charge (a
    tax type Xero accepts only for a contact with a tax number): 3 approved entries of 7.5 h.
    With `contact_id`, Concord knows Umbrella's contact in Xero (a cross-reference)."""
    reverse = TaxRate.objects.create(
        code="ECZROUTPUTSERVICES",
        name="Reverse charge",
        country="GB",
        rate_percent=0,
        requires_customer_tax_number=True,
    )
    customer_rules()
    customer = tm_project_firm(
        xero,
        customer={"name": "Umbrella GmbH", "country": "DE"},
        contract_number="C-UMB",
        tax_rate=reverse,
        project={"code": "P-UMB", "name": "Umbrella rollout"},
        days=(1, 2, 3),
        hours="7.5",
    ).customer
    if contact_id:
        CrossReference.objects.create(
            content_type=ContentType.objects.get_for_model(Customer),
            object_id=customer.pk,
            connection=xero,
            external_id=contact_id,
        )
    return customer


def xero_contact(xero: Connection, name: str) -> str:
    """Create a contact in Xero (no tax number) and return its id."""
    connector = connector_for(xero)
    try:
        (result,) = connector.write("put_contacts", [{"Name": name}], idempotency_key="c-" + name)
    finally:
        connector.close()
    assert result.ok, result.error
    return result.external_id


def refused_case(xero: Connection) -> ExceptionCase:
    """Bill, dispatch: Xero refuses the invoice and it parks on a Finance case."""
    assert billing_run().invoices == 1
    dispatched = outbox_dispatch(connection_id=xero.pk, worker="test")
    assert (dispatched.done, dispatched.parked) == (0, 1)
    case = ExceptionCase.objects.get(case_type="vendor_validation")
    assert case.queue == "finance"
    assert "tax number" in case.vendor_message.lower()
    return case


def dispatch_all(xero: Connection) -> None:
    for _ in range(5):
        if not OutboxMessage.objects.filter(state="pending").exists():
            return
        outbox_dispatch(connection_id=xero.pk, worker="test")
    assert not OutboxMessage.objects.filter(state="pending").exists()


def sandbox_invoices(box: Sandbox, reference: str) -> list[dict]:
    return [
        r["data"]
        for r in box.records("xero", "Invoices", NEW_TENANT)
        if r["data"].get("Reference") == reference
    ]


def sandbox_contact(box: Sandbox, name: str) -> dict:
    """The sandbox's contact of that name: its fields, and its key as "id"."""
    (contact,) = [
        {**r["data"], "id": r["id"]}
        for r in box.records("xero", "Contacts", NEW_TENANT)
        if r["data"]["Name"] == name
    ]
    return contact


@pytest.fixture
def xero(make_connection: Callable[..., Connection]) -> Connection:  # noqa: F811
    return make_connection("xero", rate_limit_per_minute=600)


@pytest.fixture
def fiona() -> User:
    return UserFactory.create(username="fiona", role=FINANCE)


def test_contact_not_in_xero_yet_the_invoice_goes_again_carrying_the_tax_number(
    xero: Connection,
    sandbox: Sandbox,  # noqa: F811
    fiona: User,
) -> None:
    customer = umbrella_firm(xero)
    case = refused_case(xero)
    assert case.customer_id == customer.pk
    # Xero made no contact of the refused invoice: the fix has nothing to update there.
    assert [r for r in box_names(sandbox) if r == "Umbrella GmbH"] == []

    result = fix_apply(
        actor=fiona,
        case_id=case.pk,
        revision=case.revision,
        values={"tax_number": VAT, "billing_email": "ap@umbrella.example"},
    )

    system = f"Xero ({xero.name})"
    assert result.summary.startswith("Tax number and billing email set on Umbrella GmbH; ")
    assert f"Umbrella GmbH is not in {system} yet" in result.summary
    assert result.summary.endswith("sent 1 invoice(s) again from the current data.")
    # Open until Xero has taken the invoice: sending it again is not yet its delivery.
    assert result.status == "open"
    assert not OutboxMessage.objects.filter(process="fix_in_place").exists()
    # The record edit is audited (before/after), and the fix is on the case's trail.
    audit = AuditEvent.objects.get(object_type="customer", object_id=str(customer.pk))
    assert audit.actor_label == "fiona"
    assert audit.changes["tax_number"] == ["", VAT]
    fixed = CaseEvent.objects.get(case=case, action="fixed")
    assert (fixed.actor_label, fixed.before["tax_number"], fixed.after["tax_number"]) == (
        "fiona",
        "",
        VAT,
    )
    assert CaseEvent.objects.filter(case=case, action="retried", actor=fiona).exists()
    # The parked row is superseded by version 2, rendered from the fixed customer.
    resent = OutboxMessage.objects.get(process="time_to_erp", state="pending")
    assert (resent.record_version, resent.needs_lookup) == (2, True)
    assert resent.replay_of is not None
    assert resent.replay_of.state == "skipped"
    assert VAT in str(resent.payload)

    dispatch_all(xero)
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    invoice = Invoice.objects.get()
    assert invoice.number
    (posted,) = sandbox_invoices(sandbox, invoice_reference(invoice))
    # Xero took the invoice because its contact carried the tax number, and made the contact
    # from it (the sandbox keeps only a contact's name when an invoice creates it).
    assert posted["ContactID"] == sandbox_contact(sandbox, "Umbrella GmbH")["id"]


def box_names(box: Sandbox) -> list[str]:
    return [r["data"].get("Name", "") for r in box.records("xero", "Contacts", NEW_TENANT)]


def test_contact_in_xero_is_updated_through_the_outbox_before_the_invoice_goes_again(
    xero: Connection,
    sandbox: Sandbox,  # noqa: F811
    fiona: User,
) -> None:
    contact_id = xero_contact(xero, "Umbrella GmbH")
    umbrella_firm(xero, contact_id=contact_id)
    case = refused_case(xero)

    result = fix_apply(
        actor=fiona,
        case_id=case.pk,
        revision=case.revision,
        values={"tax_number": VAT, "country": "DE"},
    )
    system = f"Xero ({xero.name})"
    assert result.summary == (
        f"Tax number set on Umbrella GmbH; written to {system} through the outbox; "
        "the invoice will be sent again once it is there."
    )
    assert result.status == "open"
    # Written to Xero through the outbox (rendered by the published Contacts mapping, the id
    # where the mapping reads it), and the invoice NOT sent again yet: Xero would refuse it.
    update = OutboxMessage.objects.get(process="fix_in_place")
    assert update.operation == "post_contacts"
    assert update.payload == {"ContactID": contact_id, "TaxNumber": VAT}
    assert update.context["retry_cases"] == [case.pk]
    assert not OutboxMessage.objects.filter(process="time_to_erp", state="pending").exists()

    dispatch_all(xero)

    update.refresh_from_db()
    assert update.state == "done"
    assert sandbox_contact(sandbox, "Umbrella GmbH")["TaxNumber"] == VAT
    # The invoice went again once, after the update, and was taken at its first attempt.
    resent = OutboxMessage.objects.get(process="time_to_erp", record_version=2)
    assert (resent.state, resent.attempts) == ("done", 1)
    assert resent.done_at is not None
    assert update.done_at is not None
    assert resent.done_at > update.done_at
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    retried = CaseEvent.objects.get(case=case, action="retried")
    assert retried.actor is None
    assert retried.after["count"] == 1
    invoice = Invoice.objects.get()
    assert len(sandbox_invoices(sandbox, invoice_reference(invoice))) == 1
    assert sandbox.stats("xero", "Invoices")["created"] == 1


def test_a_field_xero_does_not_map_outbound_is_said_to_be_changed_in_concord_only(
    xero: Connection,
    sandbox: Sandbox,  # noqa: F811
    fiona: User,
) -> None:
    contact_id = xero_contact(xero, "Umbrella GmbH")
    umbrella_firm(xero, contact_id=contact_id)
    case = refused_case(xero)

    result = fix_apply(
        actor=fiona, case_id=case.pk, revision=case.revision, values={"country": "AT"}
    )

    assert (
        f"the published Contacts mapping of Xero ({xero.name}) writes no country; "
        "changed in Concord only" in (result.summary)
    )
    assert Customer.objects.get().country == "AT"
    assert not OutboxMessage.objects.filter(process="fix_in_place").exists()


def test_the_fix_is_refused_to_another_queue_a_stale_revision_and_a_closed_case(
    xero: Connection,
    sandbox: Sandbox,  # noqa: F811
    fiona: User,
) -> None:
    umbrella_firm(xero)
    case = refused_case(xero)
    pmo = UserFactory.create(role=PMO)
    values = {"tax_number": VAT}

    with pytest.raises(CaseForbidden, match="queue you do not work in"):
        fix_apply(actor=pmo, case_id=case.pk, revision=case.revision, values=values)
    with pytest.raises(CaseConflict, match="changed since you opened it"):
        fix_apply(actor=fiona, case_id=case.pk, revision=case.revision - 1, values=values)
    with pytest.raises(CaseRefused, match="Nothing was changed"):
        fix_apply(actor=fiona, case_id=case.pk, revision=case.revision, values={"tax_number": ""})
    assert Customer.objects.get().tax_number == ""
    assert not CaseEvent.objects.filter(case=case, action="fixed").exists()

    fix_apply(actor=fiona, case_id=case.pk, revision=case.revision, values=values)
    dispatch_all(xero)
    case.refresh_from_db()
    with pytest.raises(CaseConflict, match="is resolved already"):
        fix_apply(actor=fiona, case_id=case.pk, revision=case.revision, values=values)


# --- Billing data: the billing run's own checks, fixed in place, bill the held entries at once ---


def billing_firm(xero: Connection, **project: object) -> Project:
    """One active T&M project of a UK entity, 2 approved entries of 4 h, a default GBP rate and
    an ERP route; `project` overrides the project's fields (to break one rule)."""
    customer_rules()
    OwnershipRule.objects.get_or_create(
        object_type="project", field="", defaults={"owner_role": "psa"}
    )
    for object_type, owner in (("exchangerate", "erp"), ("ratecard", "crm")):
        OwnershipRule.objects.get_or_create(
            object_type=object_type, field="", defaults={"owner_role": owner}
        )
    return tm_project_firm(
        xero,
        customer={"name": "Globex Ltd"},
        contract_number="C-GLX",
        project={"code": "P-GLX", "name": "Globex rollout", **project},
        days=(1, 2),
        hours="4",
    )


def blocked_case(case_type: str) -> ExceptionCase:
    report = billing_run()
    assert (report.billed, report.blocked) == (0, 2)
    return ExceptionCase.objects.get(case_type=case_type, status="open")


def assert_billed(case: ExceptionCase) -> None:
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    assert TimeEntry.objects.unbilled().count() == 0
    assert OutboxMessage.objects.filter(process="time_to_erp", step="post_invoice").count() == 1


def test_project_status_set_active_bills_its_time(xero: Connection) -> None:
    project = billing_firm(xero, status="on_hold")
    case = blocked_case("time_on_inactive_project")
    pmo = UserFactory.create(role=PMO)

    result = fix_apply(
        actor=pmo, case_id=case.pk, revision=case.revision, values={"status": "active"}
    )

    # No PSA connection holds the project: said so, not "written".
    assert result.summary == (
        "Status set on P-GLX Globex rollout; P-GLX Globex rollout is not in the PSA yet, so "
        "nothing is written there: changed in Concord only; billed 2 of 2 held time entries."
    )
    assert_billed(case)
    project.refresh_from_db()
    assert project.status == "active"
    assert AuditEvent.objects.get(object_type="project").changes["status"] == ["on_hold", "active"]


def test_project_status_is_written_to_harvest_through_its_published_mapping(
    xero: Connection,
    make_connection: Callable[..., Connection],  # noqa: F811
) -> None:
    project = billing_firm(xero, status="closed")
    harvest = make_connection("harvest")
    mapping_defaults_install(connection=harvest)
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Project),
        object_id=project.pk,
        connection=harvest,
        external_id="4711",
    )
    case = blocked_case("time_on_inactive_project")

    result = fix_apply(
        actor=UserFactory.create(role=PMO),
        case_id=case.pk,
        revision=case.revision,
        values={"status": "active"},
    )

    assert f"written to Harvest ({harvest.name}) through the outbox" in result.summary
    update = OutboxMessage.objects.get(process="fix_in_place")
    # Rendered by the projects mapping (status -> is_active), the id where it reads it.
    assert (update.operation, update.payload) == (
        "update_project",
        {"id": "4711", "is_active": True},
    )
    # Billing does not wait for Harvest: Concord's own check is what held the time.
    assert update.context["retry_cases"] == []
    assert_billed(case)


def test_a_project_gets_its_legal_entity_and_its_contract(xero: Connection) -> None:
    project = billing_firm(xero, legal_entity=None)
    case = blocked_case("project_without_legal_entity")
    pmo = UserFactory.create(role=PMO)
    entity = LegalEntity.objects.get()
    result = fix_apply(
        actor=pmo, case_id=case.pk, revision=case.revision, values={"legal_entity": entity}
    )
    assert result.summary.startswith("Legal entity set on P-GLX Globex rollout; ")
    assert_billed(case)

    project.refresh_from_db()
    contract = project.contract
    other = billing_firm_second_project(project)
    case = blocked_case("project_without_contract")
    result = fix_apply(
        actor=pmo, case_id=case.pk, revision=case.revision, values={"contract": contract}
    )
    assert result.summary.startswith("Contract set on P-GLX2 Globex phase 2; ")
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED
    other.refresh_from_db()
    assert other.contract == contract


def billing_firm_second_project(first: Project) -> Project:
    second = Project.objects.create(
        code="P-GLX2",
        name="Globex phase 2",
        customer=first.customer,
        contract=None,
        legal_entity=first.legal_entity,
        region="emea",
        currency="GBP",
        status="active",
    )
    approved_time(second, days=(3, 4), hours="4")
    return second


def test_an_exchange_rate_added_in_concord_only_bills_the_held_time(
    xero: Connection, fiona: User
) -> None:
    billing_firm(xero, currency="EUR")
    RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("160"))
    case = blocked_case("missing_exchange_rate")

    result = fix_apply(
        actor=fiona,
        case_id=case.pk,
        revision=case.revision,
        values={"date": date.today(), "rate": Decimal("0.85")},
    )

    rate = ExchangeRate.objects.get()
    assert (rate.base_currency, rate.quote_currency, rate.rate) == ("EUR", "GBP", Decimal("0.85"))
    # The ERP owns exchange rates, but Xero keeps none Concord can write: said so.
    assert result.summary == (
        f"Added exchange rate {rate}; Xero ({xero.name}) has no exchange rate Concord can "
        "write; added in Concord only; billed 2 of 2 held time entries."
    )
    assert AuditEvent.objects.get(object_type="exchangerate").action == "create"
    case.refresh_from_db()
    assert case.status == ExceptionCase.Status.RESOLVED


def test_a_rate_card_entry_on_the_contract_bills_the_held_time(xero: Connection) -> None:
    project = billing_firm(xero)
    RateCard.objects.all().delete()
    case = blocked_case("missing_rate")

    result = fix_apply(
        actor=UserFactory.create(role=SALES_OPS),
        case_id=case.pk,
        revision=case.revision,
        values={"bill_rate": Decimal("150")},
    )

    card = RateCard.objects.get()
    assert (card.contract, card.role, card.currency, card.bill_rate) == (
        project.contract,
        "Consultant",
        "GBP",
        Decimal("150"),
    )
    assert "the CRM has no rate card Concord can write; added in Concord only" in result.summary
    assert_billed(case)


def test_an_erp_route_for_the_legal_entity_bills_the_held_time(xero: Connection) -> None:
    billing_firm(xero)
    RoutingRule.objects.all().delete()
    case = blocked_case("no_erp_route")
    admin = UserFactory.create(role=INTEGRATION_ADMIN)

    result = fix_apply(
        actor=admin, case_id=case.pk, revision=case.revision, values={"connection": xero}
    )

    rule = RoutingRule.objects.get()
    assert (rule.role, rule.legal_entity, rule.connection) == (
        "erp",
        LegalEntity.objects.get(),
        xero,
    )
    assert result.summary == f"Added routing rule {rule}; billed 2 of 2 held time entries."
    # Through the audited configuration service.
    assert AuditEvent.objects.get(object_type="routingrule").actor_label == admin.username
    assert_billed(case)
