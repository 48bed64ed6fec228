"""Previewing a mapping version (typically a draft) before it is published: against the latest
inbound payloads of its object, beside the published version (which records it would read that
failed before, which it would break, which it would change and how), against the open mapping
cases of its connection and object (which it would fix), and, outbound, against recent
canonical records (the vendor payload each would get). Nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count

from exceptions.models import ExceptionCase
from integrations.mapping.apply import (
    CompiledMapping,
    MappedRecord,
    map_inbound,
    map_outbound,
)
from integrations.mapping.errors import OutboundMappingError
from integrations.mapping.paths import MISSING
from integrations.mapping.review import (
    FETCH_LIMIT,
    SAMPLES_DEFAULT,
    Sample,
    VendorReader,
    recent_samples,
)
from integrations.mapping.selectors import (
    mapping_set_compile,
)
from integrations.models import (
    Connection,
    InboundMessage,
    MappingSet,
)
from integrations.selectors import inbound_held

Status = MappingSet.Status

# Held messages checked per open case: a case holding more is judged on its first 500 (oldest
# first), and says so.
CASE_CHECK_LIMIT = 500
# Open cases a preview checks (oldest first): more than one page of a queue.
CASES_MAX = 100
# The mapping cases the console follows: inbound payloads the mapping cannot read, and
# outbound records it cannot render.
INBOUND_CASE = "mapping_error"
OUTBOUND_CASE = "outbound_mapping_error"


# -- preview -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleResult:
    """One recent payload through the published version (`before`) and the draft (`after`)."""

    sample: Sample
    before: MappedRecord | None
    after: MappedRecord | None
    outcome: str  # fixed | broken | changed | unchanged | failing | unread
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CaseResult:
    """One open mapping case: how many of the messages it holds the version reads."""

    case: ExceptionCase
    held: int
    checked: int
    mapped: int
    unread: int
    reasons: list[str]
    # Held messages whose replay (a retry's) is received and not applied yet.
    replaying: int = 0

    @property
    def fixes(self) -> bool:
        return self.held > 0 and self.checked == self.held and self.mapped == self.held

    @property
    def retried(self) -> bool:
        """Every message it holds is being replayed: retrying again would re-run nothing."""
        return self.held > 0 and self.replaying >= self.held


@dataclass(frozen=True)
class Preview:
    mapping_set: MappingSet
    baseline: MappingSet | None
    samples: list[SampleResult]
    cases: list[CaseResult]
    read_from_vendor: int = 0
    not_read: int = 0

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(result.outcome for result in self.samples)
        return {k: found.get(k, 0) for k in SAMPLE_OUTCOMES}

    @property
    def fixed_cases(self) -> list[CaseResult]:
        return [c for c in self.cases if c.fixes]

    @property
    def fixed_records(self) -> int:
        return sum(c.held for c in self.fixed_cases)

    @property
    def changed_records(self) -> list[SampleResult]:
        return [r for r in self.samples if r.outcome in ("fixed", "broken", "changed")]


SAMPLE_OUTCOMES = ("fixed", "broken", "changed", "unchanged", "failing", "unread")


def _comparable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _compare(before: MappedRecord | None, after: MappedRecord) -> tuple[str, list[Any]]:
    if before is None:
        return ("fixed" if after.ok else "failing"), []
    if not before.ok and after.ok:
        return "fixed", []
    if before.ok and not after.ok:
        return "broken", []
    if not after.ok:
        return "failing", []
    keys = sorted(set(before.fields) | set(after.fields))
    changes = [
        (k, before.fields.get(k), after.fields.get(k))
        for k in keys
        if _comparable(before.fields.get(k, MISSING)) != _comparable(after.fields.get(k, MISSING))
    ]
    return ("changed" if changes else "unchanged"), changes


def _published(mapping_set: MappingSet) -> MappingSet | None:
    """The published version of the same object, unless it is `mapping_set` itself."""
    found = MappingSet.objects.filter(
        connection_id=mapping_set.connection_id,
        object_type=mapping_set.object_type,
        status=Status.PUBLISHED,
    ).first()
    return None if found is None or found.pk == mapping_set.pk else found


def mapping_sample_compare(
    *, mapping_set: MappingSet, samples: Sequence[Sample], compiled: CompiledMapping | None = None
) -> list[SampleResult]:
    """Samples through this version and the published one (when it is another version)."""
    version = compiled or mapping_set_compile(mapping_set)
    baseline = _published(mapping_set)
    published = mapping_set_compile(baseline) if baseline is not None else None
    results = []
    for sample in samples:
        if sample.record is None:
            results.append(SampleResult(sample, None, None, "unread"))
            continue
        after = map_inbound(version, sample.record)
        before = map_inbound(published, sample.record) if published is not None else None
        outcome, changes = _compare(before, after)
        results.append(SampleResult(sample, before, after, outcome, changes))
    return results


def mapping_preview_run(
    *, mapping_set: MappingSet, last: int = SAMPLES_DEFAULT, read_vendor: bool = True
) -> Preview:
    """Run a version (typically the draft) against the `last` inbound payloads of its object
    and against the open mapping cases of its connection and object, beside the published
    version. Nothing is written. `read_vendor`: read the records that change notifications
    only name (at most FETCH_LIMIT), else count them as not read."""
    draft = mapping_set_compile(mapping_set)
    reader = VendorReader(mapping_set.connection, FETCH_LIMIT if read_vendor else 0)
    try:
        samples = recent_samples(
            connection=mapping_set.connection,
            object_type=mapping_set.object_type,
            limit=last,
            reader=reader,
        )
        results = mapping_sample_compare(mapping_set=mapping_set, samples=samples, compiled=draft)
        cases = mapping_cases_check(mapping_set=mapping_set, compiled=draft, reader=reader)
    finally:
        reader.close()
    return Preview(
        mapping_set=mapping_set,
        baseline=_published(mapping_set),
        samples=results,
        cases=cases,
        read_from_vendor=reader.read,
        not_read=reader.skipped,
    )


def open_mapping_cases(*, connection: Connection, object_type: str) -> list[ExceptionCase]:
    """The open cases of payloads this object's mapping could not read, oldest first."""
    return list(
        ExceptionCase.objects.filter(
            status=ExceptionCase.Status.OPEN,
            case_type=INBOUND_CASE,
            connection=connection,
            subject__object_type=object_type,
        ).order_by("first_seen_at", "pk")[:CASES_MAX]
    )


def mapping_cases_check(
    *,
    mapping_set: MappingSet,
    compiled: CompiledMapping | None = None,
    reader: Any = None,
) -> list[CaseResult]:
    """Each open mapping case of the version's connection and object, with how many of the
    raw messages it holds the version reads without an error. A case is fixed when it reads
    every one: its group retry then replays them and the case closes (unless a record fails a
    later check, such as a reference Concord does not know yet, which opens its own case)."""
    if compiled is None:
        compiled = mapping_set_compile(mapping_set)
    own = reader is None
    reader = reader or VendorReader(mapping_set.connection, FETCH_LIMIT)
    results = []
    try:
        for case in open_mapping_cases(
            connection=mapping_set.connection, object_type=mapping_set.object_type
        ):
            held = case.record_count
            messages = inbound_held(exception_case_id=case.pk, limit=CASE_CHECK_LIMIT)
            mapped = unread = 0
            reasons: Counter[str] = Counter()
            for message in messages:
                record, note = reader.record(message)
                if record is None:
                    unread += 1
                    reasons[f"{message.object_type} {message.external_id}: {note}"] += 1
                    continue
                result = map_inbound(compiled, record)
                if result.ok:
                    mapped += 1
                else:
                    reasons["; ".join(str(e) for e in result.errors)] += 1
            replaying = InboundMessage.objects.filter(
                replay_of__in=messages, state=InboundMessage.State.RECEIVED
            ).aggregate(n=Count("replay_of", distinct=True))["n"]
            results.append(
                CaseResult(
                    case=case,
                    held=max(held, len(messages)),
                    checked=len(messages) - unread,
                    mapped=mapped,
                    unread=unread,
                    reasons=[r for r, _ in reasons.most_common(3)],
                    replaying=replaying,
                )
            )
    finally:
        if own:
            reader.close()
    return results


@dataclass(frozen=True)
class OutboundResult:
    """One recent record rendered by the published version and by the draft."""

    label: str
    sent: Mapping[str, Any] | None
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    before_error: str
    after_error: str
    changes: list[tuple[str, Any, Any]]


def _render(compiled: CompiledMapping | None, canonical: Mapping[str, Any]) -> tuple[Any, str]:
    if compiled is None:
        return None, "no published version"
    try:
        return map_outbound(compiled, canonical), ""
    except OutboundMappingError as exc:
        return None, "; ".join(str(e) for e in exc.errors[:5])


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{index}"))
        return out
    return {prefix: value}


def mapping_outbound_preview(
    *, mapping_set: MappingSet, records: Sequence[tuple[str, Mapping[str, Any], Any]]
) -> list[OutboundResult]:
    """Render recent canonical records (label, canonical dict, the payload last sent for it)
    through the published version and this one, with the vendor fields that differ."""
    draft = mapping_set_compile(mapping_set)
    baseline = _published(mapping_set)
    published = mapping_set_compile(baseline) if baseline is not None else None
    results = []
    for label, canonical, sent in records:
        before, before_error = _render(published, canonical)
        after, after_error = _render(draft, canonical)
        flat_before, flat_after = _flatten(before or {}), _flatten(after or {})
        changes = [
            (path, flat_before.get(path), flat_after.get(path))
            for path in sorted(set(flat_before) | set(flat_after))
            if flat_before.get(path, MISSING) != flat_after.get(path, MISSING)
        ]
        results.append(
            OutboundResult(label, sent, before, after, before_error, after_error, changes)
        )
    return results
