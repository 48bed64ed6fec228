"""Seed the system-of-record table from DOMAIN.md. Admins edit the rules afterwards."""

from django.db import migrations

# (object_type, field, owner role, note); an empty field means the whole object.
RULES = [
    ("customer", "", "crm", "Accounts are commercial data from the CRM"),
    ("customer", "legal_entity", "erp", "Legal billing profile"),
    ("customer", "tax_number", "erp", "Legal billing profile"),
    ("customer", "billing_address", "erp", "Legal billing profile"),
    ("customer", "billing_email", "erp", "Legal billing profile"),
    ("customer", "country", "erp", "Legal billing profile"),
    ("contract", "", "crm", "Commercial terms"),
    ("ratecard", "", "crm", "Commercial terms: negotiated rates"),
    ("project", "", "psa", "Project plan and status"),
    ("assignment", "", "psa", "Staffing"),
    ("resource", "", "psa", "Workers and cost rates"),
    ("timeentry", "", "psa", "Time"),
    ("expense", "", "psa", "Expenses"),
    ("milestone", "", "psa", "Milestone completion"),
    ("legalentity", "", "erp", "The firm's companies"),
    ("invoice", "", "erp", "Invoices"),
    ("payment", "", "erp", "Payments"),
    ("taxrate", "", "erp", "Tax"),
    ("exchangerate", "", "erp", "Reference data used for posting"),
]


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    OwnershipRule = apps.get_model("integrations", "OwnershipRule")
    for object_type, field, owner, note in RULES:
        OwnershipRule.objects.get_or_create(
            object_type=object_type, field=field, defaults={"owner_role": owner, "note": note}
        )


def unseed(apps, schema_editor):  # type: ignore[no-untyped-def]
    OwnershipRule = apps.get_model("integrations", "OwnershipRule")
    for object_type, field, _owner, _note in RULES:
        OwnershipRule.objects.filter(object_type=object_type, field=field).delete()


class Migration(migrations.Migration):
    dependencies = [("integrations", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
