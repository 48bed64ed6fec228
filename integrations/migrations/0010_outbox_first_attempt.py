# The outbox's retry budget is a time window from a row's first attempt
# (integrations/sync/outbox.py). Nullable, no default: on PostgreSQL a catalogue-only change,
# whatever the table holds; rows already retrying start their window at their next claim.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0009_outbox_error_class"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="first_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
