"""Identity resolution: how Concord recognises that a record arriving from one system is a
record it already holds from another, the match keys it keeps to find them, and the merges
that joined two canonical records into one (kept so a merge can be undone).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class MatchRule(models.Model):
    """One way of recognising an incoming record as an existing canonical one, per object.

    Rules are tried in `order` for a record no cross-reference names yet. `sources` says where
    each vendor's record carries the value, as a list of places per vendor and part::

        {"xero": {"value": ["ContactNumber"]}, "salesforce": {"value": ["@id", "External_Id__c"]}}
        {"xero": {"value": ["=tax_number"], "country": ["=country"]}}

    A place is a path in the vendor's payload (``Addresses.0.Country``), ``=field`` for a
    mapped canonical field, or ``@id`` for the record's own id in its system. ``country``
    qualifies a tax number or a name: two values with different countries never match, a value
    without one matches any. A vendor the rule does not name contributes nothing to it.
    """

    class Kind(models.TextChoices):
        # An id one system wrote into another's record (the CRM's account id in the ERP contact's
        # number): matched exactly, and only between records of different vendors, since each
        # vendor numbers its own records and two accounts of one vendor may reuse a number.
        REFERENCE = "reference", "Id written back by another system"
        # A tax number, normalised by python-stdnum to its country and compact digits.
        TAX_NUMBER = "tax_number", "Tax number"
        # A name, normalised (case, accents, punctuation); `threshold` 100 is the exact
        # normalised name, below 100 the rapidfuzz similarity of the names without legal suffix.
        NAME = "name", "Name"

    class Certainty(models.TextChoices):
        LINK = "link", "Certain: link to the existing record"
        PROBABLE = "probable", "Probable: open a possible-duplicate case"

    object_type = models.CharField(max_length=64, help_text="Canonical model name, e.g. customer.")
    name = models.SlugField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    certainty = models.CharField(max_length=16, choices=Certainty.choices)
    order = models.PositiveSmallIntegerField(default=0)
    sources = models.JSONField(default=dict, help_text="Vendor -> {part: [places]}.")
    threshold = models.PositiveSmallIntegerField(
        default=100, help_text="Name rules: the similarity (0-100) at or above which names match."
    )
    enabled = models.BooleanField(default=True)
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["object_type", "order", "id"]
        constraints = [
            models.UniqueConstraint(fields=["object_type", "name"], name="matchrule_unique_name"),
            models.CheckConstraint(
                condition=Q(threshold__gte=50) & Q(threshold__lte=100),
                name="matchrule_threshold_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.object_type} by {self.name} ({self.certainty})"


class MatchKey(models.Model):
    """A canonical record's match key for one rule, as one system's copy of it carries it.

    Written with the record's cross-reference by the upsert (and moved by merges), so a page of
    incoming records finds its candidates with one query per rule.
    """

    rule = models.ForeignKey(MatchRule, on_delete=models.CASCADE, related_name="keys")
    object_type = models.CharField(max_length=64)
    object_id = models.BigIntegerField()
    # The system copy that carries the key; none for a key from the canonical record itself.
    connection = models.ForeignKey(
        "integrations.Connection",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    vendor = models.CharField(max_length=16, blank=True)
    value = models.CharField(max_length=255)
    country = models.CharField(max_length=2, blank=True)
    # Name similarity compares a record only with the names sharing this prefix (see
    # integrations.sync.identity.BLOCK).
    block = models.CharField(max_length=8, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["rule", "value"], name="matchkey_rule_value"),
            models.Index(fields=["rule", "block"], name="matchkey_rule_block"),
            models.Index(fields=["object_type", "object_id"], name="matchkey_record"),
        ]

    def __str__(self) -> str:
        return f"{self.object_type} {self.object_id} {self.value}"


class RecordMerge(models.Model):
    """Two canonical records found to be one: the loser's references moved to the winner and
    the loser removed. What was moved is kept, so `record_unmerge` can put it back."""

    object_type = models.CharField(max_length=64)
    winner_id = models.BigIntegerField()
    loser_id = models.BigIntegerField()
    loser_repr = models.CharField(max_length=200)
    # The loser's values by attname (JSON-safe), to re-create it as it was.
    loser_values = models.JSONField(default=dict)
    # The winner's values the merge replaced with the loser's (the owning system's), by attname,
    # and the winner's field_sources before the merge.
    winner_before = models.JSONField(default=dict)
    # Ids of what pointed at the loser and now points at the winner: {"crossreference": [...],
    # "matchkey": [...], "blockedrecord": [...], "outboxmessage": [...],
    # "integrations.project.customer": [...]}.
    moved = models.JSONField(default=dict)
    exception_case = models.ForeignKey(
        "exceptions.ExceptionCase",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    note = models.CharField(max_length=400, blank=True)
    merged_at = models.DateTimeField(auto_now_add=True)
    merged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    merged_by_label = models.CharField(max_length=150)
    unmerged_at = models.DateTimeField(null=True, blank=True)
    unmerged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["-merged_at", "-id"]
        indexes = [models.Index(fields=["object_type", "winner_id"], name="recordmerge_winner")]

    def __str__(self) -> str:
        return f"{self.object_type} {self.loser_id} merged into {self.winner_id}"
