"""The engine's bulk-written rows without foreign-key checks: a raw record's connection, a
cross-reference's connection and content type (the note above InboundMessage in
integrations/models/sync.py says why, and what still holds)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("integrations", "0031_inbound_payload_json"),
    ]

    operations = [
        migrations.AlterField(
            model_name="crossreference",
            name="connection",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="cross_references",
                to="integrations.connection",
            ),
        ),
        migrations.AlterField(
            model_name="crossreference",
            name="content_type",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                to="contenttypes.contenttype",
            ),
        ),
        migrations.AlterField(
            model_name="inboundmessage",
            name="connection",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="inbound",
                to="integrations.connection",
            ),
        ),
    ]
