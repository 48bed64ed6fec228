"""A vendor's answer is believed only when it names what was sent.

A 2xx says the vendor took a request, not that the record it answers with is the one Concord
sent: a proxy or a misrouted tenant can answer with someone else's invoice, a test double with
its one example. Each connector declares, per operation, the fields its answer must echo (Xero's
``Reference``, Harvest's ``code`` and client, Salesforce's ``External_Id__c``, the id an update
named) and checks its write and look-up results with ``written_checked`` / ``found_checked``.
A result that does not echo what its item carried becomes a permanent failure
(``AnswerMismatch``) saying which record came back and what it carried instead: the row parks
with that reason, never marked done.

Plain data and functions: nothing here imports Django.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from integrations.connectors.base import ItemResult
from integrations.connectors.errors import PermanentError

# The stable start of every mismatch's message (callers group failures by it); the details
# follow in ``vendor_message``.
MISMATCH = "vendor answered with a record other than the one sent"


class AnswerMismatch(PermanentError):
    """The vendor's answer names a record other than the one sent: not marked done."""


@dataclass(frozen=True, slots=True)
class Echo:
    """One field the answer must carry as sent: ``sent`` is the path in the item, ``answer``
    the path in the vendor's record (the same when empty). ``compare``: ``exact`` (as text),
    ``fold`` (ignoring case and surrounding blanks: names, GUIDs) or ``salesforce_id`` (the
    15-character id is the case-sensitive one; the 18-character form adds a checksum)."""

    sent: str
    answer: str = ""
    compare: str = "exact"

    def expected(self, item: Mapping[str, Any]) -> str | None:
        value = _at(item, self.sent)
        return None if value is None or value == "" else str(value)

    def found(self, record: Mapping[str, Any]) -> str | None:
        value = _at(record, self.answer or self.sent)
        return None if value is None or value == "" else str(value)

    def same(self, sent: str, found: str | None) -> bool:
        if found is None:
            return False
        if self.compare == "fold":
            return sent.strip().casefold() == found.strip().casefold()
        if self.compare == "salesforce_id":
            return len(sent) in (15, 18) and sent[:15] == found[:15]
        return sent == found


@dataclass(frozen=True, slots=True)
class Answer:
    """What one operation's answer must echo: ``noun`` and ``label`` (answer paths, the first
    present names the record: ``InvoiceNumber`` then ``InvoiceID``) word the reason."""

    noun: str
    label: tuple[str, ...]
    echoes: tuple[Echo, ...]


def _at(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def answer_mismatch(
    *, vendor: str, answer: Answer, item: Mapping[str, Any], record: Mapping[str, Any]
) -> AnswerMismatch | None:
    """Why ``record`` (the vendor's answer) is not the one ``item`` asked for, or None."""
    for echo in answer.echoes:
        sent = echo.expected(item)
        if sent is None:
            continue  # the item carried nothing to compare (an optional reference)
        found = echo.found(record)
        if echo.same(sent, found):
            continue
        label = next((str(v) for v in (_at(record, p) for p in answer.label) if v), "")
        named = f"{answer.noun} {label}" if label else f"an unnamed {answer.noun}"
        field = echo.answer or echo.sent
        carried = (
            f"whose {field} {found} is not the {sent} we sent"
            if found is not None
            else f"without the {field} {sent} we sent"
        )
        return AnswerMismatch(
            f"{MISMATCH}: {vendor} {answer.noun}",
            vendor_message=f"{vendor} answered with {named} {carried}.",
        )
    return None


def _checked(
    vendor: str, answer: Answer, item: Mapping[str, Any], result: ItemResult
) -> ItemResult:
    if not result.ok:
        return result
    error = answer_mismatch(vendor=vendor, answer=answer, item=item, record=result.data)
    # The vendor's record stays with the failure, for the people who look into it.
    return result if error is None else ItemResult(ok=False, error=error, data=result.data)


def written_checked(
    *,
    vendor: str,
    answer: Answer | None,
    items: Sequence[Mapping[str, Any]],
    results: Sequence[ItemResult],
) -> list[ItemResult]:
    """A write's results, each success that does not echo its item turned into a failure."""
    if answer is None:
        return list(results)
    return [_checked(vendor, answer, i, r) for i, r in zip(items, results, strict=True)]


def found_checked(
    *,
    vendor: str,
    answer: Answer | None,
    items: Sequence[Mapping[str, Any]],
    results: Sequence[ItemResult | None],
) -> list[ItemResult | None]:
    """A look-up's results (None: not found), checked the same way."""
    if answer is None:
        return list(results)
    return [
        None if r is None else _checked(vendor, answer, i, r)
        for i, r in zip(items, results, strict=True)
    ]
