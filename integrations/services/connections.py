"""Writes to connections. Credentials are merged, encrypted, and never logged."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import transaction

from integrations.models import VENDOR_ROLES, AuditEvent, Connection
from integrations.services.audit import audit_record, field_changes

logger = logging.getLogger(__name__)

_EDITABLE = (
    "name",
    "role",
    "vendor",
    "base_url",
    "rate_limit_per_minute",
    "max_concurrency",
    "enabled",
)


def _check_vendor_role(connection: Connection) -> None:
    expected = VENDOR_ROLES.get(connection.vendor)
    if expected != connection.role:
        raise ValidationError(
            {
                "role": f"A {connection.vendor} connection plays the {expected} role, "
                f"not {connection.role}."
            }
        )


@transaction.atomic
def connection_create(
    *,
    credentials: dict[str, str] | None = None,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    **fields: Any,
) -> Connection:
    settings = {k: v for k, v in fields.items() if k in _EDITABLE}
    connection = Connection(**settings)
    connection.credentials = dict(credentials or {})
    _check_vendor_role(connection)
    connection.full_clean()
    connection.save()
    changes: dict[str, Any] = field_changes({}, settings)
    # Only the names of the secrets are audited, never their values.
    changes["credential_keys"] = [[], connection.credential_keys]
    audit_record(actor=actor, action=AuditEvent.Action.CREATE, instance=connection, changes=changes)
    logger.info(
        "connection %s created (%s %s), %d credential(s) stored",
        connection.pk,
        connection.vendor,
        connection.role,
        len(connection.credentials),
    )
    return connection


@transaction.atomic
def connection_update(
    *,
    connection: Connection,
    credentials: dict[str, str | None] | None = None,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    **fields: Any,
) -> Connection:
    """Update settings; `credentials` is merged key by key (a None value removes that key)."""
    settings = {k: v for k, v in fields.items() if k in _EDITABLE}
    before = {name: getattr(connection, name) for name in settings}
    keys_before = connection.credential_keys
    for name, value in settings.items():
        setattr(connection, name, value)
    if credentials:
        merged = dict(connection.credentials)
        for key, value in credentials.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        connection.credentials = merged
    _check_vendor_role(connection)
    connection.full_clean()
    connection.save()
    changes: dict[str, Any] = field_changes(before, settings)
    if credentials:
        # Which secrets were replaced is worth knowing; what they were is not ours to keep.
        changes["credentials_replaced"] = sorted(k for k, v in credentials.items() if v is not None)
        changes["credential_keys"] = [keys_before, connection.credential_keys]
    if changes:
        audit_record(
            actor=actor, action=AuditEvent.Action.UPDATE, instance=connection, changes=changes
        )
    logger.info(
        "connection %s updated, credential keys now: %s",
        connection.pk,
        ", ".join(connection.credential_keys) or "none",
    )
    return connection
