"""The end-to-end benchmark's harness (tests/benchmarks/e2e.py) at the demo firm's scale 1
(about 1,000 Harvest entries): the real sandbox, worker and beat processes, PostgreSQL and
Redis, so `make bench`'s `e2e_100k_entries_s` keeps working between benchmark runs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from exceptions.models import BlockedRecord
from integrations.models import BillingEvent, OutboxMessage
from tests.benchmarks.e2e import (
    FAULTS,
    VENDOR_REFUSED,
    SandboxControl,
    e2e_run,
    exactly_once_check,
)
from tests.e2e.test_time_to_erp_exactly_once import _purge_queues, sandbox  # noqa: F401
from tests.processes import process_env

# serialized_rollback: the rows the migrations seed (match rules, ownership rules, work queues)
# are there even after transactional tests before this one emptied the tables.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_the_harness_bills_the_demo_firm_exactly_once(sandbox: str, tmp_path: Path) -> None:  # noqa: F811
    _purge_queues(process_env(), tmp_path / "purge.log")
    run = e2e_run(sandbox, scale=1, timeout_s=240)

    assert run.entries_in_scope > 0
    assert run.invoiced == run.entries_in_scope
    assert run.harvest_entries >= run.entries_in_scope
    # Billed: what reached Xero, and the time on the invoice it refused (the seed's customer
    # without a VAT number under reverse charge, parked on finance's case).
    billed = BillingEvent.objects.filter(time_entry__isnull=False).count()
    assert billed == run.invoiced + run.details["refused_by_erp"]
    # The one parked row is that invoice, held on the ERP's refusal of its data.
    refused = BlockedRecord.objects.filter(
        record_type="invoice", case__case_type=VENDOR_REFUSED, case__status="open"
    ).values("record_id")
    assert not OutboxMessage.objects.filter(state="parked").exclude(object_id__in=refused).exists()
    phases = run.phases
    assert 0 < phases["poll_time_entries_s"] <= run.elapsed
    assert 0 < phases["dispatch_s"] <= run.elapsed
    assert phases["dispatch_starts_at_s"] >= phases["billing_starts_at_s"]

    # The check fails loudly on an entry posted twice: one line repeated on a Xero invoice.
    control = SandboxControl(sandbox)
    invoice = next(
        row
        for row in control.rows("xero", "Invoices")
        if any(str(i.get("Description", "")).startswith("TE-") for i in row["data"]["LineItems"])
    )
    items = invoice["data"]["LineItems"]
    patched = httpx.patch(
        f"{sandbox}/_control/records/xero/Invoices/{invoice['id']}",
        json={"LineItems": [*items, items[0]]},
        timeout=10,
    )
    assert patched.status_code == 200, patched.text
    with pytest.raises(AssertionError, match="on more than one Xero line"):
        exactly_once_check(control, run)


def test_the_harness_bills_exactly_once_through_faults(sandbox: str, tmp_path: Path) -> None:  # noqa: F811
    _purge_queues(process_env(), tmp_path / "purge.log")
    run = e2e_run(sandbox, scale=1, faults=FAULTS, timeout_s=300)

    assert run.invoiced == run.entries_in_scope > 0
    assert run.details["calls_refused"] > 0, "the faults should have hit some calls"
