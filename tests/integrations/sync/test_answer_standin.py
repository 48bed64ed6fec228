"""Against a Xero stand-in that answers every PUT with the spec's example invoice, over real HTTP:
the answer does not name what was sent, so the row parks with a readable reason within its
attempt limit and nothing is marked invoiced. A stand-in that echoes the Reference but gives
every invoice the same InvoiceID breaks a constraint while the outcome is recorded: that counts
as an attempt, and the rows park once their budget is spent instead of looping."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from django.test import override_settings
from django.utils import timezone

from exceptions.models import ExceptionCase
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    ApprovalState,
    BillingEvent,
    Connection,
    Contract,
    CrossReference,
    Customer,
    Invoice,
    LegalEntity,
    OutboxMessage,
    Project,
    RateCard,
    Resource,
    RoutingRule,
    TimeEntry,
)
from integrations.sync.dispatch import outbox_dispatch
from integrations.workflows.time_to_erp import billing_run, invoice_reference
from tests.factories import make_connection
from tests.sandbox.conftest import specs_dir

pytestmark = pytest.mark.django_db

TENANT = "9d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f02"


@cache
def example_invoices() -> dict[str, Any]:
    """The 200 example of PUT /Invoices in Xero's own contract."""
    spec = yaml.safe_load((specs_dir() / "xero-accounting.yaml").read_text())
    put = spec["paths"]["/Invoices"]["put"]
    responses = {str(code): body for code, body in put["responses"].items()}
    example = responses["200"]["content"]["application/json"]["example"]
    assert isinstance(example, dict)
    return example


class StandIn:
    """A tiny Xero look-alike: a token endpoint, PUT /Invoices answered by `answer(sent)`, and
    look-ups that find nothing. Counts the PUTs it answered."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.puts = 0
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: Any) -> None:
                # YAML reads the example's unquoted "2019-03-11 00:00:00" as a datetime.
                data = json.dumps(body, default=str).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                self._body()
                self._reply({"access_token": "t", "expires_in": 1800, "token_type": "Bearer"})

            def do_PUT(self) -> None:
                sent = json.loads(self._body())
                stand_in.puts += 1
                self._reply(stand_in.answer(sent))

            def do_GET(self) -> None:
                self._reply({"Invoices": []})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _always_the_example(sent: dict[str, Any]) -> dict[str, Any]:
    return example_invoices()


def _same_id_echoing_reference(sent: dict[str, Any]) -> dict[str, Any]:
    """One answer per invoice sent, each with the example's InvoiceID and the Reference sent."""
    answer = copy.deepcopy(example_invoices())
    template = answer["Invoices"][0]
    answer["Invoices"] = [
        {**template, "Reference": invoice["Reference"]} for invoice in sent["Invoices"]
    ]
    return answer


@pytest.fixture
def standin_example() -> Iterator[StandIn]:
    with StandIn(_always_the_example) as stand_in:
        yield stand_in


@pytest.fixture
def standin_same_id() -> Iterator[StandIn]:
    with StandIn(_same_id_echoing_reference) as stand_in:
        yield stand_in


def _firm(stand_in: StandIn, customers: int) -> Connection:
    """A UK entity billing GBP through the stand-in, one T&M project per customer, one approved
    entry each: one invoice per customer."""
    xero = make_connection(
        name="Xero stand-in",
        base_url=f"{stand_in.url}/api.xro/2.0",
        credentials={
            "client_id": "concord-xero",
            "client_secret": "stand-in-secret",
            "token_url": f"{stand_in.url}/connect/token",
            "tenant_id": TENANT,
        },
        rate_limit_per_minute=6000,
    )
    mapping_defaults_install(connection=xero)
    RoutingRule.objects.create(role="erp", connection=xero)
    entity = LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    RateCard.objects.create(role="Consultant", currency="GBP", bill_rate=Decimal("140"))
    worker = Resource.objects.create(
        name="Ada Byron",
        email="ada@example.invalid",
        role="Consultant",
        cost_rate=Decimal("60"),
        cost_currency="GBP",
    )
    for n in range(customers):
        customer = Customer.objects.create(
            name=f"Customer {n} Ltd", legal_entity=entity, country="GB", currency="GBP"
        )
        contract = Contract.objects.create(
            number=f"C-{n}",
            customer=customer,
            legal_entity=entity,
            billing_model="tm",
            currency="GBP",
            status="active",
        )
        project = Project.objects.create(
            code=f"P-{n}",
            name=f"Project {n}",
            customer=customer,
            contract=contract,
            legal_entity=entity,
            currency="GBP",
            status="active",
        )
        TimeEntry.objects.create(
            resource=worker,
            project=project,
            date=date(2026, 11, 2),
            hours=Decimal("7.5"),
            approval_state=ApprovalState.APPROVED,
        )
    return xero


def _nothing_invoiced() -> None:
    assert not BillingEvent.objects.filter(status=BillingEvent.Status.INVOICED).exists()
    assert not Invoice.objects.exclude(number="").exists()
    assert not CrossReference.objects.filter(content_type__model="invoice").exists()


def test_an_answer_naming_another_invoice_parks_the_row_with_a_readable_reason(
    standin_example: StandIn,
) -> None:
    xero = _firm(standin_example, customers=1)
    assert billing_run().invoices == 1
    invoice = Invoice.objects.get()

    report = outbox_dispatch(connection_id=xero.pk, worker="test")

    assert (report.done, report.parked) == (0, 1)
    row = OutboxMessage.objects.get()
    assert row.state == OutboxMessage.State.PARKED
    assert row.attempts == 1  # parked at once: a wrong answer is not retried
    assert row.error_class == "permanent"
    expected = (
        "Xero answered with invoice INV-0007 whose Reference Website Design is not the "
        f"{invoice_reference(invoice)} we sent."
    )
    assert row.last_error == expected
    case = row.exception_case
    assert case is not None
    assert case.case_type == "vendor_answer_mismatch"
    assert case.queue == "integration_admin"
    assert expected in case.message
    assert "were not marked done" in case.message
    _nothing_invoiced()
    assert standin_example.puts == 1


def _backoff_waited_out() -> None:
    OutboxMessage.objects.filter(state="pending").update(next_attempt_at=timezone.now())


@override_settings(CONCORD_OUTBOX_MIN_ATTEMPTS=3, CONCORD_OUTBOX_RETRY_WINDOW_S=0)
def test_a_crash_while_recording_the_outcome_counts_as_an_attempt_and_the_rows_park(
    standin_same_id: StandIn,
) -> None:
    xero = _firm(standin_same_id, customers=2)
    assert billing_run().invoices == 2

    # Both answers echo their Reference but carry one InvoiceID: recording them breaks the
    # cross-references' unique key. Before, the dispatch crashed, the rows came back after
    # their lease and crashed again, attempts growing past any limit, never parking.
    first = outbox_dispatch(connection_id=xero.pk, worker="test")
    assert (first.done, first.retry, first.parked) == (0, 2, 0)
    rows = list(OutboxMessage.objects.order_by("pk"))
    assert [r.state for r in rows] == ["pending", "pending"]
    assert [r.attempts for r in rows] == [1, 1]
    assert all(r.needs_lookup for r in rows)  # the vendor may hold them now: look up first
    assert all(
        r.last_error.startswith("recording the outcome failed: IntegrityError:") for r in rows
    )

    for _ in range(5):  # more rounds than the budget allows: the rows must stop at 3
        _backoff_waited_out()
        outbox_dispatch(connection_id=xero.pk, worker="test")

    rows = list(OutboxMessage.objects.order_by("pk"))
    assert [r.state for r in rows] == ["parked", "parked"]
    assert [r.attempts for r in rows] == [3, 3]
    assert standin_same_id.puts == 3
    case = ExceptionCase.objects.get(case_type="retries_exhausted")
    assert case.record_count == 2
    assert "kept failing after 3 attempts" in case.message
    assert "recording the outcome failed" in case.message
    _nothing_invoiced()
