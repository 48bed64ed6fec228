"""How the busiest tables are stored, where it decides what a run costs PostgreSQL.

Billing events turn from pending to invoiced once the ERP has their invoice (60,000 of them in a
100,000-entry run). Migration 0030 keeps that change to the row itself: no index names `status`,
and each page keeps room for the new row version, so the UPDATE is a HOT update that writes no
index entry. Counted here by PostgreSQL itself, for this transaction (pg_stat_xact_user_tables).

Raw records (117,000 in that run) keep their payload as ``json`` text (migration 0031): written
in bulk, read back whole, never queried inside; ``jsonb`` had PostgreSQL parse each as it was
stored.

The engine's bulk-written rows carry no foreign-key constraint (migration 0032): a raw record's
connection, a cross-reference's connection and content type were checked row by row as a poll's
COPY stored them. A connection that has them still cannot be deleted (through the ORM).
"""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models import ProtectedError

from integrations.models import BillingEvent, CrossReference, Customer, InboundMessage, Invoice
from integrations.sync.bulk import copy_insert_values
from integrations.workflows.time_to_erp import billing_run
from tests.factories import make_connection
from tests.firms import tm_project_firm

pytestmark = pytest.mark.django_db


def _updates() -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
            "WHERE relname = 'integrations_billingevent'"
        )
        row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def test_invoicing_billing_events_rewrites_no_index() -> None:
    tm_project_firm(
        make_connection(),
        customer={"name": "Initech Ltd", "tax_number": "GB123456789"},
        contract_number="C-HOT-1",
        project={"code": "P-HOT-1", "name": "Hot updates"},
        days=range(1, 21),
        hours="7.50",
    )
    billing_run()
    invoices = list(Invoice.objects.values_list("pk", flat=True))
    assert BillingEvent.objects.filter(status=BillingEvent.Status.PENDING).count() == 20
    before = _updates()

    BillingEvent.objects.filter(invoice_id__in=invoices).update(status=BillingEvent.Status.INVOICED)

    updated, hot = (after - was for after, was in zip(_updates(), before, strict=True))
    assert updated == 20
    # Each new row version that fits in its page's reserve stays there and writes no index
    # entry; the last of a full page may not fit (the rows' length varies with their ids).
    assert hot >= 18, f"{hot} of 20 updates were HOT"


def test_no_index_of_billing_events_names_their_status() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'integrations_billingevent'"
        )
        definitions = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'integrations_billingevent'"
        )
        options = cursor.fetchone()[0]
    assert definitions
    assert not [d for d in definitions if "status" in d]
    assert "fillfactor=60" in (options or [])


# A vendor record as a page brings it: nested, with nulls, decimals as text, unicode.
RECORD = {
    "id": 4711,
    "notes": "Workshop in M\u00fcnchen \u2013 day 2",
    "hours": 7.5,
    "billable_rate": None,
    "client": {"id": 12, "name": "Initech Ltd"},
    "tags": ["a", "b"],
    "amount": "1234.50",
}


def test_raw_records_are_kept_as_json_text_and_read_back_whole() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'integrations_inboundmessage' AND column_name = 'payload'"
        )
        assert cursor.fetchone() == ("json",)
    erp = make_connection()
    # As a webhook stores one (the ORM), and as a poll stores a page (binary COPY).
    made = InboundMessage.objects.create(
        connection=erp,
        source="webhook",
        object_type="time_entries",
        external_id="4711",
        dedupe_key="one",
        payload=RECORD,
    )
    copy_insert_values(
        InboundMessage,
        [
            {
                "connection_id": erp.pk,
                "source": "poll",
                "object_type": "time_entries",
                "external_id": "4711",
                "dedupe_key": "two",
                "source_version": 1,
                "payload": RECORD,
                "state": "received",
                "error": "",
                "received_at": made.received_at,
            }
        ],
        binary=True,
    )

    made.refresh_from_db()
    assert made.payload == RECORD
    # A key of the document can still be looked for (cast to jsonb for the query).
    assert InboundMessage.objects.filter(payload__client__name="Initech Ltd").count() == 2
    assert InboundMessage.objects.filter(payload__id=4711, dedupe_key="one").get() == made
    assert list(
        InboundMessage.objects.order_by("dedupe_key").values_list("payload", flat=True)
    ) == [RECORD, RECORD]


def _foreign_keys(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a "
            "ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
            "WHERE c.contype = 'f' AND c.conrelid = %s::regclass",
            [table],
        )
        return {name for (name,) in cursor.fetchall()}


def test_engine_rows_are_stored_without_foreign_key_checks_and_still_protect() -> None:
    assert "connection_id" not in _foreign_keys("integrations_inboundmessage")
    assert _foreign_keys("integrations_crossreference") & {"connection_id", "content_type_id"} == (
        set()
    )
    # The business records keep theirs.
    assert {"time_entry_id", "invoice_id"} <= _foreign_keys("integrations_billingevent")

    erp = make_connection()
    customer = Customer.objects.create(name="Initech Ltd", country="GB", currency="GBP")
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=customer.pk,
        connection=erp,
        external_id="C-1",
    )
    with pytest.raises(ProtectedError):
        erp.delete()
    CrossReference.objects.all().delete()
    InboundMessage.objects.create(
        connection=erp,
        source="poll",
        object_type="Contacts",
        external_id="C-1",
        dedupe_key="one",
        payload={},
    )
    with pytest.raises(ProtectedError):
        erp.delete()
