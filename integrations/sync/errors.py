"""The sync engine's own error classes (a vendor's: integrations/connectors/errors.py)."""

from __future__ import annotations


class UnresolvedReference(Exception):
    """A mapped record refers to a record (its project, its customer) Concord does not know in
    that system yet, so it cannot be stored; the message names the missing one, ``field`` the
    relation that names it."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class InboundRetry(Exception):
    """The record could not be read for a transient reason: it stays RECEIVED and the inbound
    sweeper rings for it again."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MergeRefused(Exception):
    """Two canonical records cannot be merged (or a merge cannot be taken back); the message
    says why in words for the person who asked."""
