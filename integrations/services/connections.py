"""Writes to connections. Credentials are merged, encrypted, bound to where they may be sent,
and never logged.

**A change of destination needs the credentials entered again.** The stored credentials are
bound to the origins (scheme, host, port) they were entered for: the base URL's and any
``*_url`` credential's, such as a ``token_url`` (integrations/models/connections.py). A change
that would send them to an origin outside that binding (a new base URL host, a new token URL)
is refused unless the same change gives every stored credential again, or removes it (null):
the person then holds the secrets for the new host already, and nothing entered for the old
host can be read by pointing the connection elsewhere. A path change on the same origin
(``/v2`` to ``/v3``) needs nothing.

Refusing was chosen over clearing the credentials silently: clearing would turn a typo fix of
a URL into an outage noticed only on the next failed call, with a save that looked fine (a
webhook secret would go with it). Refusing says in words which keys to enter again, the same
400 in the API and form error in the admin; clearing stays one explicit step away (every key
set to null in the same change). An accepted change is audited with the old and new origins
and whether the credentials were entered again or cleared, never their values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import transaction

from integrations.models import VENDOR_DEFAULT_RATE_PER_MINUTE, VENDOR_ROLES, AuditEvent, Connection
from integrations.models.connections import (
    BoundCredentials,
    credential_destinations,
    url_origin,
)
from integrations.services.audit import audit_record, field_changes
from integrations.services.schedules import connection_schedule_ensure

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


def _merged(stored: Mapping[str, Any], given: Mapping[str, str | None] | None) -> dict[str, Any]:
    merged = dict(stored)
    for key, value in (given or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _bound_origins(connection: Connection) -> tuple[str, ...]:
    """Where the stored credentials may go now: their binding (before the migration that binds
    every row has run, the destinations the row names)."""
    bound = connection.credential_origins
    if bound is None:
        return credential_destinations(connection.base_url, connection.credentials)
    return bound


def connection_credentials_check(
    *,
    connection: Connection,
    base_url: str | None = None,
    credentials: Mapping[str, str | None] | None = None,
) -> None:
    """Refuse a change that would send the stored credentials to an origin they were not
    entered for, unless it gives each of them again (or removes it). ``base_url`` and
    ``credentials`` are the change (None: unchanged). Raises ``ValidationError`` naming the
    field, the new origins and the keys to enter again; the admin form calls it too."""
    stored = dict(connection.credentials or {})
    if not stored:
        return  # nothing held that could be sent elsewhere
    new_base = connection.base_url if base_url is None else base_url
    after = credential_destinations(new_base, _merged(stored, credentials))
    bound = _bound_origins(connection)
    added = [origin for origin in after if origin not in bound]
    if not added:
        return
    not_given = sorted(key for key in stored if key not in (credentials or {}))
    if not not_given:
        return
    # Name the field that points elsewhere: the base URL, else a credential URL.
    field = "base_url" if url_origin(new_base) in added else "credentials"
    logger.warning(
        "connection %s: change refused, it would send the stored credentials to %s",
        connection.pk,
        ", ".join(added),
    )
    raise ValidationError(
        {
            field: (
                f"This change would send the stored credentials to {', '.join(added)}, "
                f"which they were not entered for (they were entered for "
                f"{', '.join(bound) or 'no address'}). Enter them again in the same change: "
                f"{', '.join(not_given)} (or remove them with null)."
            )
        }
    )


def _origins_audit(
    *,
    before: tuple[str, ...],
    after: tuple[str, ...],
    keys_before: list[str],
    keys_after: list[str],
    given: Mapping[str, str | None],
) -> dict[str, Any]:
    """What an audit row says when the credentials' destinations change: the old and new
    origins, and whether the credentials were entered again or cleared (names, never values)."""
    if before == after or not (keys_before or keys_after):
        return {}
    held = f"held for {', '.join(before)}" if keys_before else "none held"
    if not keys_after:
        outcome = "credentials cleared"
    else:
        entered = sorted(k for k, v in given.items() if v is not None)
        again = "entered again" if keys_before else "entered"
        outcome = f"{again} for {', '.join(after)}: {', '.join(entered)}"
    return {"credential_origins": [list(before), list(after)], "credentials": [held, outcome]}


@transaction.atomic
def connection_create(
    *,
    credentials: dict[str, str] | None = None,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    **fields: Any,
) -> Connection:
    settings = {k: v for k, v in fields.items() if k in _EDITABLE}
    if "rate_limit_per_minute" not in settings:  # the vendor's published limit
        default = VENDOR_DEFAULT_RATE_PER_MINUTE.get(str(settings.get("vendor", "")))
        if default is not None:
            settings["rate_limit_per_minute"] = default
    connection = Connection(**settings)
    connection.credentials = BoundCredentials(credentials)
    _check_vendor_role(connection)
    connection.full_clean()
    connection.bind_credentials()  # entered now, for the destinations given now
    connection.save()
    changes: dict[str, Any] = field_changes({}, settings)
    # Only the names of the secrets are audited, never their values.
    changes["credential_keys"] = [[], connection.credential_keys]
    if connection.credentials:
        changes["credential_origins"] = [[], list(connection.credential_origins or ())]
    audit_record(actor=actor, action=AuditEvent.Action.CREATE, instance=connection, changes=changes)
    # Its own polling schedule (integrations/services/schedules.py), in the same transaction.
    connection_schedule_ensure(connection=connection, actor=actor)
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
    """Update settings; `credentials` is merged key by key (a None value removes that key).
    A change that sends the stored credentials to a new origin must give them again (see the
    module's docstring); the credentials are then bound to the new origins."""
    settings = {k: v for k, v in fields.items() if k in _EDITABLE}
    connection_credentials_check(
        connection=connection, base_url=settings.get("base_url"), credentials=credentials
    )
    before = {name: getattr(connection, name) for name in settings}
    keys_before = connection.credential_keys
    origins_before = _bound_origins(connection) if keys_before else ()
    for name, value in settings.items():
        setattr(connection, name, value)
    connection.credentials = BoundCredentials(_merged(connection.credentials, credentials))
    _check_vendor_role(connection)
    connection.full_clean()
    # The check above let through only destinations the credentials were bound to, or ones
    # they were entered again for: bound to where they go now (narrower, if a URL was dropped).
    connection.bind_credentials()
    connection.save()
    changes: dict[str, Any] = field_changes(before, settings)
    if credentials:
        # Which secrets were replaced is worth knowing; what they were is not ours to keep.
        changes["credentials_replaced"] = sorted(k for k, v in credentials.items() if v is not None)
        changes["credential_keys"] = [keys_before, connection.credential_keys]
    changes.update(
        _origins_audit(
            before=origins_before,
            after=tuple(connection.credential_origins or ()) if connection.credentials else (),
            keys_before=keys_before,
            keys_after=connection.credential_keys,
            given=credentials or {},
        )
    )
    if changes:
        audit_record(
            actor=actor, action=AuditEvent.Action.UPDATE, instance=connection, changes=changes
        )
    # Kept: made again if it went missing (a connection enabled again must be polled), and
    # named after the connection; its interval and pause stay as a person set them.
    connection_schedule_ensure(connection=connection, actor=actor)
    logger.info(
        "connection %s updated, credential keys now: %s",
        connection.pk,
        ", ".join(connection.credential_keys) or "none",
    )
    return connection
