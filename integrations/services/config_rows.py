"""People's writes of configuration rows: ownership rules, ERP routing rules and
cross-references. Each write is validated as the model validates, and audited with its before
and after values, whether it comes from the REST API or the admin. (Connections have their own
service, integrations/services/connections.py, because of their encrypted credentials.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models, transaction
from django.forms.models import model_to_dict

from integrations.models import AuditEvent
from integrations.services.audit import audit_record, field_changes

Row = TypeVar("Row", bound=models.Model)
Actor = AbstractBaseUser | AnonymousUser | None


def _values(row: models.Model) -> dict[str, Any]:
    return model_to_dict(row, fields=[f.name for f in row._meta.concrete_fields])


@transaction.atomic
def config_row_create(*, model: type[Row], data: Mapping[str, Any], actor: Actor) -> Row:
    row = model(**data)
    row.full_clean()
    row.save()
    audit_record(
        actor=actor,
        action=AuditEvent.Action.CREATE,
        instance=row,
        changes=field_changes({}, _values(row)),
    )
    return row


@transaction.atomic
def config_row_update(*, row: Row, data: Mapping[str, Any], actor: Actor) -> Row:
    before = _values(type(row)._default_manager.get(pk=row.pk))
    for name, value in data.items():
        setattr(row, name, value)
    row.full_clean()
    row.save()
    changes = field_changes(before, _values(row))
    if changes:
        audit_record(actor=actor, action=AuditEvent.Action.UPDATE, instance=row, changes=changes)
    return row


@transaction.atomic
def config_row_delete(*, row: models.Model, actor: Actor) -> None:
    audit_record(
        actor=actor,
        action=AuditEvent.Action.DELETE,
        instance=row,
        # What was there, as [old, new] with nothing new.
        changes={name: [old, None] for name, (_, old) in field_changes({}, _values(row)).items()},
    )
    row.delete()
