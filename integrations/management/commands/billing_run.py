from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from integrations.workflows.time_to_erp import billing_run


class Command(BaseCommand):
    help = (
        "Bill approved time and expenses now: billing events, draft invoices and their outbox rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        report = billing_run(limit=options["limit"])
        self.stdout.write(
            f"considered {report.considered}, billed {report.billed} into {report.invoices} "
            f"invoices, blocked {report.blocked} (cases: {sorted(report.cases)}), "
            f"not billable {report.not_billable}"
        )
        self.stdout.write(
            f"expenses: considered {report.expenses_considered}, billed "
            f"{report.expenses_billed}, blocked {report.expenses_blocked}; drafts not yet sent "
            f"given more lines {report.drafts_extended}"
        )
