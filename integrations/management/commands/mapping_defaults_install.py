from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from integrations.mapping.services import mapping_defaults_install, mapping_defaults_upgrade
from integrations.models import Connection


class Command(BaseCommand):
    help = (
        "Publish each connection's vendor default mappings where it has none, and bring published "
        "ones up to the current defaults (a new version with the rows they lack: e.g. the Xero "
        "Invoices mapping's outbound rows). Rows admins added or edited are kept; an object with "
        "an open draft is skipped. Safe to run again: it then publishes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--connection", type=int, action="append", help="connection id (default: all)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        connections = Connection.objects.order_by("pk")
        if options["connection"]:
            connections = connections.filter(pk__in=options["connection"])
        for connection in connections:
            installed = mapping_defaults_install(connection=connection)
            upgraded = mapping_defaults_upgrade(connection=connection)
            changed = [f"{m.object_type} v{m.version}" for m in [*installed, *upgraded]]
            self.stdout.write(f"{connection.name}: {', '.join(changed) or 'up to date'}")
