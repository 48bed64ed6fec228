"""Retry really re-runs the held work, through the handler each layer registered: an outbox
case's parked invoice is sent again to the ERP sandbox, an inbound case's messages are read
again, a billing case's time entries are billed again."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from exceptions import actions
from exceptions.models import CaseEvent, ExceptionCase
from integrations.models import (
    BillingEvent,
    Connection,
    Customer,
    InboundMessage,
    OutboxMessage,
    Project,
    RateCard,
    RoutingRule,
)
from integrations.sync.dispatch import outbox_dispatch
from integrations.sync.inbound import inbound_process
from integrations.workflows.time_to_erp import billing_run
from tests.exceptions.cases import admin_user, finance_user, fresh, pmo_user
from tests.factories import (
    ContractFactory,
    CustomerFactory,
    LegalEntityFactory,
    ProjectFactory,
    TimeEntryFactory,
)
from tests.factories import make_connection as plain_connection
from tests.integrations.conftest import (  # noqa: F401 - the sandbox's fixtures
    Sandbox,
    isolated_state,
    make_connection,
    sandbox,
    sandbox_url,
)
from tests.integrations.sync.test_dispatch import _fix_tax_number_in_xero, firm  # noqa: F401
from tests.integrations.sync.test_inbound import _create_contact, _deliver, xero  # noqa: F401

pytestmark = pytest.mark.django_db


def test_retrying_an_outbox_case_sends_the_parked_invoice_again(
    firm: dict[str, object],  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
) -> None:
    erp = firm["xero"]
    assert isinstance(erp, Connection)
    billing_run()
    assert outbox_dispatch(connection_id=erp.pk, worker="test").parked == 1
    case = ExceptionCase.objects.get(case_type="vendor_validation")
    assert case.queue == "finance"
    # Finance fixes the customer's VAT number in Xero, then retries the case from the API.
    _fix_tax_number_in_xero(sandbox, erp, "Umbrella GmbH", "DE811907980")
    client = APIClient()
    client.force_authenticate(finance_user(username="fran"))
    response = client.post(f"/api/v1/cases/{case.pk}/retry/", {"revision": 0}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["summary"] == "sent 1 invoice(s) again from the current data"
    assert outbox_dispatch(connection_id=erp.pk, worker="test").done == 1
    assert sandbox.stats("xero", "Invoices")["created"] == 3
    closed = fresh(case)
    assert closed.status == ExceptionCase.Status.RESOLVED
    assert list(
        CaseEvent.objects.filter(case=case).order_by("id").values_list("action", "actor_label")
    ) == [
        ("opened", "Concord"),
        ("retried", "fran"),
        ("cleared", "Concord"),
        ("resolved", "Concord"),
    ]
    # Nothing is parked on it any more; a second retry has nothing to send.
    again = client.post(
        f"/api/v1/cases/{case.pk}/retry/", {"revision": closed.revision}, format="json"
    )
    assert again.status_code == 409
    assert OutboxMessage.objects.filter(replay_of__isnull=False).count() == 1


def test_retrying_an_inbound_case_reads_its_messages_again(
    xero: Connection,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
) -> None:
    # Concord refuses the contact's billing email (Xero stores any text there).
    contact_id = _create_contact(
        xero, Name="Bademail Ltd", DefaultCurrency="GBP", EmailAddress="accounts at bademail"
    )
    (first,) = _deliver(xero, contact_id, "2026-11-20T10:00:00")
    assert inbound_process(message_id=first) == "failed"
    case = ExceptionCase.objects.get(case_type="erp_record_invalid")
    assert case.queue == "finance"
    sandbox.patch("xero", "Contacts", contact_id, {"EmailAddress": "ap@bademail.example"})

    outcome = actions.case_retry(actor=finance_user(), case_id=case.pk, revision=0)
    assert (outcome.count, outcome.summary) == (1, "replayed 1 inbound message(s)")
    (replay,) = InboundMessage.objects.filter(replay_of_id=first)
    # A second retry while the replay waits replays nothing more.
    with pytest.raises(actions.CaseConflict, match="nothing left to retry"):
        actions.case_retry(actor=admin_user(), case_id=case.pk, revision=outcome.revision)
    assert inbound_process(message_id=replay.pk) == "applied"
    assert Customer.objects.get().billing_email == "ap@bademail.example"
    assert fresh(case).status == ExceptionCase.Status.RESOLVED


def test_retrying_a_billing_case_bills_the_held_entries_again() -> None:
    entity = LegalEntityFactory.create(base_currency="EUR")
    customer = CustomerFactory.create(legal_entity=entity)
    contract = ContractFactory.create(customer=customer)
    project = ProjectFactory.create(
        customer=customer, contract=contract, legal_entity=entity, status="on_hold"
    )
    RateCard.objects.create(role="Consultant", currency="EUR", bill_rate=Decimal("100"))
    RoutingRule.objects.create(role="erp", connection=plain_connection())
    held = TimeEntryFactory.create_batch(2, project=project)
    other = TimeEntryFactory.create(project=ProjectFactory.create(status="closed"))
    report = billing_run()
    assert (report.blocked, report.billed) == (3, 0)
    case = ExceptionCase.objects.get(project=project)

    # PMO reopens the project and retries its case: exactly its entries are billed now.
    Project.objects.filter(pk=project.pk).update(status="active")
    outcome = actions.case_retry(actor=pmo_user(), case_id=case.pk, revision=0)
    assert (outcome.count, outcome.status) == (2, "resolved")
    assert outcome.summary == "billed 2 of 2 held time entries"
    billed = BillingEvent.objects.filter(time_entry__in=held, invoice__isnull=False)
    assert billed.count() == 2
    # Not this case's: left to the next run.
    assert not BillingEvent.objects.filter(time_entry=other).exists()
