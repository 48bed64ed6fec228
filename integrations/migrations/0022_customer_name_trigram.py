"""A trigram index on customers' names for the case search's "part of a name" (`icontains`,
exceptions.selectors.case_search_q): one index probe instead of reading every customer. The
expression is the one Django's icontains compares, UPPER(name::text). PostgreSQL only; SQLite
(the embedded default) reads its few customers."""

from django.db import migrations

INDEX = "customer_name_upper_trgm"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON integrations_customer "
            "USING gin (UPPER(name::text) gin_trgm_ops)"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("integrations", "0021_reconciliation")]

    operations = [migrations.RunPython(create, drop)]
