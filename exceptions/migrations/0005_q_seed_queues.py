"""The four standard work queues (codes = exceptions.models.Queue, members = the users of the
matching role group), the SLA per priority as it was in the catalogue, a default alert
threshold, the root-cause group of the open cases, and on PostgreSQL a trigger that refuses
UPDATE and DELETE of the audit trail."""

from datetime import timedelta
from decimal import Decimal

from django.db import migrations

from exceptions.services import case_group_key

# code, name, role group (integrations/roles.py; roles_sync creates the same groups by name)
QUEUES = [
    ("finance", "Finance", "Finance"),
    ("pmo", "PMO", "PMO"),
    ("sales_ops", "Sales ops", "Sales ops"),
    ("integration_admin", "Integration admins", "Integration admin"),
]
# priority, resolve within, due soon within: the catalogue's SLA_BY_PRIORITY of issue 9, with a
# warning window of about a quarter of it (P1 4 h -> 1 h ... P4 14 days -> 2 days).
SLAS = [
    (1, timedelta(hours=4), timedelta(hours=1)),
    (2, timedelta(days=1), timedelta(hours=4)),
    (3, timedelta(days=3), timedelta(hours=12)),
    (4, timedelta(days=14), timedelta(days=2)),
]
# A new case blocking 10,000 or more in its currency is announced to its queue; per-process
# rows (and per-currency ones) are added by the integration admins.
DEFAULT_THRESHOLD = Decimal("10000.00")

TRIGGER = """
CREATE OR REPLACE FUNCTION exceptions_caseevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the case audit trail is append-only: % refused', TG_OP;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER exceptions_caseevent_append_only
    BEFORE UPDATE OR DELETE ON exceptions_caseevent
    FOR EACH ROW EXECUTE FUNCTION exceptions_caseevent_append_only();
"""
DROP_TRIGGER = """
DROP TRIGGER IF EXISTS exceptions_caseevent_append_only ON exceptions_caseevent;
DROP FUNCTION IF EXISTS exceptions_caseevent_append_only();
"""


def seed(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    WorkQueue = apps.get_model("exceptions", "WorkQueue")
    SlaPolicy = apps.get_model("exceptions", "SlaPolicy")
    AlertThreshold = apps.get_model("exceptions", "AlertThreshold")
    for code, name, role in QUEUES:
        queue, _ = WorkQueue.objects.get_or_create(code=code, defaults={"name": name})
        group, _ = Group.objects.get_or_create(name=role)
        queue.groups.add(group)
    for priority, within, soon in SLAS:
        SlaPolicy.objects.get_or_create(
            priority=priority, defaults={"resolve_within": within, "due_soon_within": soon}
        )
    AlertThreshold.objects.get_or_create(
        process="", currency="", defaults={"amount": DEFAULT_THRESHOLD}
    )


def group_open_cases(apps, schema_editor):
    ExceptionCase = apps.get_model("exceptions", "ExceptionCase")
    batch = []
    for case in ExceptionCase.objects.filter(status="open", group_key="").iterator():
        try:
            case.group_key = case_group_key(
                case_type=case.case_type,
                process=case.process,
                step=case.step,
                subject=case.subject,
            )
        except KeyError:  # a type no longer in the catalogue: it stays a group of its own
            continue
        batch.append(case)
        if len(batch) == 1000:
            ExceptionCase.objects.bulk_update(batch, ["group_key"])
            batch = []
    ExceptionCase.objects.bulk_update(batch, ["group_key"])


def trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGER, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TRIGGER, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("exceptions", "0004_q_work_queues"),
    ]

    operations = [
        migrations.RunPython(seed, migrations.RunPython.noop),
        migrations.RunPython(group_open_cases, migrations.RunPython.noop),
        migrations.RunPython(trigger, drop_trigger),
    ]
