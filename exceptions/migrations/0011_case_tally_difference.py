"""The tally trigger writes one row of the difference for a join or a clear (exceptions/
tally_sql.py): the function is replaced, the triggers stay."""

from django.db import migrations

from exceptions import tally_sql


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(tally_sql.INSTALL)


class Migration(migrations.Migration):
    dependencies = [("exceptions", "0010_sla_index_totals")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
