from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_queues(*, apps: Any = None, **kwargs: Any) -> None:
    from exceptions.services import work_queues_ensure

    try:
        if apps is not None:
            apps.get_model("exceptions", "AlertThreshold")
    except LookupError:  # migrated back to before the queues existed
        return
    work_queues_ensure()


class ExceptionsConfig(AppConfig):
    name = "exceptions"
    verbose_name = "Exception cases"

    def ready(self) -> None:
        # The retry handlers (exceptions/retry.py) register when the modules that own the work
        # are imported: outbox rows (sync.outbox), inbound messages (sync.inbound), billing
        # (the workflows). Imported here so every process (web, worker, shell, tests) has all
        # of them before anyone retries a case.
        from integrations import workflows  # noqa: F401
        from integrations.sync import inbound, outbox  # noqa: F401

        # The standard queues, SLA and alert threshold exist after every migrate (and after a
        # test database is flushed); migration 0005 seeded them first.
        post_migrate.connect(_ensure_queues, sender=self, dispatch_uid="concord.queues_ensure")
