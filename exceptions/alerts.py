"""Alert digests: SLA breaches and new high-impact cases, told to the owning queue by email and
by a Slack-compatible webhook, one message per queue per run, never one per failure.

A beat task (integrations/tasks.py, every 5 minutes) calls `case_digests_send`. For each queue
it collects what is new since its last digest (QueueDigest):

- cases whose SLA deadline passed since then, still open;
- cases opened since then whose amount blocked, in any currency, reaches the threshold of their
  process (AlertThreshold: per process and currency, the most specific row wins);

leaves out any case already announced for that kind (CaseAlert, unique per case and kind: a case
is announced once per kind, however many runs see it), and sends one digest to the queue's email
address (Django's email backend) and one POST of {"text": ...} to its webhook URL. The window
overlaps the previous run by 10 minutes, so a case committed late by a long transaction is not
missed; the CaseAlert rows keep that overlap from announcing anything twice.

A queue's digest row is locked while its run sends, so two runs (a beat that lagged) never send
one queue's news twice. When every channel the queue has fails, nothing is recorded and the next
run tries again; when at least one delivered, the cases count as announced.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from exceptions.models import (
    AlertThreshold,
    CaseAlert,
    CaseEvent,
    ExceptionCase,
    QueueDigest,
    WorkQueue,
)
from exceptions.services import case_event

logger = logging.getLogger(__name__)

OPEN = ExceptionCase.Status.OPEN
Kind = CaseAlert.Kind

# The first digest of a queue looks back one day (older breaches were someone else's news).
FIRST_LOOKBACK = timedelta(days=1)
# Each window starts this long before the last run ended: a case committed by a transaction
# that began before the last run (a billing run takes seconds, a poll page less) is still seen.
OVERLAP = timedelta(minutes=10)
# Cases listed per kind in one message; the rest are counted ("and 140 more").
LISTED = 20
# A webhook that has not answered in 5 s is down; the next run tries again.
WEBHOOK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Digest:
    queue: str
    breached: list[ExceptionCase]
    high_impact: list[ExceptionCase]

    @property
    def empty(self) -> bool:
        return not self.breached and not self.high_impact


class Thresholds:
    """AlertThreshold rows: the amount from which a new case is high-impact."""

    def __init__(self, rows: dict[tuple[str, str], Decimal]) -> None:
        self.rows = rows

    @classmethod
    def load(cls) -> Thresholds:
        return cls({(t.process, t.currency): t.amount for t in AlertThreshold.objects.all()})

    def amount_for(self, process: str, currency: str) -> Decimal | None:
        for key in ((process, currency), (process, ""), ("", currency), ("", "")):
            if key in self.rows:
                return self.rows[key]
        return None

    def high_impact(self, case: ExceptionCase) -> bool:
        for currency, value in (case.amounts or {}).items():
            threshold = self.amount_for(case.process, currency)
            if threshold is not None and Decimal(value) >= threshold:
                return True
        return False


def case_digests_send(*, now: datetime | None = None) -> dict[str, int]:
    """Send each queue its digest of what is new (see the module's docstring). Returns how many
    queues were sent one and how many cases they announced."""
    now = now or timezone.now()
    thresholds = Thresholds.load()
    queues = sent = cases = 0
    for queue in WorkQueue.objects.order_by("code"):
        queues += 1
        announced = _queue_digest(queue, thresholds, now)
        if announced:
            sent += 1
            cases += announced
    return {"queues": queues, "sent": sent, "cases": cases}


@transaction.atomic
def _queue_digest(queue: WorkQueue, thresholds: Thresholds, now: datetime) -> int:
    QueueDigest.objects.get_or_create(queue=queue, defaults={"last_run_at": now - FIRST_LOOKBACK})
    digest_row = QueueDigest.objects.select_for_update().get(queue=queue)
    since = digest_row.last_run_at - OVERLAP
    digest = digest_collect(queue=queue.code, since=since, now=now, thresholds=thresholds)
    digest_row.last_run_at = now
    if digest.empty:
        digest_row.save(update_fields=["last_run_at"])
        return 0
    channels = _send(queue, digest)
    if channels == []:  # every channel failed: keep the window, try again next run
        transaction.set_rollback(True)
        return 0
    digest_row.last_sent_at = now
    digest_row.save(update_fields=["last_run_at", "last_sent_at"])
    alerts = [
        CaseAlert(case=case, kind=kind, queue=queue.code, sent_at=now)
        for kind, listed in (
            (Kind.BREACHED, digest.breached),
            (Kind.HIGH_IMPACT, digest.high_impact),
        )
        for case in listed
    ]
    CaseAlert.objects.bulk_create(alerts, ignore_conflicts=True)
    CaseEvent.objects.bulk_create(
        [
            case_event(
                case=alert.case,
                action=CaseEvent.Action.ANNOUNCED,
                after={"kind": alert.kind, "queue": queue.code, "channels": channels or []},
                at=now,
            )
            for alert in alerts
        ]
    )
    return len({alert.case.pk for alert in alerts})


def digest_collect(*, queue: str, since: datetime, now: datetime, thresholds: Thresholds) -> Digest:
    """What queue `queue` has not heard of yet: breaches and high-impact cases since `since`.
    Both reads are index range scans (queue, status, sla_due_at / first_seen_at)."""
    open_here = ExceptionCase.objects.filter(queue=queue, status=OPEN)
    breached = list(
        open_here.filter(sla_due_at__gt=since, sla_due_at__lte=now)
        .exclude(alerts__kind=Kind.BREACHED)
        .order_by("sla_due_at", "id")
    )
    opened = (
        open_here.filter(first_seen_at__gt=since, first_seen_at__lte=now)
        .exclude(alerts__kind=Kind.HIGH_IMPACT)
        .exclude(amounts={})
        .order_by("-amount_blocked", "id")
    )
    return Digest(
        queue=queue,
        breached=breached,
        high_impact=[case for case in opened if thresholds.high_impact(case)],
    )


def digest_text(queue: WorkQueue, digest: Digest) -> tuple[str, str]:
    """(subject, body) of the digest, plain text (the webhook shows the body as it is)."""
    parts = []
    if digest.breached:
        parts.append(_count(len(digest.breached), "SLA breach", "SLA breaches"))
    if digest.high_impact:
        parts.append(
            _count(len(digest.high_impact), "new high-impact case", "new high-impact cases")
        )
    subject = f"Concord: {queue.name} queue: {' and '.join(parts)}"
    lines = [subject, ""]
    for title, cases, when in (
        ("SLA breached:", digest.breached, "due"),
        ("New high-impact cases:", digest.high_impact, "opened"),
    ):
        if not cases:
            continue
        lines.append(title)
        for case in cases[:LISTED]:
            lines.append(_line(case, when))
        if len(cases) > LISTED:
            lines.append(f"  ... and {len(cases) - LISTED} more")
        lines.append("")
    base = str(getattr(settings, "CONCORD_BASE_URL", "") or "").rstrip("/")
    lines.append(f"Open the {queue.name} queue in Concord{f' ({base}/)' if base else ''}.")
    return subject, "\n".join(lines)


def _line(case: ExceptionCase, when: str) -> str:
    at = case.sla_due_at if when == "due" else case.first_seen_at
    amount = " + ".join(f"{c} {Decimal(v):,.2f}" for c, v in sorted((case.amounts or {}).items()))
    stamp = f"{when} {at:%Y-%m-%d %H:%M} UTC" if at else ""
    facts = ", ".join(x for x in (f"P{case.priority}", amount, stamp) if x)
    return f"  #{case.pk} ({facts}): {case.message[:160]}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _send(queue: WorkQueue, digest: Digest) -> list[str] | None:
    """Send on every channel the queue has. The channels that delivered; None when the queue
    has none (nothing to try again); [] when every one failed."""
    subject, body = digest_text(queue, digest)
    tried = delivered = 0
    channels: list[str] = []
    if queue.email:
        tried += 1
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [queue.email])
            channels.append("email")
            delivered += 1
        except (smtplib.SMTPException, OSError):
            logger.exception("the %s digest email to %s failed", queue.code, queue.email)
    if queue.webhook_url:
        tried += 1
        if _webhook_post(queue.webhook_url, body):
            channels.append("webhook")
            delivered += 1
    if not tried:
        return None
    return channels if delivered else []


def _webhook_post(url: str, text: str) -> bool:
    """POST {"text": ...} to a Slack-compatible incoming webhook; True on a 2xx answer."""
    try:
        response = httpx.post(url, json={"text": text}, timeout=WEBHOOK_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError:
        logger.exception("the digest webhook %s failed", _redacted(url))
        return False
    return True


def _redacted(url: str) -> str:
    # Incoming-webhook URLs carry their secret in the path: log the host only.
    return httpx.URL(url).host or "?"


def digest_preview(*, queue: str, now: datetime | None = None) -> Sequence[ExceptionCase]:
    """The cases the next digest of `queue` would announce (for the SLA page's "next digest")."""
    now = now or timezone.now()
    row = QueueDigest.objects.filter(queue__code=queue).first()
    since = (row.last_run_at if row else now - FIRST_LOOKBACK) - OVERLAP
    digest = digest_collect(queue=queue, since=since, now=now, thresholds=Thresholds.load())
    return [*digest.breached, *digest.high_impact]
