"""Configure Concord for the demo firm of a running vendor sandbox, and reset the demo users.

`make run` (run_portal) does this itself; this command is for a portal run by hand against a
sandbox started with ``python -m sandbox`` (which seeds the demo firm by default). No business
record is made: they arrive by sync (integrations/management/demo.py).
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from integrations.management.demo import demo_firm_setup, demo_users_reset


class Command(BaseCommand):
    help = (
        "Configure the demo firm's connections, mappings, legal entities, routes and webhooks "
        "against a running sandbox, and reset the demo users' passwords (printed). Never in "
        "production."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sandbox-url",
            default=f"http://127.0.0.1:{os.environ.get('SANDBOX_PORT', '8100')}",
            help="Where the vendor sandbox listens; the demo connections point there.",
        )
        parser.add_argument(
            "--portal-url",
            default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",
            help="Where this portal's webhook receiver listens, for the sandbox's webhooks.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        firm = demo_firm_setup(sandbox_url=options["sandbox_url"], portal_url=options["portal_url"])
        self.stdout.write(
            f"Demo firm: {len(firm.connections)} connections, {firm.entities} legal entities, "
            f"{firm.webhooks} webhook subscriptions; its records arrive by sync."
        )
        for username, password in demo_users_reset().items():
            self.stdout.write(f"  {username:<18} {password}")
