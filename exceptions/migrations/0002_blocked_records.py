"""Blocked records move out of ExceptionCase.records (one JSON list rewritten on every join) into
their own table, and the case keeps running totals. The JSON list is copied here and dropped in
0003, each in its own transaction."""

from decimal import Decimal

import django.db.models.deletion
from django.db import migrations, models

# Cases per read and rows per INSERT: bounded memory whatever the table holds.
BATCH = 2_000


def _cents(value: object) -> Decimal:
    return Decimal(str(value or "0")).quantize(Decimal("0.01"))


def records_to_rows(apps, schema_editor):  # type: ignore[no-untyped-def]
    ExceptionCase = apps.get_model("exceptions", "ExceptionCase")
    BlockedRecord = apps.get_model("exceptions", "BlockedRecord")
    rows = []
    cases = ExceptionCase.objects.exclude(records=[]).only("pk", "records", "hours_blocked")
    for case in cases.iterator(chunk_size=BATCH):
        seen = set()
        hours = Decimal("0")
        amounts: dict[str, Decimal] = {}
        for record in case.records or []:
            key = (str(record.get("type", "")), int(record.get("id") or 0))
            if key in seen:
                continue
            seen.add(key)
            amount, currency = _cents(record.get("amount")), str(record.get("currency") or "")
            hours += _cents(record.get("hours"))
            if amount and currency:
                amounts[currency] = amounts.get(currency, Decimal("0")) + amount
            rows.append(
                BlockedRecord(
                    case_id=case.pk,
                    record_type=key[0],
                    record_id=key[1],
                    label=str(record.get("label", ""))[:255],
                    amount=amount,
                    currency=currency[:3],
                    hours=_cents(record.get("hours")),
                )
            )
        amounts = {c: a for c, a in amounts.items() if a}
        single = len(amounts) == 1
        ExceptionCase.objects.filter(pk=case.pk).update(
            record_count=len(seen),
            hours_blocked=hours,
            amounts={c: str(a) for c, a in sorted(amounts.items())},
            currency=next(iter(amounts)) if single else "",
            amount_blocked=next(iter(amounts.values())) if single else Decimal("0"),
        )
        if len(rows) >= BATCH:
            BlockedRecord.objects.bulk_create(rows, batch_size=BATCH)
            rows = []
    BlockedRecord.objects.bulk_create(rows, batch_size=BATCH)


def rows_to_records(apps, schema_editor):  # type: ignore[no-untyped-def]
    ExceptionCase = apps.get_model("exceptions", "ExceptionCase")
    BlockedRecord = apps.get_model("exceptions", "BlockedRecord")
    by_case: dict[int, list[dict[str, object]]] = {}
    for row in BlockedRecord.objects.order_by("case_id", "pk").iterator(chunk_size=BATCH):
        by_case.setdefault(row.case_id, []).append(
            {
                "type": row.record_type,
                "id": row.record_id,
                "label": row.label,
                "amount": str(row.amount),
                "currency": row.currency,
                "hours": str(row.hours),
            }
        )
    for case_id, records in by_case.items():
        ExceptionCase.objects.filter(pk=case_id).update(records=records)


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="exceptioncase",
            name="amounts",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="exceptioncase",
            name="record_count",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="exceptioncase",
            name="subject",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.CreateModel(
            name="BlockedRecord",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("record_type", models.CharField(max_length=64)),
                ("record_id", models.BigIntegerField()),
                ("label", models.CharField(blank=True, max_length=255)),
                (
                    "amount",
                    models.DecimalField(decimal_places=2, default=Decimal("0"), max_digits=14),
                ),
                ("currency", models.CharField(blank=True, max_length=3)),
                (
                    "hours",
                    models.DecimalField(decimal_places=2, default=Decimal("0"), max_digits=10),
                ),
                (
                    "case",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="blocked_records",
                        to="exceptions.exceptioncase",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["record_type", "record_id"], name="blockedrecord_record")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("case", "record_type", "record_id"),
                        name="blockedrecord_once_per_case",
                    )
                ],
            },
        ),
        migrations.RunPython(records_to_rows, rows_to_records, elidable=True),
    ]
