"""A vendor record Concord created, read back (a webhook's echo, a poll) before the create's
answer was recorded: when nothing linked it to the record it was made for, it is a second
Concord record that already holds the vendor id. Recording the answer merges that copy into the
record it was created for, audited, and the batch's other answers land with it; before, the
unique vendor id failed the whole batch's recording, and every retry failed the same way until
the rows parked."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType

from exceptions.models import ExceptionCase
from integrations.models import (
    AuditEvent,
    Connection,
    CrossReference,
    Customer,
    OutboxMessage,
    RecordMerge,
)
from integrations.sync.identity import POSSIBLE_DUPLICATE
from integrations.sync.outbox import (
    outbox_claim,
    outbox_enqueue,
    outbox_message,
    outbox_record_outcomes,
)
from integrations.sync.outcome import Outcome
from tests.factories import CustomerFactory, ProjectFactory, make_connection

pytestmark = pytest.mark.django_db

State = OutboxMessage.State


@pytest.fixture
def erp() -> Connection:
    return make_connection()


def _xref(connection: Connection, customer: Customer, external_id: str) -> CrossReference:
    return CrossReference.objects.create(
        connection=connection,
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=customer.pk,
        external_id=external_id,
        external_version="1",
    )


def _deliver(erp: Connection, answers: dict[int, str]) -> dict[str, int]:
    """Create each customer in the ERP (its outbox row claimed) and record the vendor's answer:
    the id it gave, by customer."""
    customers = Customer.objects.in_bulk(list(answers))
    outbox_enqueue(
        messages=[
            outbox_message(
                connection=erp,
                process="provisioning",
                step="customer",
                operation="put_contacts",
                record=customer,
                version=1,
                payload={"Name": customer.name},
            )
            for customer in customers.values()
        ]
    )
    claimed = outbox_claim(connection_id=erp.pk, limit=10, worker="w")
    assert len(claimed) == len(answers)
    return outbox_record_outcomes(
        outcomes=[
            Outcome(message=m, ok=True, external_id=answers[m.object_id], external_version="2")
            for m in claimed
        ]
    )


def test_the_copy_read_before_the_answer_is_merged_into_the_record_it_was_made_for(
    erp: Connection,
) -> None:
    ours, other = CustomerFactory.create(name="Granite Retail Ltd"), CustomerFactory.create()
    # The echo: the contact read back as a customer of its own, and a project already on it.
    copy = CustomerFactory.create(name="Granite Retail Ltd", tax_number="")
    _xref(erp, copy, "contact-ours")
    project = ProjectFactory.create(customer=copy)

    counts = _deliver(erp, {ours.pk: "contact-ours", other.pk: "contact-other"})

    assert counts["done"] == 2
    assert set(OutboxMessage.objects.values_list("state", flat=True)) == {State.DONE}
    assert not Customer.objects.filter(pk=copy.pk).exists()
    held = dict(
        CrossReference.objects.filter(connection=erp).values_list("external_id", "object_id")
    )
    assert held == {"contact-ours": ours.pk, "contact-other": other.pk}
    assert CrossReference.objects.get(external_id="contact-ours").external_version == "2"
    project.refresh_from_db()
    assert project.customer_id == ours.pk
    merge = RecordMerge.objects.get()
    assert (merge.winner_id, merge.loser_id) == (ours.pk, copy.pk)
    assert "before Concord recorded" in merge.note
    assert AuditEvent.objects.filter(object_id=str(ours.pk)).exists()


def test_a_copy_the_rules_keep_apart_keeps_the_id_and_a_person_is_asked(
    erp: Connection,
) -> None:
    """Another system holds the two as different records: no merge. The answer is recorded
    (the row is done, never sent again) and sales ops get the pair side by side."""
    crm = make_connection(name="Salesforce", role="crm", vendor="salesforce")
    ours, copy = CustomerFactory.create(), CustomerFactory.create()
    _xref(crm, ours, "001-A")
    _xref(crm, copy, "001-B")
    _xref(erp, copy, "contact-ours")

    counts = _deliver(erp, {ours.pk: "contact-ours"})

    assert counts["done"] == 1
    assert OutboxMessage.objects.get().state == State.DONE
    assert Customer.objects.filter(pk__in=[ours.pk, copy.pk]).count() == 2
    assert CrossReference.objects.get(connection=erp).object_id == copy.pk
    case = ExceptionCase.objects.get(case_type=POSSIBLE_DUPLICATE)
    assert (case.subject["record_id"], case.subject["match_id"]) == (copy.pk, ours.pk)
    assert not RecordMerge.objects.exists()
