from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from integrations.management.demo import demo_data_seed, demo_users_reset


class Command(BaseCommand):
    help = "Seed the demo firm and reset the demo users' passwords (printed). Never in production."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sandbox-url",
            default=f"http://127.0.0.1:{os.environ.get('SANDBOX_PORT', '8100')}",
            help="Where the vendor sandbox listens; the demo connections point there.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = demo_data_seed(sandbox_url=options["sandbox_url"])
        self.stdout.write(
            f"Demo firm: {counts['projects']} projects, {counts['time_entries']} time entries."
        )
        for username, password in demo_users_reset().items():
            self.stdout.write(f"  {username:<18} {password}")
