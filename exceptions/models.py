"""Exception cases: failures a retry cannot fix, grouped by root cause, owned by a queue.

A case keeps its blocked records in their own table (BlockedRecord) and their totals on itself
(count, hours, amount per currency), kept up to date by exceptions.services one change at a time,
so joining or clearing N records costs O(N) however many the case already holds.

The people side: work queues (WorkQueue) with their members, routing rules (CaseRoute) and the
SLA per priority (SlaPolicy) as data, comments, and an append-only audit trail (CaseEvent) of
every change and action, the system's own included.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any, NoReturn

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Queue(models.TextChoices):
    FINANCE = "finance", "Finance"
    PMO = "pmo", "PMO"
    SALES_OPS = "sales_ops", "Sales ops"
    INTEGRATION_ADMIN = "integration_admin", "Integration admins"


class ExceptionCase(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"
        WAIVED = "waived", "Waived"

    class Priority(models.IntegerChoices):
        P1 = 1, "P1 (urgent)"
        P2 = 2, "P2 (high)"
        P3 = 3, "P3 (normal)"
        P4 = 4, "P4 (low)"

    # Hash of (case type, process, step, the subject values the catalogue names): one case per
    # root cause, however many jobs failed because of it.
    fingerprint = models.CharField(max_length=64)
    process = models.CharField(max_length=32)
    step = models.CharField(max_length=64)
    case_type = models.CharField(max_length=64)
    queue = models.CharField(max_length=32, choices=Queue.choices)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.P3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    # What the case is about ({"project_id": 7, "project": "P-007 Apollo", ...}): the catalogue
    # renders the message from it and the totals below; the latest occurrence's values stand.
    subject = models.JSONField(default=dict, blank=True)
    message = models.TextField(help_text="What happened, in words the queue's owner uses.")
    vendor_message = models.TextField(blank=True)
    connection = models.ForeignKey(
        "integrations.Connection", on_delete=models.SET_NULL, null=True, blank=True
    )
    # Totals over the case's blocked records, maintained on every join and clear.
    record_count = models.PositiveIntegerField(default=0)
    hours_blocked = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    # {"GBP": "3150.00", "EUR": "80.00"}: the amount blocked per currency (no zero entries).
    amounts = models.JSONField(default=dict, blank=True)
    # The same as one figure for pages and sorting, when the case blocks one currency only; with
    # several, currency is "" and amount_blocked 0 (adding EUR to GBP would be a wrong figure).
    amount_blocked = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    occurrences = models.PositiveIntegerField(default=1)
    sla_due_at = models.DateTimeField(null=True, blank=True)
    # Indexed by the "my work" index below, which leads with it.
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, db_index=False
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.TextField(blank=True)
    # Bumped by every person's action and every status change (not by joins and clears): an
    # action names the revision its person saw, and a mismatch is refused with who acted since
    # (exceptions/actions.py), so two people acting at once never retry twice.
    revision = models.PositiveIntegerField(default=0)
    # The root-cause group (exceptions.services.case_group_key): cases of one type, process and
    # step sharing the subject's scope keys, e.g. every mapping error of one connection and
    # object type whatever the reason; "retry the whole group" retries them together.
    group_key = models.CharField(max_length=64, blank=True)
    # Where the case belongs, set when it opens (from the caller, else from what its subject
    # names): routing rules match on them, the queue pages filter and search by them.
    legal_entity = models.ForeignKey(
        "integrations.LegalEntity", on_delete=models.SET_NULL, null=True, blank=True
    )
    region = models.CharField(max_length=16, blank=True)
    project = models.ForeignKey(
        "integrations.Project", on_delete=models.SET_NULL, null=True, blank=True
    )
    customer = models.ForeignKey(
        "integrations.Customer", on_delete=models.SET_NULL, null=True, blank=True
    )

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=Q(status="open"),
                name="exceptioncase_one_open_per_fingerprint",
            )
        ]
        indexes = [
            models.Index(fields=["queue", "status", "-last_seen_at"]),
            # One index per sort of the queue pages (keyset pagination on (sort key, id)): per
            # queue for a person's own queues, and across queues for the integration admins.
            # A page is then one index range scan of 50 rows however deep it is, at a million
            # cases.
            # The currency after the sort key: the totals per currency over a queue (or, below,
            # over every queue) read this index alone.
            models.Index(
                fields=["queue", "status", "-amount_blocked", "-id", "currency"],
                name="case_queue_amount",
            ),
            models.Index(fields=["queue", "status", "first_seen_at", "id"], name="case_queue_age"),
            # With what the totals add up: those of the SLA filters (breached, due soon), which
            # the tally cannot count, are an index-only scan of the range.
            models.Index(
                fields=["queue", "status", "sla_due_at", "id"],
                name="case_queue_sla",
                include=["priority", "currency", "amount_blocked"],
            ),
            models.Index(
                fields=["status", "-amount_blocked", "-id", "currency"], name="case_amount"
            ),
            models.Index(fields=["status", "first_seen_at", "id"], name="case_age"),
            models.Index(
                fields=["status", "sla_due_at", "id"],
                name="case_sla",
                include=["priority", "currency", "amount_blocked"],
            ),
            # "My work": a person's open cases, soonest due first.
            models.Index(fields=["assignee", "status", "sla_due_at", "id"], name="case_assignee"),
            models.Index(fields=["group_key", "status"], name="case_group"),
            # The legal-entity filter: its page in the default (SLA due) order, and its totals
            # (an index-only scan of the entity's open cases, not a bitmap of all of them).
            models.Index(
                fields=["legal_entity", "status", "sla_due_at", "id"], name="case_entity_sla"
            ),
            models.Index(
                fields=["legal_entity", "status", "queue", "currency", "amount_blocked"],
                name="case_entity_totals",
            ),
            # The totals' second read: the cases blocking several currencies (currency "",
            # amounts not empty), about 2 in 100. Without it that read walks every case of the
            # set whose currency is "" (those blocking no amount too): 300 ms for the resolved
            # cases of a million, against 2 ms through this.
            models.Index(
                fields=["status", "queue"],
                condition=Q(currency="") & ~Q(amounts={}),
                name="case_mixed_currency",
            ),
        ]

    def __str__(self) -> str:
        return f"[{self.get_queue_display()}] {self.message[:80]}"


class BlockedRecord(models.Model):
    """One record a case holds up, with the amount and hours it blocks. A record synced after
    all takes itself off every open case holding it (exceptions.services.case_records_clear)."""

    case = models.ForeignKey(
        ExceptionCase, on_delete=models.CASCADE, related_name="blocked_records"
    )
    # The record's model name ("timeentry", "invoice", "inboundmessage") and primary key.
    record_type = models.CharField(max_length=64)
    record_id = models.BigIntegerField()
    label = models.CharField(max_length=255, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, blank=True)
    hours = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["case", "record_type", "record_id"],
                name="blockedrecord_once_per_case",
            )
        ]
        # "Which cases hold this record?": the clear after a success looks records up by type
        # and id (the unique index above leads with the case, so it cannot answer that).
        indexes = [models.Index(fields=["record_type", "record_id"], name="blockedrecord_record")]

    def __str__(self) -> str:
        return self.label or f"{self.record_type} {self.record_id}"


# --- Queues, routing and SLA, as data -----------------------------------------------------------


class WorkQueue(models.Model):
    """A team that works cases. Its members are the users of its role groups (Finance, PMO, ...:
    integrations/roles.py) and its explicit members; ExceptionCase.queue holds its code."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    groups = models.ManyToManyField(
        Group, blank=True, related_name="work_queues", help_text="Every user of these groups."
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="work_queues"
    )
    # Where its alert digests go (exceptions/alerts.py); blank: that channel is not used.
    email = models.EmailField(blank=True)
    webhook_url = models.URLField(
        blank=True, help_text="A Slack-compatible incoming webhook: POST {'text': ...}."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CaseRoute(models.Model):
    """A routing rule: cases matching every condition it sets go to its queue at its priority.
    The most specific matching rule wins (the most conditions set; on a tie case type, then
    process, legal entity, region); a blank queue or priority keeps the catalogue's."""

    case_type = models.CharField(max_length=64, blank=True, help_text="Blank: any.")
    process = models.CharField(max_length=32, blank=True, help_text="Blank: any.")
    legal_entity = models.ForeignKey(
        "integrations.LegalEntity",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        help_text="Blank: any.",
    )
    region = models.CharField(max_length=16, blank=True, help_text="Blank: any.")
    queue = models.ForeignKey(
        WorkQueue,
        on_delete=models.PROTECT,
        to_field="code",
        null=True,
        blank=True,
        related_name="routes",
    )
    priority = models.PositiveSmallIntegerField(
        choices=ExceptionCase.Priority.choices, null=True, blank=True
    )
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["case_type", "process", "region", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(queue__isnull=False) | Q(priority__isnull=False),
                name="caseroute_routes_somewhere",
            ),
        ]

    def __str__(self) -> str:
        scope = [self.case_type, self.process, str(self.legal_entity or ""), self.region]
        return f"{' / '.join(v for v in scope if v) or 'every case'} -> {self.queue_id}"


class SlaPolicy(models.Model):
    """Time to resolve a case of one priority, from its first sighting, and when it counts as
    due soon."""

    priority = models.PositiveSmallIntegerField(choices=ExceptionCase.Priority.choices, unique=True)
    resolve_within = models.DurationField()
    due_soon_within = models.DurationField(
        default=timedelta(hours=4), help_text="Due soon: this close to the deadline."
    )

    class Meta:
        ordering = ["priority"]
        verbose_name_plural = "SLA policies"

    def __str__(self) -> str:
        return f"P{self.priority}: {self.resolve_within}"


# --- Comments and the audit trail ---------------------------------------------------------------


class CaseComment(models.Model):
    case = models.ForeignKey(ExceptionCase, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    at = models.DateTimeField(default=timezone.now)
    text = models.TextField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.case_id} {self.text[:60]}"


class AuditTrailImmutable(Exception):
    """The audit trail is append-only: no update, no delete."""


def _refuse(what: str) -> NoReturn:
    raise AuditTrailImmutable(f"Case events are append-only: {what} is refused.")


class CaseEventQuerySet(models.QuerySet["CaseEvent"]):
    """Reads and inserts only."""

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def delete(self) -> NoReturn:
        _refuse("delete")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def _raw_delete(self, using: Any) -> NoReturn:
        _refuse("delete")


class CaseEvent(models.Model):
    """One change or action on a case, by a person (actor) or by Concord itself (no actor):
    opened, joined, cleared, resolved, assigned, retried, waived, commented, ... with the values
    before and after. Append-only: saving an existing event, deleting one, and the queryset's
    update and delete all raise; the admin shows them read-only; on PostgreSQL a trigger
    refuses UPDATE and DELETE too (migration 0005)."""

    class Action(models.TextChoices):
        OPENED = "opened", "Opened"
        JOINED = "joined", "Joined"
        CLEARED = "cleared", "Records cleared"
        RESOLVED = "resolved", "Resolved"
        WAIVED = "waived", "Waived"
        ASSIGNED = "assigned", "Assigned"
        REASSIGNED = "reassigned", "Reassigned"
        UNASSIGNED = "unassigned", "Unassigned"
        TAKEN = "taken", "Taken"
        COMMENTED = "commented", "Commented"
        RETRIED = "retried", "Retried"
        # Fixed in place: the data behind the case changed (exceptions/views/fixes.py).
        FIXED = "fixed", "Fixed"
        ANNOUNCED = "announced", "Announced"

    case = models.ForeignKey(ExceptionCase, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True
    )
    # The username at the time, or "Concord" for the system's own changes.
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=16, choices=Action.choices)
    # The case's revision after this event.
    revision = models.PositiveIntegerField(default=0)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)

    objects = CaseEventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["case", "id"], name="caseevent_case")]

    def __str__(self) -> str:
        return f"#{self.case_id} {self.action} by {self.actor_label} at {self.at:%Y-%m-%d %H:%M}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse("update")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("delete")


# --- Alerts -------------------------------------------------------------------------------------


class AlertThreshold(models.Model):
    """A new case blocking at least `amount` (in `currency`) is high-impact: its queue hears of
    it in the next digest. The most specific row wins (process and currency, then process, then
    currency, then the blank-blank default)."""

    process = models.CharField(max_length=32, blank=True, help_text="Blank: any process.")
    currency = models.CharField(max_length=3, blank=True, help_text="Blank: any currency.")
    amount = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        ordering = ["process", "currency"]
        constraints = [
            models.UniqueConstraint(fields=["process", "currency"], name="alertthreshold_once")
        ]

    def __str__(self) -> str:
        return f"{self.process or 'any process'}: {self.currency or ''} {self.amount}".strip()


class CaseAlert(models.Model):
    """A case announced to its queue, once per kind (the digests' deduplication)."""

    class Kind(models.TextChoices):
        BREACHED = "breached", "SLA breached"
        HIGH_IMPACT = "high_impact", "High impact"

    case = models.ForeignKey(ExceptionCase, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    queue = models.CharField(max_length=32)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["case", "kind"], name="casealert_once_per_kind")
        ]

    def __str__(self) -> str:
        return f"#{self.case_id} {self.kind}"


class QueueDigest(models.Model):
    """The last digest run per queue: the next collects what is new since."""

    queue = models.OneToOneField(
        WorkQueue, on_delete=models.CASCADE, to_field="code", related_name="digest"
    )
    last_run_at = models.DateTimeField()
    last_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.queue_id} digest at {self.last_run_at}"


class CaseTallyRow(models.Model):
    """What a row of CaseTally and a row of CaseTallyDelta both are: the dimensions the queue list
    filters on, then a count of cases and an amount (a total in the one, a change to it in the
    other). Abstract, so the two tables keep their own columns (no table of its own, no join);
    the trigger's SQL names the same columns in the same order (exceptions/tally_sql.py
    DIMENSIONS, checked by tests/exceptions/test_tally.py)."""

    # The columns a tally row is unique by, in the order tally_sql.DIMENSIONS lists them.
    DIMENSIONS = (
        "queue",
        "process",
        "case_type",
        "legal_entity_id",
        "region",
        "assignee_id",
        "kind",
        "currency",
    )

    queue = models.CharField(max_length=32)
    process = models.CharField(max_length=32)
    case_type = models.CharField(max_length=64)
    # 0: none (a sentinel, not a key, so CaseTally's unique constraint covers them).
    legal_entity_id = models.BigIntegerField()
    region = models.CharField(max_length=16)
    assignee_id = models.BigIntegerField()
    kind = models.CharField(max_length=1)
    currency = models.CharField(max_length=3)
    cases = models.BigIntegerField()
    amount = models.DecimalField(max_digits=20, decimal_places=2)

    class Meta:
        abstract = True


class CaseTally(CaseTallyRow):
    """The open cases' totals (count and amount blocked per currency) by the dimensions the queue
    list filters on, so the totals over a queue of 100,000 open cases read a few dozen rows, not
    100,000. Kept by PostgreSQL itself: a trigger on ExceptionCase appends every change of an
    open case's contribution to CaseTallyDelta (insert only, so concurrent workers never wait on
    a shared row), and `case_tally_compact` (beat, every few seconds) folds the deltas in here.
    A read sums both in one statement (exceptions.selectors.case_totals). Migration 0009 holds
    the trigger; on SQLite (the embedded default) there is none and the totals are counted.

    `kind`: "s" a case in one currency (currency, 1, its amount); "m" a case blocking several
    (currency "", 1, 0); "c" one currency of such a case (currency, 1, that amount); "n" a case
    blocking no amount (currency "", 1, 0). A case counts once in s + m + n."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=list(CaseTallyRow.DIMENSIONS), name="casetally_unique_dimensions"
            )
        ]

    def __str__(self) -> str:
        return f"{self.queue} {self.case_type} {self.kind} {self.currency}: {self.cases}"


class CaseTallyDelta(CaseTallyRow):
    """A change to CaseTally not folded in yet (see there): written by the trigger only."""

    def __str__(self) -> str:
        return f"{self.queue} {self.case_type} {self.kind} {self.currency}: {self.cases:+d}"
