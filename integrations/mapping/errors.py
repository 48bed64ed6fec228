"""Errors raised while mapping vendor payloads to canonical fields and back.

A `MappingError` names the canonical field, the vendor path and the offending value, so a
mapped record's `errors` read as a sentence an integration admin can act on.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError


class MappingError(ValueError):
    """One field could not be mapped (bad value, missing required path, unknown map entry)."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        path: str = "",
        value: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.path = path
        self.value = value

    def located(self, *, field: str, path: str) -> MappingError:
        """The same error, tagged with the field and path it happened on."""
        self.field = self.field or field
        self.path = self.path or path
        return self

    def __str__(self) -> str:
        where = ""
        if self.field and self.path:
            where = f"{self.field} (from {self.path}): "
        elif self.field or self.path:
            where = f"{self.field or self.path}: "
        return f"{where}{self.message}"

    def __repr__(self) -> str:
        return f"MappingError({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MappingError):
            return NotImplemented
        return (self.message, self.field, self.path) == (other.message, other.field, other.path)

    def __hash__(self) -> int:
        return hash((self.message, self.field, self.path))

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "path": self.path, "message": self.message}


class PathError(MappingError):
    """A dotted path does not lead to a value in the payload (or cannot be written)."""


class OutboundMappingError(MappingError):
    """Building a vendor payload failed; `errors` holds every field that failed."""

    def __init__(self, errors: list[MappingError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class EditNeedsConfirmation(ValidationError):
    """A mapping edit that recent payloads put in doubt (a path none of them has, values the
    row cannot read): saved only when the admin confirms it (integrations/mapping/versions.py)."""
