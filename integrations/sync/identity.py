"""Identity resolution: one canonical record per real thing, whichever systems it comes from.

A record arriving from a system with no cross-reference yet may be a record Concord already
holds from another system (the CRM's account, the PSA's client and the ERP's contact are one
customer). The match rules of its object (``MatchRule``, data, tried in order) decide:

- by an id one system wrote back into another (the CRM's account id or external id in the ERP
  contact's ``ContactNumber``): exact, between records of different vendors;
- by tax number, normalised with python-stdnum to (country, compact number);
- by name: the normalised name (exact), or the rapidfuzz similarity of the names without their
  legal suffix (Ltd, GmbH, Inc.), with the country when both sides know it.

A rule is certain (the record links to the existing one: its own cross-reference, no new row,
each field kept from the system that owns it, see integrations.sync.upsert) or probable (the
record is created as its own row and a possible-duplicate case shows both side by side). A
certain match is taken only when it is unambiguous and usable: one candidate, which this system
does not already know under another id, not claimed by another record of the same batch and,
for a name, with no tax number contradicting it; otherwise it counts as probable.

Match keys are kept per record and system (``MatchKey``), written with the cross-references, so
a page finds its candidates with one query per rule, not one per record.

``record_merge`` and ``record_unmerge`` join two records found to be one (moving what points at
the loser: cross-references, match keys, every foreign key of every model, blocked records of
cases, outbox rows) and take a merge back, audited, in one transaction each. The data migration
0013_identity_merge merges the certain duplicates existing databases hold, by the same code
(`duplicates_find`, `merge_rows`), on the migration's historical models.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.apps import apps as global_apps
from django.apps.registry import Apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from rapidfuzz import fuzz, process
from stdnum import get_cc_module
from stdnum.exceptions import ValidationError as NumberError
from stdnum.util import clean

from exceptions.models import ExceptionCase
from exceptions.services import Blocked, case_open_or_join, case_resolve
from integrations.mapping.canonical import BOOKKEEPING, canonical_models
from integrations.mapping.ownership import OwnershipRules, load_ownership_rules
from integrations.mapping.paths import get_path
from integrations.models import Connection, CrossReference, MatchKey, MatchRule, RecordMerge
from integrations.sync.errors import MergeRefused

Kind = MatchRule.Kind

# Name similarity compares an incoming name only with the kept names that share its first three
# letters (without legal suffix): a page of 2,000 customers against 50,000 kept names is then a
# few hundred comparisons per record, not 50,000. A misspelling in the first three letters is
# not found by this rule (the tax number and the ids still are).
BLOCK = 3
# Legal forms dropped from the end of a name before names are compared for similarity.
LEGAL_SUFFIXES = frozenset(
    {
        "ab", "ag", "as", "bv", "co", "company", "corp", "corporation", "gmbh", "inc",
        "incorporated", "kg", "limited", "llc", "llp", "lp", "ltd", "nv", "oy", "plc", "pty",
        "sa", "sarl", "sas", "se", "spa", "srl",
    }
)  # fmt: skip
# Prefixes some systems write before a VAT number that are not ISO country codes.
VAT_PREFIXES = {"EL": "GR", "UK": "GB", "XI": "GB"}
POSSIBLE_DUPLICATE = "possible_duplicate"
# The "vendor" of the keys a canonical record carries itself, when a person (or the demo firm)
# made it in Concord: the rules' sources under this name read the canonical fields. An incoming
# copy from any system matches such a record as it matches another system's copy.
CONCORD = "concord"
Actor = AbstractBaseUser | AnonymousUser | None


# -- rules and keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A MatchRule as the matcher uses it."""

    id: int
    name: str
    kind: str
    certain: bool
    threshold: int
    sources: Mapping[str, Mapping[str, tuple[str, ...]]]

    @property
    def similar(self) -> bool:
        return self.kind == Kind.NAME and self.threshold < 100


@dataclass(frozen=True)
class Key:
    """One match key of one record for one rule."""

    rule_id: int
    value: str
    country: str = ""
    block: str = ""


def match_rules_load(object_type: str) -> tuple[Rule, ...]:
    """Selector: the enabled match rules of an object, in order (one query; none for an object
    without rules, such as time entries, which then skip identity resolution altogether)."""
    return rules_from_rows(
        MatchRule.objects.filter(object_type=object_type, enabled=True).values(
            "id", "name", "kind", "certainty", "threshold", "sources"
        )
    )


def rules_from_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[Rule, ...]:
    rules = []
    for row in rows:
        sources = {
            str(vendor): {
                str(part): tuple(str(p) for p in places) for part, places in parts.items()
            }
            for vendor, parts in (row["sources"] or {}).items()
            if isinstance(parts, Mapping)
        }
        rules.append(
            Rule(
                id=row["id"],
                name=row["name"],
                kind=row["kind"],
                certain=row["certainty"] == MatchRule.Certainty.LINK,
                threshold=row["threshold"],
                sources=sources,
            )
        )
    return tuple(rules)


def _values(
    places: Iterable[str],
    external_id: str,
    fields: Mapping[str, Any],
    payload: Mapping[str, Any] | None,
) -> list[str]:
    found = []
    for place in places:
        if place == "@id":
            value: Any = external_id
        elif place.startswith("=") and "+" in place:
            # A natural key of several canonical fields ("=role+currency+contract"): joined, an
            # empty field kept as empty, so a default rate card (no contract) never matches a
            # contract's.
            value = "|".join(str(fields.get(name) or "") for name in place[1:].split("+"))
        elif place.startswith("="):
            value = fields.get(place[1:])
        elif payload is not None:
            value = get_path(payload, place, None)
        else:
            value = None
        if value is not None and not isinstance(value, dict | list):
            text = str(value).strip()
            if text:
                found.append(text)
    return found


def match_keys(
    rules: Sequence[Rule],
    *,
    vendor: str,
    external_id: str,
    fields: Mapping[str, Any],
    payload: Mapping[str, Any] | None,
) -> list[Key]:
    """The match keys a vendor's record carries for these rules (pure)."""
    keys: list[Key] = []
    for rule in rules:
        parts = rule.sources.get(vendor)
        if not parts:
            continue
        where = (external_id, fields, payload)
        values = _values(parts.get("value", ()), *where)
        countries = [c for c in map(country_code, _values(parts.get("country", ()), *where)) if c]
        country = countries[0] if countries else ""
        seen: set[tuple[str, str]] = set()
        for raw in values:
            if rule.kind == Kind.REFERENCE:
                value, where_from = raw[:255], ""
            elif rule.kind == Kind.TAX_NUMBER:
                value, where_from = tax_key(raw, country)
            else:
                value = name_key(raw) if rule.threshold >= 100 else core_name(raw)
                where_from = country
            if not value or (value, where_from) in seen:
                continue
            seen.add((value, where_from))
            block = value[:BLOCK] if rule.similar else ""
            keys.append(Key(rule.id, value[:255], where_from, block))
    return keys


def country_code(value: str) -> str:
    """An ISO 3166 alpha-2 code, or "" when the value is not one (a country's name is left to
    the mappings' value maps: the ERP's contact country arrives as a code)."""
    text = value.strip().upper()
    text = VAT_PREFIXES.get(text, text)
    return text if len(text) == 2 and text.isalpha() else ""


@lru_cache(maxsize=256)
def _vat_module(country: str) -> Any:
    """python-stdnum's VAT module of a country (None: it has none)."""
    try:
        return get_cc_module(country.lower(), "vat")
    except ImportError:
        return None


def tax_key(number: str, country: str = "") -> tuple[str, str]:
    """(compact number, country) of a tax number: "GB 123 4567 89", "UK123456789" and
    "123456789" with country GB all give ("123456789", "GB"); "53-5661907" gives
    ("535661907", country). The country comes from the number's prefix, else the record's."""
    text = clean(number, " -./,:").upper().strip()
    if not text:
        return "", ""
    prefix = VAT_PREFIXES.get(text[:2], text[:2])
    module = _vat_module(prefix) if text[:2].isalpha() else None
    if module is not None:
        country, rest = prefix, text[2:]
    else:
        rest = text
        module = _vat_module(country) if country else None
    if module is not None:
        with contextlib.suppress(NumberError):  # not its format: compared as cleaned
            rest = str(module.compact(rest)).upper()
        if country and rest.startswith(country) and not rest[:2].isdigit():
            rest = rest[len(country) :]
    return rest, country


_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def name_key(name: str) -> str:
    """A name as compared exactly: no accents, case, punctuation or repeated spaces
    ("Müller & Söhne GmbH." -> "muller and sohne gmbh")."""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = _PUNCTUATION.sub(" ", text.replace("&", " and "))
    return _SPACE.sub(" ", text).strip()


def core_name(name: str) -> str:
    """The name without its legal form(s) at the end, for similarity."""
    words = name_key(name).split()
    while len(words) > 1 and words[-1] in LEGAL_SUFFIXES:
        words.pop()
    return " ".join(words)


def similarity(a: str, b: str) -> int:
    """0-100: rapidfuzz's token-sort ratio of two core names ("granit retail" and "granite
    retail": 96)."""
    return round(fuzz.token_sort_ratio(a, b))


# -- matching a batch -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    record_id: int
    rule: str
    certain: bool
    score: int = 100
    # Why a certain rule's match was not taken as certain ("" when it is).
    doubt: str = ""


@dataclass
class Resolution:
    """What identity resolution decided for a batch, by external id."""

    rules: tuple[Rule, ...] = ()
    keys: dict[str, list[Key]] = field(default_factory=dict)
    links: dict[str, Match] = field(default_factory=dict)
    probable: dict[str, Match] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    object_id: int
    score: int = 100


def _compatible(a: str, b: str) -> bool:
    return not a or not b or a == b


def identity_resolve(
    *,
    connection: Connection,
    object_type: str,
    records: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any] | None, bool]],
    rules: tuple[Rule, ...] | None = None,
) -> Resolution:
    """Match keys for every record of a batch, and for the new ones (those with `True`: no
    cross-reference yet) the existing record each is, certainly or probably. `records` are
    (external id, mapped fields, vendor payload or None, new). One query for the rules (none
    when the caller passes them: a poll loads them once for all its pages), one per rule with
    something to look up, three to check the candidates. `records` is read only when the
    object has rules."""
    if rules is None:
        rules = match_rules_load(object_type)
    resolution = Resolution(rules=rules)
    if not rules:
        return resolution
    vendor = connection.vendor
    new: list[str] = []
    for external_id, fields, payload, is_new in records:
        resolution.keys[external_id] = match_keys(
            rules, vendor=vendor, external_id=external_id, fields=fields, payload=payload
        )
        if is_new:
            new.append(external_id)
    if not new:
        return resolution
    found = _candidates(rules, vendor, {e: resolution.keys[e] for e in new}, object_type)
    everyone = {c.object_id for per_rule in found.values() for cs in per_rule.values() for c in cs}
    if not everyone:
        return resolution
    model = canonical_models()[object_type]
    # Keys of a record deleted since (by a person) lead nowhere.
    gone = everyone - set(
        model._default_manager.filter(pk__in=list(everyone)).values_list("pk", flat=True)
    )
    # Records this system already knows under another id cannot take a second one from it.
    known_here = set(
        CrossReference.objects.filter(
            connection=connection,
            content_type=ContentType.objects.get_for_model(model),
            object_id__in=list(everyone),
        ).values_list("object_id", flat=True)
    )
    tax_rules = {r.id for r in rules if r.kind == Kind.TAX_NUMBER}
    taxes: dict[int, set[tuple[str, str]]] = defaultdict(set)
    if tax_rules:
        for object_id, value, country in MatchKey.objects.filter(
            rule_id__in=tax_rules, object_id__in=list(everyone)
        ).values_list("object_id", "value", "country"):
            taxes[object_id].add((value, country))
    claimed: set[int] = set()
    for external_id in new:
        mine = {
            (k.value, k.country) for k in resolution.keys[external_id] if k.rule_id in tax_rules
        }
        link, probable = None, None
        for rule in rules:
            candidates = [
                c for c in found.get(rule.id, {}).get(external_id, []) if c.object_id not in gone
            ]
            if not candidates:
                continue
            # A record this system knows under another id is a second record in that system,
            # not this one: neither linked nor offered for a merge (which would be refused).
            usable = [c for c in candidates if c.object_id not in known_here]
            if not usable:
                continue
            best = max(usable, key=lambda c: (c.score, -c.object_id))
            doubt = ""
            if not rule.certain:
                doubt = "probable"
            elif len(candidates) > 1:
                doubt = f"{len(candidates)} records match"
            elif best.object_id in claimed:
                doubt = "another record of the same batch matched it first"
            elif rule.kind == Kind.NAME and _taxes_differ(mine, taxes.get(best.object_id)):
                doubt = "their tax numbers differ"
            match = Match(best.object_id, rule.name, not doubt, best.score, doubt)
            if not doubt:
                link = match
                break
            if probable is None:
                probable = match
        if link is not None:
            claimed.add(link.record_id)
            resolution.links[external_id] = link
        elif probable is not None:
            resolution.probable[external_id] = probable
    return resolution


def _taxes_differ(mine: set[tuple[str, str]], theirs: set[tuple[str, str]] | None) -> bool:
    if not mine or not theirs:
        return False
    return not any(
        value == other and _compatible(country, other_country)
        for value, country in mine
        for other, other_country in theirs
    )


def _candidates(
    rules: Sequence[Rule], vendor: str, keys: Mapping[str, list[Key]], object_type: str
) -> dict[int, dict[str, list[_Candidate]]]:
    """Per rule and new record: the existing records whose keys match (one query per rule)."""
    found: dict[int, dict[str, list[_Candidate]]] = {}
    for rule in rules:
        wanted: dict[str, list[Key]] = {}
        for external_id, record_keys in keys.items():
            mine = [k for k in record_keys if k.rule_id == rule.id]
            if mine:
                wanted[external_id] = mine
        if not wanted:
            continue
        rows = MatchKey.objects.filter(rule_id=rule.id, object_type=object_type)
        if rule.similar:
            blocks = {k.block for ks in wanted.values() for k in ks}
            rows = rows.filter(block__in=sorted(blocks))
        else:
            values = {k.value for ks in wanted.values() for k in ks}
            rows = rows.filter(value__in=sorted(values))
        # Kept keys by what they are looked up by: the value, or the block for similarity.
        kept: dict[str, list[tuple[int, str, str, str]]] = defaultdict(list)
        for object_id, their_vendor, value, country, block in rows.values_list(
            "object_id", "vendor", "value", "country", "block"
        ):
            kept[block if rule.similar else value].append((object_id, their_vendor, value, country))
        # For similarity, each block's kept names once as a list rapidfuzz scores in one call.
        names = {block: [row[2] for row in held] for block, held in kept.items()}
        per_record: dict[str, list[_Candidate]] = {}
        for external_id, mine in wanted.items():
            hits: dict[int, int] = {}
            for key in mine:
                held = kept.get(key.block if rule.similar else key.value, [])
                for at, score in _scored(key, held, names, rule):
                    object_id, their_vendor, _, country = held[at]
                    if not _compatible(key.country, country):
                        continue
                    if rule.kind == Kind.REFERENCE and their_vendor == vendor:
                        continue
                    hits[object_id] = max(hits.get(object_id, 0), score)
            if hits:
                per_record[external_id] = [_Candidate(o, s) for o, s in hits.items()]
        found[rule.id] = per_record
    return found


def _scored(
    key: Key,
    held: Sequence[tuple[int, str, str, str]],
    names: Mapping[str, list[str]],
    rule: Rule,
) -> Iterator[tuple[int, int]]:
    """The kept keys (by position in `held`) that `key` matches, with the score: all of them
    at 100 for an exact rule; for a similar one, those whose `similarity` reaches the rule's
    threshold, scored in one rapidfuzz call over the block (a loop of single comparisons was
    a third of a 1,200-client page: 240,000 calls). Rounded as `similarity` rounds."""
    if not held:
        return
    if not rule.similar:
        for at in range(len(held)):
            yield at, 100
        return
    for _, score, at in process.extract(
        key.value,
        names[key.block],
        scorer=fuzz.token_sort_ratio,
        score_cutoff=rule.threshold - 0.5,
        limit=None,
    ):
        rounded = round(score)
        if rounded >= rule.threshold:
            yield at, rounded


def match_keys_write(
    *,
    connection: Connection | None,
    object_type: str,
    keys: Mapping[int, Sequence[Key]],
) -> None:
    """Replace the match keys of these records (by canonical id) with `keys`: those of one
    system's copies, or with `connection` None those the canonical records carry themselves."""
    if not keys:
        return
    MatchKey.objects.filter(
        connection=connection, object_type=object_type, object_id__in=list(keys)
    ).delete()
    MatchKey.objects.bulk_create(
        [
            MatchKey(
                rule_id=k.rule_id,
                object_type=object_type,
                object_id=object_id,
                connection=connection,
                vendor=connection.vendor if connection is not None else CONCORD,
                value=k.value,
                country=k.country,
                block=k.block,
            )
            for object_id, record_keys in keys.items()
            for k in record_keys
        ],
        batch_size=1000,
    )


def match_keys_refresh(*, records: Sequence[models.Model]) -> None:
    """The match keys canonical records carry themselves (people's records, the demo firm's),
    from their own fields, replacing the ones they had: so a copy of the same customer arriving
    later from any system links to it instead of making a second row. One query for the rules
    (none more for an object without rules)."""
    if not records:
        return
    object_type = str(records[0]._meta.model_name)
    rules = match_rules_load(object_type)
    if not rules:
        return
    keys = {
        record.pk: match_keys(
            rules,
            vendor=CONCORD,
            external_id=str(record.pk),
            fields={f.name: getattr(record, f.attname) for f in record._meta.concrete_fields},
            payload=None,
        )
        for record in records
    }
    match_keys_write(connection=None, object_type=object_type, keys=keys)


# -- the possible-duplicate case ------------------------------------------------------------------


def _side(record: models.Model, xrefs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": record.pk,
        "name": str(record)[:200],
        "tax_number": str(getattr(record, "tax_number", "") or ""),
        "country": str(getattr(record, "country", "") or ""),
        "systems": [f"{name}: {external_id}" for name, external_id in xrefs],
    }


def possible_duplicates_open(
    *, connection: Connection, model: type[models.Model], pairs: Sequence[tuple[int, Match]]
) -> None:
    """Open a possible-duplicate case per (new record, probable match), both records shown side
    by side in the subject: ids, names, tax numbers, countries, systems and their ids."""
    if not pairs:
        return
    ids = {pk for pk, _ in pairs} | {m.record_id for _, m in pairs}
    records = model._default_manager.in_bulk(list(ids))
    systems: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for object_id, name, external_id in CrossReference.objects.filter(
        content_type=ContentType.objects.get_for_model(model), object_id__in=list(ids)
    ).values_list("object_id", "connection__name", "external_id"):
        systems[object_id].append((name, external_id))
    model_name = str(model._meta.model_name)
    for pk, match in pairs:
        new, old = records.get(pk), records.get(match.record_id)
        if new is None or old is None:
            continue
        why = f"rule {match.rule}" + (f", similarity {match.score}" if match.score < 100 else "")
        if match.doubt and match.doubt != "probable":
            why += f" ({match.doubt})"
        case_open_or_join(
            case_type=POSSIBLE_DUPLICATE,
            subject={
                "model": model_name,
                "record_id": pk,
                "record": str(new),
                "match_id": old.pk,
                "match": str(old),
                "connection_id": connection.pk,
                "connection": connection.name,
                "rule": match.rule,
                "score": match.score,
                "why": why,
                "records": [_side(new, systems[pk]), _side(old, systems[old.pk])],
            },
            records=[
                Blocked(record_type=model_name, record_id=old.pk, label=str(old)[:255]),
                Blocked(record_type=model_name, record_id=pk, label=str(new)[:255]),
            ],
            process="inbound",
            step="identity",
            connection_id=connection.pk,
        )


# -- merge and unmerge ----------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def _stamp_of(sources: Mapping[str, Any] | None, attname: str) -> str | None:
    for stamp, names in (sources or {}).items():
        if attname in names:
            return str(stamp)
    return None


def _restamp(sources: Mapping[str, Any] | None, moves: Mapping[str, str]) -> dict[str, list[str]]:
    """`sources` with each attname in `moves` under the stamp given ({attname: stamp})."""
    result: dict[str, list[str]] = {}
    for stamp, names in (sources or {}).items():
        kept = [n for n in names if n not in moves]
        if kept:
            result[stamp] = list(kept)
    for attname, stamp in moves.items():
        result.setdefault(stamp, [])
        result[stamp] = sorted({*result[stamp], attname})
    return result


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _label(record: models.Model) -> str:
    """How a record is named in a merge: its own words, or its name on a migration's
    historical model (which has no __str__ of its own)."""
    if type(record).__str__ is models.Model.__str__:
        return str(getattr(record, "name", "") or record)[:200]
    return str(record)[:200]


def merge_rows(
    *,
    registry: Apps,
    model: type[models.Model],
    winner: Any,
    loser: Any,
    rules: OwnershipRules,
    actor_id: int | None,
    actor_label: str,
    note: str = "",
    case_id: int | None = None,
) -> Any:
    """Merge `loser` into `winner` (both locked by the caller, inside its transaction) on the
    models of `registry` (the app registry, or a migration's historical one). Each field keeps
    the value of the system that owns it: the loser's value replaces the winner's when the
    owning system set the loser's and not the winner's, or when the winner has none. Returns
    the RecordMerge row. Raises MergeRefused, leaving nothing changed, when the two cannot be
    one (both known to one system under different ids, a unique constraint)."""
    xref_model = registry.get_model("integrations", "CrossReference")
    key_model = registry.get_model("integrations", "MatchKey")
    merge_model = registry.get_model("integrations", "RecordMerge")
    audit_model = registry.get_model("integrations", "AuditEvent")
    outbox_model = registry.get_model("integrations", "OutboxMessage")
    blocked_model = registry.get_model("exceptions", "BlockedRecord")
    content_type_model = registry.get_model("contenttypes", "ContentType")
    object_type = str(model._meta.model_name)
    if winner.pk == loser.pk:
        raise MergeRefused(f"A {object_type} cannot be merged into itself.")
    content_type = content_type_model.objects.get(app_label="integrations", model=object_type)
    both = xref_model.objects.filter(content_type=content_type, object_id__in=[winner.pk, loser.pk])
    by_connection: dict[int, set[int]] = defaultdict(set)
    for connection_id, object_id in both.values_list("connection_id", "object_id"):
        by_connection[connection_id].add(object_id)
    shared = sorted(c for c, ids in by_connection.items() if len(ids) > 1)
    if shared:
        names = ", ".join(
            registry.get_model("integrations", "Connection")
            .objects.filter(pk__in=shared)
            .values_list("name", flat=True)
        )
        raise MergeRefused(
            f"Both {object_type} records are in {names} under different ids: merge them there "
            "first, then here."
        )

    # Field values: the owner's value wins, a gap takes the other's.
    before: dict[str, Any] = {}
    moves: dict[str, str] = {}
    loser_values: dict[str, Any] = {}
    for f in model._meta.concrete_fields:
        value = getattr(loser, f.attname)
        loser_values[f.attname] = _jsonable(value)
        if f.primary_key or f.name in BOOKKEEPING:
            continue
        mine = getattr(winner, f.attname)
        if _empty(value) or value == mine:
            continue
        owner = rules.owner_of(object_type, f.name)
        their_stamp = _stamp_of(loser.field_sources, f.attname)
        my_stamp = _stamp_of(winner.field_sources, f.attname)
        owned = (
            owner is not None
            and their_stamp is not None
            and their_stamp.partition(":")[0] == owner
            and (my_stamp is None or my_stamp.partition(":")[0] != owner)
        )
        if owned or _empty(mine):
            before[f.attname] = _jsonable(mine)
            setattr(winner, f.attname, value)
            if their_stamp is not None:
                moves[f.attname] = their_stamp
    sources_before = dict(winner.field_sources or {})
    if moves:
        winner.field_sources = _restamp(winner.field_sources, moves)

    moved: dict[str, list[int]] = {}
    try:
        with transaction.atomic():
            if before:
                winner.save(update_fields=[*before, "field_sources", "updated_at"])
            loser_xrefs = xref_model.objects.filter(content_type=content_type, object_id=loser.pk)
            moved["crossreference"] = list(loser_xrefs.values_list("pk", flat=True))
            loser_xrefs.update(object_id=winner.pk)
            keys = key_model.objects.filter(object_type=object_type, object_id=loser.pk)
            moved["matchkey"] = list(keys.values_list("pk", flat=True))
            keys.update(object_id=winner.pk)
            for rel in model._meta.related_objects:
                if rel.many_to_many or rel.field is None:
                    continue
                related = rel.related_model
                assert isinstance(related, type)  # noqa: S101 - a concrete model
                rows = related._default_manager.filter(**{rel.field.attname: loser.pk})
                ids = list(rows.values_list("pk", flat=True))
                if ids:
                    moved[f"{related._meta.label_lower}.{rel.field.name}"] = ids
                    rows.update(**{rel.field.attname: winner.pk})
            holding_winner = blocked_model.objects.filter(
                record_type=object_type, record_id=winner.pk
            ).values("case_id")
            blocked = blocked_model.objects.filter(
                record_type=object_type, record_id=loser.pk
            ).exclude(case_id__in=holding_winner)
            moved["blockedrecord"] = list(blocked.values_list("pk", flat=True))
            blocked.update(record_id=winner.pk)
            outbox = outbox_model.objects.filter(content_type=content_type, object_id=loser.pk)
            moved["outboxmessage"] = list(outbox.values_list("pk", flat=True))
            outbox.update(object_id=winner.pk)
            loser_repr = _label(loser)
            loser_id = loser.pk
            loser.delete()
    except IntegrityError as exc:
        raise MergeRefused(f"The two {object_type} records cannot be one: {exc}") from exc

    merge = merge_model.objects.create(
        object_type=object_type,
        winner_id=winner.pk,
        loser_id=loser_id,
        loser_repr=loser_repr,
        loser_values=loser_values,
        winner_before={"values": before, "field_sources": sources_before},
        moved=moved,
        exception_case_id=case_id,
        note=note[:400],
        merged_by_id=actor_id,
        merged_by_label=actor_label,
    )
    changes: dict[str, Any] = {"merged": [None, loser_id], "merge": [None, merge.pk]}
    changes.update({a: [b, _jsonable(getattr(winner, a))] for a, b in before.items()})
    audit = {"actor_id": actor_id, "actor_label": actor_label, "object_type": object_type}
    audit_model.objects.create(
        **audit,
        action="update",
        object_id=str(winner.pk),
        object_repr=_label(winner),
        changes=changes,
    )
    audit_model.objects.create(
        **audit,
        action="delete",
        object_id=str(loser_id),
        object_repr=loser_repr,
        changes={"merged_into": [loser_id, winner.pk], "merge": [None, merge.pk]},
    )
    return merge


def _actor(actor: Actor) -> tuple[int | None, str]:
    user = actor if isinstance(actor, get_user_model()) else None
    return (user.pk if user else None), (user.get_username() if user else "system")


@transaction.atomic
def record_merge(
    *,
    object_type: str,
    winner_id: int,
    loser_id: int,
    actor: Actor,
    case_id: int | None = None,
    note: str = "",
) -> RecordMerge:
    """Merge canonical record `loser_id` into `winner_id` (see `merge_rows`), audited; then the
    possible-duplicate case: the one given, or every open one naming both, is resolved by it."""
    model = canonical_models().get(object_type)
    if model is None:
        raise MergeRefused(f"{object_type} is not a canonical record type.")
    rows = model._default_manager.select_for_update().in_bulk([winner_id, loser_id])
    for pk in (winner_id, loser_id):
        if pk not in rows:
            raise MergeRefused(f"There is no {object_type} {pk}.")
    actor_id, label = _actor(actor)
    loser_label = str(rows[loser_id])
    merge = merge_rows(
        registry=global_apps,
        model=model,
        winner=rows[winner_id],
        loser=rows[loser_id],
        rules=load_ownership_rules(),
        actor_id=actor_id,
        actor_label=label,
        note=note,
        case_id=case_id,
    )
    cases = set(
        ExceptionCase.objects.filter(
            case_type=POSSIBLE_DUPLICATE,
            status=ExceptionCase.Status.OPEN,
            subject__model=object_type,
            subject__record_id__in=[winner_id, loser_id],
            subject__match_id__in=[winner_id, loser_id],
        ).values_list("pk", flat=True)
    )
    if case_id is not None:
        cases.add(case_id)
    for pk in sorted(cases):
        case_resolve(
            case_id=pk,
            note=f"Merged {object_type} {loser_label} (#{loser_id}) into #{winner_id} "
            f"by {label} (merge {merge.pk}).",
        )
    return merge


@transaction.atomic
def record_unmerge(*, merge_id: int, actor: Actor) -> RecordMerge:
    """Take a merge back: the loser re-created as it was (same id), and what was moved from it
    and still points at the winner moved back; the winner's fields the merge filled return to
    their former values where nobody changed them since. Audited."""
    merge = RecordMerge.objects.select_for_update().filter(pk=merge_id).first()
    if merge is None:
        raise MergeRefused(f"There is no merge {merge_id}.")
    if merge.unmerged_at is not None:
        raise MergeRefused(f"Merge {merge_id} was already taken back.")
    model = canonical_models()[merge.object_type]
    manager = model._default_manager
    winner: Any = manager.select_for_update().filter(pk=merge.winner_id).first()
    if winner is None:
        raise MergeRefused(f"{merge.object_type} {merge.winner_id} no longer exists.")
    if manager.filter(pk=merge.loser_id).exists():
        raise MergeRefused(f"{merge.object_type} {merge.loser_id} exists again.")
    values = {}
    for f in model._meta.concrete_fields:
        if f.attname in merge.loser_values:
            values[f.attname] = f.to_python(merge.loser_values[f.attname])
    loser = model(**values)
    loser.save(force_insert=True)
    # auto_now_add stamped the re-created row; it keeps the time it was first created.
    manager.filter(pk=loser.pk).update(created_at=values["created_at"])

    moved = merge.moved
    content_type = ContentType.objects.get_for_model(model)
    CrossReference.objects.filter(
        pk__in=moved.get("crossreference", []), content_type=content_type, object_id=winner.pk
    ).update(object_id=loser.pk)
    MatchKey.objects.filter(pk__in=moved.get("matchkey", []), object_id=winner.pk).update(
        object_id=loser.pk
    )
    blocked_model = global_apps.get_model("exceptions", "BlockedRecord")
    blocked_model.objects.filter(pk__in=moved.get("blockedrecord", []), record_id=winner.pk).update(
        record_id=loser.pk
    )
    outbox_model = global_apps.get_model("integrations", "OutboxMessage")
    outbox_model.objects.filter(
        pk__in=moved.get("outboxmessage", []), content_type=content_type, object_id=winner.pk
    ).update(object_id=loser.pk)
    for label, ids in moved.items():
        if label.count(".") != 2:
            continue
        app_model, _, field_name = label.rpartition(".")
        related = global_apps.get_model(app_model)
        attname = related._meta.get_field(field_name).attname
        related._default_manager.filter(pk__in=ids, **{attname: winner.pk}).update(
            **{attname: loser.pk}
        )

    restored: dict[str, Any] = {}
    stamps: dict[str, str] = {}
    old_sources = merge.winner_before.get("field_sources", {})
    for attname, old in merge.winner_before.get("values", {}).items():
        taken = merge.loser_values.get(attname)
        if _jsonable(getattr(winner, attname)) != taken:
            continue  # changed since the merge: the newer value stands
        field_obj = next(f for f in model._meta.concrete_fields if f.attname == attname)
        restored[attname] = [taken, old]
        setattr(winner, attname, field_obj.to_python(old))
        stamp = _stamp_of(old_sources, attname)
        if stamp is not None:
            stamps[attname] = stamp
    if restored:
        sources = _restamp(winner.field_sources, stamps)
        for attname in set(restored) - set(stamps):
            for names in sources.values():
                if attname in names:
                    names.remove(attname)
        winner.field_sources = {s: n for s, n in sources.items() if n}
        winner.save(update_fields=[*restored, "field_sources", "updated_at"])

    actor_id, label = _actor(actor)
    merge.unmerged_at = timezone.now()
    merge.unmerged_by_id = actor_id
    merge.save(update_fields=["unmerged_at", "unmerged_by"])
    audit = {"actor_id": actor_id, "actor_label": label, "object_type": merge.object_type}
    audit_model = global_apps.get_model("integrations", "AuditEvent")
    audit_model.objects.create(
        **audit,
        action="create",
        object_id=str(loser.pk),
        object_repr=str(loser)[:200],
        changes={"unmerged_from": [winner.pk, None], "merge": [merge.pk, None]},
    )
    audit_model.objects.create(
        **audit,
        action="update",
        object_id=str(winner.pk),
        object_repr=str(winner)[:200],
        changes={"unmerged": [loser.pk, None], "merge": [merge.pk, None], **restored},
    )
    return merge


def record_merges_of(*, object_type: str, record_id: int) -> models.QuerySet[RecordMerge]:
    """Selector: the merges into or out of one record, newest first."""
    return RecordMerge.objects.filter(object_type=object_type).filter(
        models.Q(winner_id=record_id) | models.Q(loser_id=record_id)
    )


# -- the duplicates a database already holds ------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """One system's copy of a canonical record, with its match keys."""

    object_id: int
    connection_id: int
    vendor: str
    keys: tuple[Key, ...]


def duplicates_find(rules: Sequence[Rule], copies: Sequence[Held]) -> list[list[int]]:
    """Groups of canonical records that certain rules say are one (each group sorted), for
    records already stored. A group is left out when two of its records are known to one
    system under different ids: the system itself holds two records, a person decides."""
    certain = {r.id: r for r in rules if r.certain}
    tax_rules = {r.id for r in rules if r.kind == Kind.TAX_NUMBER}
    taxes: dict[int, set[tuple[str, str]]] = defaultdict(set)
    index: dict[tuple[int, str], list[tuple[int, str, str]]] = defaultdict(list)
    for copy in copies:
        for key in copy.keys:
            if key.rule_id in tax_rules:
                taxes[copy.object_id].add((key.value, key.country))
            if key.rule_id in certain and not certain[key.rule_id].similar:
                index[(key.rule_id, key.value)].append((copy.object_id, copy.vendor, key.country))
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for (rule_id, _value), holders in index.items():
        rule = certain[rule_id]
        for i, (a, vendor_a, country_a) in enumerate(holders):
            for b, vendor_b, country_b in holders[i + 1 :]:
                if a == b or not _compatible(country_a, country_b):
                    continue
                if rule.kind == Kind.REFERENCE and vendor_a == vendor_b:
                    continue
                if rule.kind == Kind.NAME and _taxes_differ(taxes[a], taxes[b]):
                    continue
                first, second = sorted((root(a), root(b)))
                parent[second] = first
    groups: dict[int, set[int]] = defaultdict(set)
    for x in list(parent):
        groups[root(x)].add(x)
    connections: dict[int, set[int]] = defaultdict(set)
    for copy in copies:
        connections[copy.object_id].add(copy.connection_id)
    result = []
    for members in groups.values():
        seen: set[int] = set()
        clash = False
        for member in members:
            if seen & connections[member]:
                clash = True
            seen |= connections[member]
        if len(members) > 1 and not clash:
            result.append(sorted(members))
    return sorted(result)


# The rules installed for a new database (migration 0012_identity) and by
# `match_rules_install_defaults`. What the systems really carry (sandbox/seed.py, the vendor
# specs): the CRM account's external id (External_Id__c, "CUST-00001") is the ERP contact's
# ContactNumber; provisioning writes the account's own id there, and the PSA client's and the
# ERP contact's ids into the account (PSA_Client_Id__c, ERP_Customer_Id__c). A Harvest client
# has no field for a reference: it is found by name. The CRM account's tax number
# (Tax_Number__c) is not applied (the ERP owns the field) but still identifies the customer.
DEFAULT_MATCH_RULES: tuple[dict[str, Any], ...] = (
    {
        "object_type": "customer",
        "name": "crm_account_id",
        "kind": Kind.REFERENCE,
        "certainty": MatchRule.Certainty.LINK,
        "order": 10,
        "sources": {
            "salesforce": {"value": ["@id", "External_Id__c"]},
            "xero": {"value": ["ContactNumber"]},
        },
        "note": "The CRM account's id or external id, written into the ERP contact's number.",
    },
    {
        "object_type": "customer",
        "name": "erp_contact_id",
        "kind": Kind.REFERENCE,
        "certainty": MatchRule.Certainty.LINK,
        "order": 20,
        "sources": {
            "salesforce": {"value": ["ERP_Customer_Id__c"]},
            "xero": {"value": ["@id"]},
        },
        "note": "The ERP contact's id, written into the CRM account.",
    },
    {
        "object_type": "customer",
        "name": "psa_client_id",
        "kind": Kind.REFERENCE,
        "certainty": MatchRule.Certainty.LINK,
        "order": 30,
        "sources": {
            "salesforce": {"value": ["PSA_Client_Id__c"]},
            "harvest": {"value": ["@id"]},
        },
        "note": "The PSA client's id, written into the CRM account.",
    },
    {
        "object_type": "customer",
        "name": "tax_number",
        "kind": Kind.TAX_NUMBER,
        "certainty": MatchRule.Certainty.LINK,
        "order": 40,
        "sources": {
            "salesforce": {"value": ["Tax_Number__c"]},
            "xero": {"value": ["=tax_number", "TaxNumber"], "country": ["=country"]},
            CONCORD: {"value": ["=tax_number"], "country": ["=country"]},
        },
        "note": "The tax number, normalised by python-stdnum (country and compact number).",
    },
    {
        "object_type": "customer",
        "name": "name_exact",
        "kind": Kind.NAME,
        "certainty": MatchRule.Certainty.LINK,
        "order": 50,
        "threshold": 100,
        "sources": {
            "salesforce": {"value": ["=name"]},
            "harvest": {"value": ["=name"]},
            "xero": {"value": ["=name"], "country": ["=country"]},
            CONCORD: {"value": ["=name"], "country": ["=country"]},
        },
        "note": "The same name (case, accents, punctuation aside), in the same country.",
    },
    {
        "object_type": "customer",
        "name": "name_similar",
        "kind": Kind.NAME,
        "certainty": MatchRule.Certainty.PROBABLE,
        "order": 60,
        "threshold": 90,
        "sources": {
            "salesforce": {"value": ["=name"]},
            "harvest": {"value": ["=name"]},
            "xero": {"value": ["=name"], "country": ["=country"]},
            CONCORD: {"value": ["=name"], "country": ["=country"]},
        },
        "note": "A similar name without its legal form (rapidfuzz token-sort ratio >= 90).",
    },
    {
        # Tax rates are reference data every ERP organisation lists: the same tax type code
        # from a second organisation (Xero's NONE in both tenants) or kept by hand is one rate
        # (the code is what an invoice line names), not a refused duplicate.
        "object_type": "taxrate",
        "name": "tax_type_code",
        "kind": Kind.NAME,
        "certainty": MatchRule.Certainty.LINK,
        "order": 10,
        "threshold": 100,
        "sources": {"xero": {"value": ["=code"]}, CONCORD: {"value": ["=code"]}},
        "note": "The same tax type code (what invoice lines name) from any ERP organisation.",
    },
    {
        # A rate card is identified by its role, currency and contract (the model's unique
        # constraints): the PSA's default rate for a role (x_rate_cards) and one kept in
        # Concord by hand are one rate card, not a refused duplicate.
        "object_type": "ratecard",
        "name": "role_currency_contract",
        "kind": Kind.NAME,
        "certainty": MatchRule.Certainty.LINK,
        "order": 10,
        "threshold": 100,
        "sources": {
            "harvest": {"value": ["=role+currency+contract"]},
            CONCORD: {"value": ["=role+currency+contract"]},
        },
        "note": "The same role, currency and contract (none for the firm's default rates).",
    },
)


def match_rules_install_defaults(*, registry: Apps = global_apps) -> int:
    """Create the default match rules that do not exist yet (by object and name); admins'
    edits of existing ones stand. Returns how many were created."""
    rule_model = registry.get_model("integrations", "MatchRule")
    created = 0
    for row in DEFAULT_MATCH_RULES:
        values = {k: v for k, v in row.items() if k not in ("object_type", "name")}
        _, made = rule_model.objects.get_or_create(
            object_type=row["object_type"], name=row["name"], defaults=values
        )
        created += made
    return created
