"""Connection credentials are stored with the origins they may be sent to.

Existing connections: their stored credentials are bound to where they are sent today, the
origins of their base URL and of any ``*_url`` credential (a token URL). The rule is copied
here, not imported, so this migration keeps doing what it did when the rule changes later.
"""

from __future__ import annotations

from typing import Any

import httpx
from django.db import migrations

import integrations.models.connections


def _origin(url: str) -> str:
    try:
        parsed = httpx.URL(str(url).strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        return ""
    host = parsed.raw_host.decode("ascii").lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parsed.scheme == "https" else 80
    port = f":{parsed.port}" if parsed.port not in (None, default_port) else ""
    return f"{parsed.scheme}://{host}{port}"


def _destinations(base_url: str, credentials: dict[str, Any]) -> list[str]:
    urls = [base_url] + [
        str(value)
        for key, value in credentials.items()
        if key.endswith("_url") and isinstance(value, str) and value
    ]
    return sorted({origin for origin in map(_origin, urls) if origin})


def bind_existing(apps: Any, schema_editor: Any) -> None:
    Connection = apps.get_model("integrations", "Connection")
    bound = integrations.models.connections.BoundCredentials
    rows = Connection.objects.using(schema_editor.connection.alias)
    for connection in rows.order_by("pk"):
        credentials = dict(connection.credentials or {})
        origins = _destinations(connection.base_url, credentials)
        rows.filter(pk=connection.pk).update(credentials=bound(credentials, origins=origins))


def unbind(apps: Any, schema_editor: Any) -> None:
    """Back to the plain stored object the field before this migration reads."""
    Connection = apps.get_model("integrations", "Connection")
    bound = integrations.models.connections.BoundCredentials
    rows = Connection.objects.using(schema_editor.connection.alias)
    for connection in rows.order_by("pk"):
        rows.filter(pk=connection.pk).update(credentials=bound(dict(connection.credentials or {})))


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0015_reference_data"),
    ]

    operations = [
        migrations.AlterField(
            model_name="connection",
            name="credentials",
            field=integrations.models.connections.CredentialsField(
                blank=True,
                default=integrations.models.connections.BoundCredentials,
                editable=False,
            ),
        ),
        migrations.RunPython(bind_existing, unbind),
    ]
