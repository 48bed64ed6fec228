"""The partial index behind the totals' read of the cases blocking several currencies
(exceptions.selectors.case_totals): currency "" and amounts not empty, about 2 cases in 100."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions", "0005_q_seed_queues"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="exceptioncase",
            index=models.Index(
                condition=models.Q(("currency", ""), models.Q(("amounts", {}), _negated=True)),
                fields=["status", "queue"],
                name="case_mixed_currency",
            ),
        ),
    ]
