"""Writes to canonical records made by people (API, pages). The sync engine has its own path."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction

from integrations.models import AuditEvent, CanonicalRecord
from integrations.services.audit import audit_record, field_changes

R = TypeVar("R", bound=CanonicalRecord)
Actor = AbstractBaseUser | AnonymousUser | None


@transaction.atomic
def record_create(*, model: type[R], data: dict[str, Any], actor: Actor) -> R:
    """Create a record after checking every model constraint, and audit it."""
    record = model(**data)
    # full_clean checks the database constraints too, so a violation is a readable
    # ValidationError naming the field, not an IntegrityError.
    record.full_clean()
    record.save()
    audit_record(
        actor=actor,
        action=AuditEvent.Action.CREATE,
        instance=record,
        changes=field_changes({}, data),
    )
    return record


@transaction.atomic
def record_update(*, record: R, data: dict[str, Any], actor: Actor) -> R:
    before = {name: getattr(record, name) for name in data}
    for name, value in data.items():
        setattr(record, name, value)
    record.full_clean()
    record.save()
    changes = field_changes(before, data)
    if changes:
        audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=record, changes=changes)
    return record


@transaction.atomic
def record_delete(*, record: CanonicalRecord, actor: Actor) -> None:
    audit_record(actor=actor, action=AuditEvent.Action.DELETE, instance=record)
    record.delete()
