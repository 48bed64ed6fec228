"""RouteSwitch: a legal entity's ERP route moved from one connection to another from an
effective time on, recorded by an audited action so the work already under way finishes on the
connection it started on (integrations/services/route_switches.py).

Invoice.erp_connection: the ERP an invoice was made for. Invoice numbers become unique per
legal entity and ERP (two ERPs of one entity each issue their own INV-00007); invoices without
one (all existing rows) are checked together as before (NULLS NOT DISTINCT)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0023_exp_contract_add_to_open_draft"),
    ]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="erp_connection",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="integrations.connection",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="invoice",
            name="invoice_unique_entity_number",
        ),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.UniqueConstraint(
                condition=models.Q(("number", ""), _negated=True),
                fields=("legal_entity", "erp_connection", "number"),
                name="invoice_unique_entity_number",
                nulls_distinct=False,
            ),
        ),
        migrations.CreateModel(
            name="RouteSwitch",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "role",
                    models.CharField(
                        choices=[("crm", "CRM"), ("psa", "PSA"), ("erp", "ERP")],
                        default="erp",
                        max_length=8,
                    ),
                ),
                (
                    "effective_at",
                    models.DateTimeField(
                        help_text="New work goes to the new connection from then."
                    ),
                ),
                (
                    "applied_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="When the route was changed (empty: not yet due).",
                        null=True,
                    ),
                ),
                ("note", models.CharField(blank=True, max_length=200)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "from_connection",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="integrations.connection",
                    ),
                ),
                (
                    "legal_entity",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="route_switches",
                        to="integrations.legalentity",
                    ),
                ),
                (
                    "to_connection",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="integrations.connection",
                    ),
                ),
            ],
            options={
                "ordering": ["-effective_at", "-pk"],
                "indexes": [
                    models.Index(
                        fields=["role", "legal_entity", "effective_at"],
                        name="routeswitch_entity_effective",
                    ),
                    models.Index(
                        condition=models.Q(("applied_at__isnull", True)),
                        fields=["effective_at"],
                        name="routeswitch_due",
                    ),
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            ("from_connection", models.F("to_connection")), _negated=True
                        ),
                        name="routeswitch_moves_somewhere",
                    )
                ],
            },
        ),
    ]
