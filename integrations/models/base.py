from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import models


class SystemRole(models.TextChoices):
    """The role a connected system plays for the firm. Ownership rules are stated by role."""

    CRM = "crm", "CRM"
    PSA = "psa", "PSA"
    ERP = "erp", "ERP"


class CanonicalRecord(models.Model):
    """Fields every canonical record carries.

    `source_version` is the version of the source system's record that was last applied (the
    source's modification stamp in microseconds since the epoch, or its own revision number), so a
    late message carrying an older version can be recognised and skipped. `field_sources` records
    which system, connection and version last set each field, grouped by that stamp:
    ``{"psa:3:1763721234000000": ["date", "hours", "notes"]}`` (see `with_sources`; a record
    set by one message carries one short entry, not one object per field).
    """

    source_system = models.CharField(max_length=8, choices=SystemRole.choices, blank=True)
    source_version = models.BigIntegerField(default=0)
    field_sources = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def source_of(self, field: str) -> FieldSource | None:
        """Which system, connection and version last set this field (None: not recorded)."""
        for stamp, names in (self.field_sources or {}).items():
            if field in names:
                return FieldSource.parse(stamp)
        return None


@dataclass(frozen=True)
class FieldSource:
    system: str
    connection_id: int | None
    version: int

    @property
    def stamp(self) -> str:
        return f"{self.system}:{self.connection_id or ''}:{self.version}"

    @classmethod
    def parse(cls, stamp: str) -> FieldSource:
        system, _, rest = stamp.partition(":")
        connection, _, version = rest.partition(":")
        return cls(system, int(connection) if connection else None, int(version or 0))


def with_sources(
    sources: Mapping[str, Any] | None, fields: Iterable[str], source: FieldSource
) -> dict[str, list[str]]:
    """`field_sources` after `source` set `fields`: they leave the stamps that set them before
    (a stamp left with no field goes) and join this one."""
    changed = set(fields)
    result: dict[str, list[str]] = {}
    for stamp, names in (sources or {}).items():
        kept = [name for name in names if name not in changed]
        if kept:
            result[stamp] = kept
    result[source.stamp] = sorted(changed.union(result.get(source.stamp, ())))
    return result
