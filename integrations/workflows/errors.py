"""Refusals of the business workflows that callers answer differently from a plain
ValidationError."""

from __future__ import annotations

from django.core.exceptions import ValidationError


class ConfigPreviewStale(ValidationError):
    """An import confirmed with hashes that are not the file's, or not the changes it makes now:
    the file or the configuration changed since the dry run the person saw (HTTP 409)."""
