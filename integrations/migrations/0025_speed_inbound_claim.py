"""Inbound messages carry a claim (until when a batch task holds them), so two batch tasks of
one connection never read and apply the same messages (integrations/sync/inbound.py)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0024_erpmig_route_switch"),
    ]

    operations = [
        migrations.AddField(
            model_name="inboundmessage",
            name="claimed_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
