"""Alert digests: one message per queue per run (email through Django's backend, and a
Slack-compatible POST to a real local HTTP server), a case never announced twice for one kind,
new cases under their process's threshold not announced."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from config.celery import app as celery_app
from exceptions.alerts import case_digests_send
from exceptions.models import AlertThreshold, CaseAlert, CaseEvent, ExceptionCase, WorkQueue
from integrations.tasks import send_case_digests
from tests.exceptions.cases import entries, finance_case, pmo_case

pytestmark = pytest.mark.django_db


class Hook:
    """A Slack-compatible incoming webhook on a free loopback port: keeps each JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def channels(hook: Hook) -> Hook:
    WorkQueue.objects.filter(code="finance").update(
        email="finance@example.com", webhook_url=hook.url
    )
    WorkQueue.objects.filter(code="pmo").update(email="pmo@example.com")
    return hook


def _breach(case: ExceptionCase, minutes_ago: float = 1) -> ExceptionCase:
    """The case's deadline passed a minute ago (since the last digest)."""
    ExceptionCase.objects.filter(pk=case.pk).update(
        sla_due_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    return case


def _big(amount: str, currency: str = "EUR") -> list[Any]:
    return entries(1, amount=amount, currency=currency)


def test_one_message_per_queue_per_run_and_never_twice(channels: Hook) -> None:
    late_a = _breach(finance_case())
    late_b = _breach(finance_case())
    big = finance_case(records=_big("25000"))
    late_pmo = _breach(pmo_case())

    result = case_digests_send()
    assert (result["sent"], result["cases"]) == (2, 4)
    assert sorted(m.to[0] for m in mail.outbox) == ["finance@example.com", "pmo@example.com"]
    finance_mail = next(m for m in mail.outbox if m.to == ["finance@example.com"])
    assert finance_mail.subject == (
        "Concord: Finance queue: 2 SLA breaches and 1 new high-impact case"
    )
    for case in (late_a, late_b, big):
        assert f"#{case.pk} " in finance_mail.body
    assert "EUR 25,000.00" in finance_mail.body
    (posted,) = channels.bodies  # the finance queue's webhook, once
    assert set(posted) == {"text"}
    assert posted["text"] == finance_mail.body
    pmo_mail = next(m for m in mail.outbox if m.to == ["pmo@example.com"])
    assert f"#{late_pmo.pk} " in pmo_mail.body

    # The next run has nothing new: nothing is sent again.
    assert case_digests_send()["sent"] == 0
    assert len(mail.outbox) == 2
    assert len(channels.bodies) == 1
    assert set(CaseAlert.objects.values_list("case_id", "kind")) == {
        (late_a.pk, "breached"),
        (late_b.pk, "breached"),
        (big.pk, "high_impact"),
        (late_pmo.pk, "breached"),
    }
    assert CaseEvent.objects.filter(action="announced").count() == 4


def test_a_case_is_announced_once_per_kind(channels: Hook) -> None:
    big = finance_case(records=_big("50000"))
    case_digests_send()
    assert len(mail.outbox) == 1
    assert "1 new high-impact case" in mail.outbox[0].subject
    # Later it breaches its SLA: that is news of another kind, told once.
    _breach(big)
    case_digests_send()
    case_digests_send()
    assert len(mail.outbox) == 2
    assert mail.outbox[1].subject == "Concord: Finance queue: 1 SLA breach"
    assert CaseAlert.objects.filter(case=big).count() == 2


def test_new_cases_under_their_process_threshold_are_not_announced(channels: Hook) -> None:
    AlertThreshold.objects.create(process="time_to_erp", currency="", amount=Decimal("30000"))
    AlertThreshold.objects.create(process="time_to_erp", currency="GBP", amount=Decimal("500"))
    under = finance_case(records=_big("25000"))  # over the default 10,000, under the process's
    gbp = finance_case(records=_big("800", "GBP"))  # GBP has its own, lower line
    small = pmo_case(records=_big("9999.99"))  # another process: the default 10,000
    case_digests_send()
    (message,) = mail.outbox
    assert f"#{gbp.pk} " in message.body
    assert f"#{under.pk} " not in message.body
    assert f"#{small.pk} " not in message.body
    assert set(CaseAlert.objects.values_list("case_id", flat=True)) == {gbp.pk}


def test_when_every_channel_fails_the_next_run_tries_again(channels: Hook) -> None:
    WorkQueue.objects.filter(code="finance").update(email="")
    channels.status = 500
    late = _breach(finance_case())
    assert case_digests_send()["sent"] == 0
    assert len(channels.bodies) == 1
    assert not CaseAlert.objects.exists()
    channels.status = 200
    assert case_digests_send()["sent"] == 1
    assert len(channels.bodies) == 2
    assert f"#{late.pk} " in channels.bodies[1]["text"]
    assert CaseAlert.objects.get().case_id == late.pk


def test_an_old_breach_outside_the_first_window_is_not_news(channels: Hook) -> None:
    _breach(finance_case(), minutes_ago=48 * 60)
    assert case_digests_send()["sent"] == 0
    assert mail.outbox == []


def test_the_beat_runs_the_digest_task_every_five_minutes(channels: Hook) -> None:
    entry = celery_app.conf.beat_schedule["case-digests"]
    assert (entry["task"], entry["schedule"], entry["options"]) == (
        "exceptions.send_case_digests",
        300.0,
        {"expires": 300},
    )
    _breach(finance_case())
    assert send_case_digests() == {"queues": 4, "sent": 1, "cases": 1}
    assert len(mail.outbox) == 1
