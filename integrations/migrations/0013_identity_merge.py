"""Merge the duplicates a database already holds: the same customer stored once per system
(the CRM's account, the PSA's client, the ERP's contact) before identity resolution existed.

For every object with match rules: each system's copy gets its match keys (from the latest
polled payload kept for it, and the canonical record's fields), so records arriving later find
it; then the records that CERTAIN rules say are one are merged, by the same code the merge
service uses (integrations.sync.identity.merge_rows), into the copy of the system that owns
the object (the CRM's for a customer), else the oldest. Probable matches are left alone: a
migration opens no cases. Each merge is a RecordMerge row, so `record_unmerge` can take it
back. Reversing this migration changes nothing (a no-op): the merges stay, undone one by one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db import migrations

from integrations.mapping.ownership import OwnershipRules
from integrations.sync.errors import MergeRefused
from integrations.sync.identity import (
    Held,
    duplicates_find,
    match_keys,
    merge_rows,
    rules_from_rows,
)

LABEL = "migration 0010_i_identity_merge"


def merge_duplicates(apps, schema_editor):  # type: ignore[no-untyped-def]
    rule_model = apps.get_model("integrations", "MatchRule")
    ownership = apps.get_model("integrations", "OwnershipRule")
    rules = OwnershipRules.build(
        list(ownership.objects.values_list("object_type", "field", "owner_role"))
    )
    objects = rule_model.objects.filter(enabled=True).values_list("object_type", flat=True)
    for object_type in sorted(set(objects)):
        _merge_object(apps, object_type, rules)


def _merge_object(apps, object_type: str, ownership: OwnershipRules) -> None:  # type: ignore[no-untyped-def]
    rule_model = apps.get_model("integrations", "MatchRule")
    key_model = apps.get_model("integrations", "MatchKey")
    xref_model = apps.get_model("integrations", "CrossReference")
    inbound_model = apps.get_model("integrations", "InboundMessage")
    mapping_model = apps.get_model("integrations", "MappingSet")
    content_type_model = apps.get_model("contenttypes", "ContentType")
    try:
        model = apps.get_model("integrations", object_type)
    except LookupError:
        return
    content_type = content_type_model.objects.filter(
        app_label="integrations", model=object_type
    ).first()
    if content_type is None:
        return
    rules = rules_from_rows(
        rule_model.objects.filter(object_type=object_type, enabled=True)
        .order_by("order", "id")
        .values("id", "name", "kind", "certainty", "threshold", "sources")
    )
    xrefs = list(
        xref_model.objects.filter(content_type=content_type).values_list(
            "object_id", "connection_id", "connection__vendor", "connection__role", "external_id"
        )
    )
    if not xrefs:
        return
    # The vendor objects that map to this model, per connection, and the latest payload polled
    # for each of their records.
    vendor_objects: dict[int, set[str]] = defaultdict(set)
    for connection_id, vendor_object in mapping_model.objects.filter(
        canonical_model=object_type
    ).values_list("connection_id", "object_type"):
        vendor_objects[connection_id].add(vendor_object)
    payloads: dict[tuple[int, str], Any] = {}
    for connection_id, names in vendor_objects.items():
        rows = (
            inbound_model.objects.filter(
                connection_id=connection_id, object_type__in=sorted(names), source="poll"
            )
            .order_by("id")
            .values_list("external_id", "payload")
        )
        for external_id, payload in rows.iterator(chunk_size=2000):
            payloads[(connection_id, external_id)] = payload
    records = model.objects.in_bulk([object_id for object_id, *_ in xrefs])
    names = [f.name for f in model._meta.concrete_fields if not f.is_relation]
    copies = []
    owner = ownership.owner_of(object_type, "")
    owned_by: dict[int, bool] = {}
    key_rows = []
    for object_id, connection_id, vendor, role, external_id in xrefs:
        record = records.get(object_id)
        if record is None:
            continue
        fields = {name: getattr(record, name) for name in names}
        keys = match_keys(
            rules,
            vendor=vendor,
            external_id=external_id,
            fields=fields,
            payload=payloads.get((connection_id, external_id)),
        )
        copies.append(Held(object_id, connection_id, vendor, tuple(keys)))
        owned_by[object_id] = owned_by.get(object_id, False) or role == owner
        key_rows += [
            key_model(
                rule_id=k.rule_id,
                object_type=object_type,
                object_id=object_id,
                connection_id=connection_id,
                vendor=vendor,
                value=k.value,
                country=k.country,
                block=k.block,
            )
            for k in keys
        ]
    key_model.objects.filter(object_type=object_type).delete()
    key_model.objects.bulk_create(key_rows, batch_size=1000)
    for group in duplicates_find(rules, copies):
        winner_id = next((pk for pk in group if owned_by.get(pk)), group[0])
        for loser_id in group:
            if loser_id == winner_id:
                continue
            winner = model.objects.select_for_update().get(pk=winner_id)
            loser = model.objects.select_for_update().get(pk=loser_id)
            try:
                merge_rows(
                    registry=apps,
                    model=model,
                    winner=winner,
                    loser=loser,
                    rules=ownership,
                    actor_id=None,
                    actor_label=LABEL,
                    note="Found certainly the same when identity resolution was installed.",
                )
            except MergeRefused:
                continue  # e.g. a unique constraint of a related row: left to a person


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0012_identity"),
        ("exceptions", "0003_remove_exceptioncase_records"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(merge_duplicates, migrations.RunPython.noop)]
