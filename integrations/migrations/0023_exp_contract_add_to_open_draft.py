"""Contract.add_to_open_draft: finance's choice that a billing run adds a contract's new lines
(time and expenses) to its unsent draft invoice of the month instead of opening a new one
(integrations/workflows/time_to_erp.py). False for every existing contract, in the database
too, so set-based inserts that do not name it still work."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0022_customer_name_trigram"),
    ]

    operations = [
        migrations.AddField(
            model_name="contract",
            name="add_to_open_draft",
            field=models.BooleanField(
                db_default=False,
                default=False,
                help_text="Bill new approved time and expenses onto this contract's unsent draft invoice of the same currency, legal entity and month instead of a new invoice.",
            ),
        ),
    ]
