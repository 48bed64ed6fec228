"""How the busiest tables are stored, where it decides what a run costs PostgreSQL.

Billing events turn from pending to invoiced once the ERP has their invoice (60,000 of them in a
100,000-entry run). Migration 0030 keeps that change to the row itself: no index names `status`,
and each page keeps room for the new row version, so the UPDATE is a HOT update that writes no
index entry. Counted here by PostgreSQL itself, for this transaction (pg_stat_xact_user_tables).
"""

from __future__ import annotations

import pytest
from django.db import connection

from integrations.models import BillingEvent, Invoice
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
    assert hot == 20  # each new row version stayed on its page, and no index was written


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
