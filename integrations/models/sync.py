"""The sync engine's durable state: what came in, what must go out, and every call made.

The database is the source of truth; the Celery broker only rings the bell. Every row here
survives a lost message, a killed worker or a restarted Redis.
"""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q
from django.db.models.fields.json import KeyTransform, KeyTransformFactory
from django.db.models.functions import Cast
from psycopg.types.json import Json, Jsonb

from integrations.classification import ErrorClass
from integrations.models.connections import Connection


class RawJSONField(models.JSONField):
    """A JSON document kept as the text it was written as: PostgreSQL's ``json``, not
    ``jsonb``. For raw vendor records, written in bulk (a poll's every record) and read back
    whole, never queried inside: ``jsonb`` had PostgreSQL parse each into its binary form as
    it was stored, twice the cost of the rest of the COPY (117,000 records: 1.7 s against
    0.8 s), for lookups nothing makes. Reads give the document as psycopg loads it. A key
    lookup (``payload__code="X"``, as a person looks for one record in a shell) casts the
    document to jsonb for that query; lookups on the whole document (contains, has_key) are
    not offered."""

    def get_transform(self, name: str) -> Any:
        found = super().get_transform(name)
        if isinstance(found, KeyTransformFactory):
            return _KeyOfJsonb(name)
        return found

    def db_type(self, connection: Any) -> str | None:
        return "json" if connection.vendor == "postgresql" else super().db_type(connection)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is not None and not isinstance(value, str):
            return value  # psycopg parsed it (it passes only jsonb through as text)
        return super().from_db_value(value, expression, connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        adapted = super().get_db_prep_value(value, connection, prepared)
        if isinstance(adapted, Jsonb):  # sent as json: no jsonb parse and cast on the way
            return Json(adapted.obj, adapted.dumps)
        return adapted


class _KeyOfJsonb(KeyTransformFactory):
    """A key of a ``RawJSONField``, read from its document cast to jsonb (json has no
    equality, so a key's value could not be compared)."""

    def __call__(self, *args: Any, **kwargs: Any) -> KeyTransform:
        lhs, *rest = args
        return KeyTransform(self.key_name, Cast(lhs, models.JSONField()), *rest, **kwargs)


# The engine's bulk-written rows reference connections and content types without a database
# constraint (a raw record's connection, a cross-reference's connection and content type). A
# foreign key is checked row by row as a COPY stores it: a 100,000-entry poll writes 117,000
# raw records and as many cross-references, and their three checks cost PostgreSQL about a
# second, more than the rest of those COPYs. Nothing is lost: these rows are written only by
# the engine with ids it has just read; connections and content types are never deleted
# through SQL, and a connection's delete is still refused through the ORM (on_delete=PROTECT:
# Django looks for the rows that reference it before it deletes; tests/integrations/
# test_storage.py). The business records (time, billing events, invoices) keep theirs.
class InboundMessage(models.Model):
    """A raw change from a connected system (webhook delivery or polled record), kept verbatim."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        POLL = "poll", "Poll"
        REPLAY = "replay", "Replay"

    class State(models.TextChoices):
        RECEIVED = "received", "Received"
        APPLIED = "applied", "Applied"
        STALE = "stale", "Skipped: older than the applied version"
        CONFLICT = "conflict", "Not applied: ownership conflict"
        FAILED = "failed", "Failed"

    # Indexed by (connection, object type, external id) below, which serves these lookups too.
    # No database constraint: see the note above the class. PROTECT holds through the ORM.
    connection = models.ForeignKey(
        Connection,
        on_delete=models.PROTECT,
        related_name="inbound",
        db_index=False,
        db_constraint=False,
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    object_type = models.CharField(max_length=64, help_text="The vendor's object, e.g. Invoice.")
    external_id = models.CharField(max_length=255, blank=True)
    # The source's event id, or a hash of the content when it has none; one row per delivery.
    dedupe_key = models.CharField(max_length=128)
    source_version = models.BigIntegerField(default=0)
    payload = RawJSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Indexed below only where set: nearly every row is an original.
    replay_of = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="replays",
        db_index=False,
    )
    # Until when a batch task holds this received message (integrations/sync/inbound.py): a
    # second batch of the same connection, rung while the first works, takes the next messages
    # instead of reading and applying the same ones again. Expired, it is anyone's.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "dedupe_key"],
                condition=Q(replay_of__isnull=True),
                name="inbound_unique_delivery",
            )
        ]
        indexes = [
            # The work queue and what needs a person, not the applied rows: a poll inserts thousands
            # of rows already applied, which this index never needs to hold.
            models.Index(
                fields=["state", "received_at"],
                condition=Q(state__in=["received", "failed", "conflict"]),
                name="inbound_open_by_state",
            ),
            models.Index(fields=["connection", "object_type", "external_id"]),
            models.Index(
                fields=["replay_of"],
                condition=Q(replay_of__isnull=False),
                name="inbound_replays",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id}:{self.object_type}:{self.external_id} ({self.state})"


class PollCursor(models.Model):
    """How far polling has read one object type of one connection.

    `position` is the last modification stamp read; `ids_at_position` are the records already
    read that carry exactly that stamp, so the next poll can ask for `>= position` and skip only
    those, never a record that shares the stamp but was not yet seen. `resume` is where an
    unfinished read of a vendor that lists newest first stands (integrations/sync/polling.py).
    The last four fields are its health: when it last read everything, and since when and why
    it has been failing.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="cursors")
    object_type = models.CharField(max_length=64)
    position = models.CharField(max_length=64, blank=True)
    ids_at_position = models.JSONField(default=list, blank=True)
    resume = models.JSONField(
        default=dict,
        blank=True,
        help_text="An unfinished read: the next page, the newest stamp read and the ids at it.",
    )
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="The first failed poll since the last success."
    )
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "object_type"], name="pollcursor_unique_object"
            )
        ]

    def __str__(self) -> str:
        return f"{self.connection_id}:{self.object_type} @ {self.position or 'start'}"


class OutboxMessage(models.Model):
    """One effect to make on an external system, written in the transaction that caused it."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        IN_FLIGHT = "in_flight", "In flight"
        DONE = "done", "Done"
        PARKED = "parked", "Parked"
        SKIPPED = "skipped", "Skipped (stale version)"

    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="outbox")
    process = models.CharField(max_length=32, help_text="Business process, e.g. time_to_erp.")
    step = models.CharField(max_length=64)
    operation = models.CharField(max_length=64, help_text="Connector operation to call.")
    content_type = models.ForeignKey(ContentType, on_delete=models.PROTECT)
    object_id = models.BigIntegerField()
    record_version = models.BigIntegerField(default=0)
    payload = models.JSONField(default=dict, help_text="Exactly what the connector sends.")
    # What a person needs to read a failure: record label, amount, currency, hours, subject
    # (e.g. the customer) - used for the exception case's message and business impact.
    context = models.JSONField(default=dict, blank=True)
    # Messages with the same group_key may travel in one batch call (e.g. one Xero invoice).
    group_key = models.CharField(max_length=200, blank=True)
    # Derived from (process, step, record, version): the same effect always has the same key, so
    # a re-run is recognised by the vendor (Idempotency-Key) or by a look-up before create.
    idempotency_key = models.CharField(max_length=200, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When the first attempt was claimed: the retry budget is a time window from here
    # (integrations/sync/outbox.py), so a burst of faults cannot use it up in minutes.
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set when an earlier attempt may have reached the vendor without us hearing back (a dropped
    # response, a timeout, a 500, a vanished worker): the next attempt looks the record up at
    # the vendor before creating it. Refusals the vendor made before writing (429, 503) and calls
    # never sent leave it as it was.
    needs_lookup = models.BooleanField(default=False)
    # The Idempotency-Key of that attempt's call, for a vendor that honours one (Xero, 24 h):
    # the same set of rows sent again under it gets the vendor's first answer, so the retry
    # needs no look-up (integrations/sync/dispatch.py). Blank: no such call, or a look-up it is.
    # (A database default too: rows written by hand-made SQL, the benchmarks' seeders, get it.)
    sent_key = models.CharField(max_length=64, blank=True, default="", db_default="")
    next_attempt_at = models.DateTimeField(db_index=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    last_error = models.TextField(blank=True)
    error_class = models.CharField(max_length=16, blank=True, choices=ErrorClass.choices)
    result = models.JSONField(default=dict, blank=True, help_text="What the target returned.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    done_at = models.DateTimeField(null=True, blank=True)
    replay_of = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="replays"
    )
    exception_case = models.ForeignKey(
        "exceptions.ExceptionCase",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="outbox_messages",
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            # The dispatcher's claim: due rows of one target, oldest first.
            models.Index(
                fields=["connection", "next_attempt_at"],
                condition=Q(state="pending"),
                name="outbox_due_idx",
            ),
            # The sweeper's look for rows whose worker vanished.
            models.Index(
                fields=["claimed_at"], condition=Q(state="in_flight"), name="outbox_inflight_idx"
            ),
            models.Index(fields=["content_type", "object_id", "record_version"]),
            models.Index(fields=["process", "state"]),
        ]

    def __str__(self) -> str:
        return f"{self.process}/{self.step} {self.operation} #{self.pk} ({self.state})"


class SyncAttempt(models.Model):
    """One call to an external system: what was asked, how long it took, how it ended."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        TRANSIENT = "transient", "Transient failure"
        PERMANENT = "permanent", "Permanent failure"
        BUSINESS = "business", "Business rule failure"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="attempts")
    operation = models.CharField(max_length=64)
    started_at = models.DateTimeField(db_index=True)
    latency_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.TextField(blank=True)
    vendor_response = models.TextField(blank=True, help_text="Truncated to 4 KB.")
    messages = models.ManyToManyField(OutboxMessage, related_name="sync_attempts", blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["connection", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.operation} {self.outcome} {self.latency_ms} ms"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (probing)"


class ConnectionHealth(models.Model):
    """Last known state of a connection's circuit breaker and calls, for pages to show.

    The live breaker state lives in Redis (shared by all workers); this row is written on every
    state change and on a success after a failure, not on every call.
    """

    connection = models.OneToOneField(Connection, on_delete=models.CASCADE, related_name="health")
    circuit_state = models.CharField(
        max_length=16, choices=CircuitState.choices, default=CircuitState.CLOSED
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.connection_id}: {self.circuit_state}"
