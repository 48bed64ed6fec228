from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(**kwargs: Any) -> None:
    from integrations.roles import roles_sync

    roles_sync()


def _ensure_schedules(*, apps: Any = None, **kwargs: Any) -> None:
    from integrations.services.schedules import connection_schedules_ensure

    try:
        if apps is not None:
            apps.get_model("django_celery_beat", "PeriodicTask")
            apps.get_model("integrations", "Connection")
    except LookupError:  # migrated back to before either table existed
        return
    connection_schedules_ensure()


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
        # Each connection's own polling schedule (integrations/services/schedules.py), for
        # connections made before those existed; once per migrate, after every table exists.
        post_migrate.connect(
            _ensure_schedules, sender=self, dispatch_uid="concord.connection_schedules_ensure"
        )
