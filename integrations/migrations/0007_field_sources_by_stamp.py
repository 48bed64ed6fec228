"""field_sources moves from one object per field to fields grouped by the stamp that set them:
{"date": {"system": "psa", "connection": 3, "version": 17}} -> {"psa:3:17": ["date"]}."""

from typing import Any

from django.db import migrations


def _grouped(sources: dict[str, Any]) -> dict[str, list[str]] | None:
    if not sources or not all(isinstance(v, dict) for v in sources.values()):
        return None  # empty, or already grouped
    grouped: dict[str, list[str]] = {}
    for field, stamp in sources.items():
        key = f"{stamp.get('system', '')}:{stamp.get('connection') or ''}:{stamp.get('version', 0)}"
        grouped.setdefault(key, []).append(field)
    return {key: sorted(names) for key, names in grouped.items()}


def forwards(apps: Any, schema_editor: Any) -> None:
    for model in apps.get_app_config("integrations").get_models():
        if not any(f.name == "field_sources" for f in model._meta.get_fields()):
            continue
        for record in (
            model.objects.exclude(field_sources={}).only("pk", "field_sources").iterator()
        ):
            grouped = _grouped(record.field_sources)
            if grouped is not None:
                model.objects.filter(pk=record.pk).update(field_sources=grouped)


class Migration(migrations.Migration):
    dependencies = [("integrations", "0006_lean_write_indexes")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
