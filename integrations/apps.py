from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(**kwargs: Any) -> None:
    from integrations.roles import roles_sync

    roles_sync()


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        from integrations import (
            lookups,  # noqa: F401 - registers field__any
            workflows,  # noqa: F401 - registers the steps after deliveries
        )

        # Groups and their permissions follow integrations/roles.py after every migrate.
        # post_migrate fires once per app, after that app's permissions exist; the sync is
        # idempotent and cheap, so running it each time is simpler than guessing the last app.
        post_migrate.connect(_sync_roles, dispatch_uid="concord.roles_sync")
