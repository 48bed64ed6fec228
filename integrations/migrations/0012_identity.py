"""Identity resolution: match rules per object (seeded with the customer's defaults), the match
keys kept per record and system, and the merges (integrations/sync/identity.py)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from integrations.sync.identity import match_rules_install_defaults


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    match_rules_install_defaults(registry=apps)


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions", "0003_remove_exceptioncase_records"),
        ("integrations", "0011_poll_health_versions"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="MatchRule",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "object_type",
                    models.CharField(
                        help_text="Canonical model name, e.g. customer.", max_length=64
                    ),
                ),
                ("name", models.SlugField(max_length=64)),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("reference", "Id written back by another system"),
                            ("tax_number", "Tax number"),
                            ("name", "Name"),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "certainty",
                    models.CharField(
                        choices=[
                            ("link", "Certain: link to the existing record"),
                            ("probable", "Probable: open a possible-duplicate case"),
                        ],
                        max_length=16,
                    ),
                ),
                ("order", models.PositiveSmallIntegerField(default=0)),
                (
                    "sources",
                    models.JSONField(default=dict, help_text="Vendor -> {part: [places]}."),
                ),
                (
                    "threshold",
                    models.PositiveSmallIntegerField(
                        default=100,
                        help_text="Name rules: the similarity (0-100) at or above which names match.",
                    ),
                ),
                ("enabled", models.BooleanField(default=True)),
                ("note", models.CharField(blank=True, max_length=200)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["object_type", "order", "id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("object_type", "name"), name="matchrule_unique_name"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("threshold__gte", 50), ("threshold__lte", 100)),
                        name="matchrule_threshold_range",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="MatchKey",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("object_type", models.CharField(max_length=64)),
                ("object_id", models.BigIntegerField()),
                ("vendor", models.CharField(blank=True, max_length=16)),
                ("value", models.CharField(max_length=255)),
                ("country", models.CharField(blank=True, max_length=2)),
                ("block", models.CharField(blank=True, max_length=8)),
                (
                    "connection",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="integrations.connection",
                    ),
                ),
                (
                    "rule",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="keys",
                        to="integrations.matchrule",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["rule", "value"], name="matchkey_rule_value"),
                    models.Index(fields=["rule", "block"], name="matchkey_rule_block"),
                    models.Index(fields=["object_type", "object_id"], name="matchkey_record"),
                ],
            },
        ),
        migrations.CreateModel(
            name="RecordMerge",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("object_type", models.CharField(max_length=64)),
                ("winner_id", models.BigIntegerField()),
                ("loser_id", models.BigIntegerField()),
                ("loser_repr", models.CharField(max_length=200)),
                ("loser_values", models.JSONField(default=dict)),
                ("winner_before", models.JSONField(default=dict)),
                ("moved", models.JSONField(default=dict)),
                ("note", models.CharField(blank=True, max_length=400)),
                ("merged_at", models.DateTimeField(auto_now_add=True)),
                ("merged_by_label", models.CharField(max_length=150)),
                ("unmerged_at", models.DateTimeField(blank=True, null=True)),
                (
                    "exception_case",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="exceptions.exceptioncase",
                    ),
                ),
                (
                    "merged_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "unmerged_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-merged_at", "-id"],
                "indexes": [
                    models.Index(fields=["object_type", "winner_id"], name="recordmerge_winner")
                ],
            },
        ),
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
