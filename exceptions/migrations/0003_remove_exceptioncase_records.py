"""The JSON list of blocked records is gone: 0002 copied it into BlockedRecord."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions", "0002_blocked_records"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="exceptioncase",
            name="records",
        ),
    ]
