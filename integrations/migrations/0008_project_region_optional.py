"""A project's region may be blank: a PSA project (Harvest) has none until PMO sets it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0007_field_sources_by_stamp"),
    ]

    operations = [
        migrations.AlterField(
            model_name="project",
            name="region",
            field=models.CharField(
                blank=True,
                choices=[("americas", "Americas"), ("emea", "EMEA"), ("apac", "APAC")],
                max_length=16,
            ),
        ),
    ]
