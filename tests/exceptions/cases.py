"""Builders for the exception-queue tests: cases opened through the one path, and users by role."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User

from exceptions.models import ExceptionCase
from exceptions.services import Blocked, case_open_or_join
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS
from tests.factories import UserFactory

_ids = itertools.count(1)


def entries(
    count: int, amount: str = "100", currency: str = "EUR", hours: str = "1"
) -> list[Blocked]:
    """`count` blocked time entries with fresh ids."""
    return [
        Blocked(
            record_type="timeentry",
            record_id=next(_ids) + 1_000_000,
            label="TE entry",
            amount=Decimal(amount),
            currency=currency,
            hours=Decimal(hours),
        )
        for _ in range(count)
    ]


def finance_case(
    about: str | None = None,
    *,
    records: list[Blocked] | None = None,
    complaint: str = "TaxNumber is required",
    **kwargs: Any,
) -> ExceptionCase:
    """A vendor_validation case (Finance's queue): one per `about`."""
    about = about or f"customer {next(_ids)}"
    return case_open_or_join(
        case_type="vendor_validation",
        subject={"vendor": "Xero", "noun": "invoice", "about": about, "complaint": complaint},
        records=records if records is not None else entries(1),
        process="time_to_erp",
        step="post_invoice",
        **kwargs,
    )


def pmo_case(
    project_id: int | None = None, *, records: list[Blocked] | None = None, **kwargs: Any
) -> ExceptionCase:
    """A time_on_inactive_project case (PMO's queue): one per project id."""
    project_id = project_id if project_id is not None else next(_ids) + 1_000_000
    return case_open_or_join(
        case_type="time_on_inactive_project",
        subject={"project_id": project_id, "project": f"P-{project_id} Apollo", "status": "closed"},
        records=records if records is not None else entries(1),
        process="time_to_erp",
        step="validate",
        **kwargs,
    )


def mapping_case(connection_id: int, object_type: str, reason: str) -> ExceptionCase:
    """A mapping_error case (integration admins'): its group is its connection + object type."""
    return case_open_or_join(
        case_type="mapping_error",
        subject={
            "connection_id": connection_id,
            "connection": f"conn {connection_id}",
            "object_type": object_type,
            "reason": reason,
        },
        records=[Blocked(record_type="inboundmessage", record_id=next(_ids) + 1_000_000)],
        process="inbound",
        step="mapping",
    )


def user(role: str = "", **fields: Any) -> User:
    return UserFactory.create(role=role, **fields)


def finance_user(**fields: Any) -> User:
    return user(FINANCE, **fields)


def pmo_user(**fields: Any) -> User:
    return user(PMO, **fields)


def sales_user(**fields: Any) -> User:
    return user(SALES_OPS, **fields)


def admin_user(**fields: Any) -> User:
    return user(INTEGRATION_ADMIN, **fields)


def fresh(case: ExceptionCase) -> ExceptionCase:
    return ExceptionCase.objects.get(pk=case.pk)
