"""Raw records keep their payload as ``json`` text, not ``jsonb`` (models/sync.py
``RawJSONField``): they are written in bulk and read back whole, never queried inside, and
parsing each into jsonb as it was stored cost PostgreSQL more than the rest of the COPY."""

from django.db import migrations

import integrations.models.sync


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0030_billingevent_hot_status"),
    ]

    operations = [
        migrations.AlterField(
            model_name="inboundmessage",
            name="payload",
            field=integrations.models.sync.RawJSONField(),
        ),
    ]
