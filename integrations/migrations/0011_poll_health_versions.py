# Polls that fail loudly and reads that finish (issue 9): a poll cursor keeps where an unfinished
# read stands and its own health (last error, failing since). And versions in one unit: every
# cross-reference's external_version becomes microseconds since the epoch, as polls write them;
# the ones a push wrote held the vendor's own stamp (Xero's "/Date(1796153857772+0000)/"), on
# which every poll of the legacy tenant's invoices failed.
#
# Depends on 0010_b (the retry-budget change, written at the same time) only to keep one leaf
# while both are in the tree; it does not need it.

from django.db import migrations, models

from integrations.timestamps import version_micros

# Rows per UPDATE: cross-references with a vendor stamp are the pushed records (invoices,
# contacts), tens of thousands at most.
BATCH = 2000


def versions_to_micros(apps, schema_editor):  # type: ignore[no-untyped-def]
    CrossReference = apps.get_model("integrations", "CrossReference")
    stamped = (
        CrossReference.objects.exclude(external_version="")
        .exclude(external_version__regex=r"^[0-9]+$")
        .only("pk", "external_version")
        .order_by("pk")
    )
    changed = []
    for xref in stamped.iterator(chunk_size=BATCH):
        try:
            micros = version_micros(xref.external_version)
        except ValueError:
            micros = 0  # a version nobody can read compares as none: the next poll applies
        xref.external_version = str(micros) if micros else ""
        changed.append(xref)
        if len(changed) == BATCH:
            CrossReference.objects.bulk_update(changed, ["external_version"])
            changed = []
    if changed:
        CrossReference.objects.bulk_update(changed, ["external_version"])


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0010_outbox_first_attempt"),
    ]

    operations = [
        migrations.AddField(
            model_name="pollcursor",
            name="resume",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="An unfinished read: the next page, the newest stamp read and the ids "
                "at it.",
            ),
        ),
        migrations.AddField(
            model_name="pollcursor",
            name="last_failure_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="pollcursor",
            name="failing_since",
            field=models.DateTimeField(
                blank=True, help_text="The first failed poll since the last success.", null=True
            ),
        ),
        migrations.AddField(
            model_name="pollcursor",
            name="last_error",
            field=models.TextField(blank=True),
        ),
        migrations.RunPython(versions_to_micros, migrations.RunPython.noop, elidable=True),
    ]
