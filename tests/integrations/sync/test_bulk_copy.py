"""copy_insert_values in PostgreSQL's binary format (``binary=True``, the poll's raw records,
canonical rows and cross-references) stores what the text format stores, value for value:
text with tabs, newlines, backslashes and quotes, unicode, nulls, decimals, dates, timestamps,
JSON (nested, unicode, integers past 64 bits), a TextChoices member, and values of another
class than their column's, converted by their field. ``ids=False`` draws no ids: the table's
identity numbers the rows."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection as db
from django.forms.models import model_to_dict
from django.utils import timezone

from integrations.models import ApprovalState, CrossReference, InboundMessage, TimeEntry
from integrations.sync.bulk import _binary_types, copy_insert_values
from tests.factories import ProjectFactory, ResourceFactory, make_connection

pytestmark = pytest.mark.django_db

AWKWARD = ["plain", "tab\there", "new\nline", "back\\slash", "quote \"q\" 's'", "ünïcødé ✓", ""]


def _stored(model: Any, pks: list[int]) -> list[dict[str, Any]]:
    rows = []
    for record in model.objects.filter(pk__in=pks).order_by("pk"):
        values = model_to_dict(record)
        values.pop("id")
        rows.append(values)
    return rows


def _time_entries(binary: bool) -> list[dict[str, Any]]:
    project, resource = ProjectFactory.create(), ResourceFactory.create()
    rows: list[dict[str, Any]] = []
    for n, text in enumerate(AWKWARD):
        rows.append(
            {
                "project_id": project.pk,
                "resource_id": resource.pk,
                "date": date(2026, 10, 1) + timedelta(days=n),
                "hours": Decimal("7.25") + n,
                "billable": bool(n % 2),
                "task": text,
                "notes": text * 3,
                "approval_state": ApprovalState.APPROVED,
                "source_system": "psa",
                "source_version": 1_796_148_160_000_000 + n,
                "field_sources": {f"psa:1:{n}": ["hours", text], "nested": {"ü": [1, None]}},
            }
        )
    # Values of another class than their column's: the field converts them.
    rows[0]["hours"] = 3  # an int for a decimal column: sent as it is
    rows[1]["project_id"] = str(project.pk)  # text for a bigint column
    rows[2]["date"] = datetime(2026, 10, 9, 10, 30, tzinfo=timezone.get_current_timezone())
    pks = copy_insert_values(TimeEntry, rows, binary=binary)
    return _stored(TimeEntry, pks)


def test_binary_is_used_for_the_poll_tables() -> None:
    for model in (TimeEntry, InboundMessage, CrossReference):
        assert _binary_types(model._meta.concrete_fields) is not None, model


def test_time_entries_store_the_same_in_binary_as_in_text() -> None:
    if db.vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    text, binary = _time_entries(binary=False), _time_entries(binary=True)
    for row in (*text, *binary):
        row.pop("project")
        row.pop("resource")
    assert [r["date"] for r in binary][2] == date(2026, 10, 9)
    assert binary[0]["hours"] == Decimal("3.00")
    assert binary == text


def test_raw_records_without_ids_store_every_payload_exactly() -> None:
    connection = make_connection()
    now = timezone.now()
    payloads = [
        {"id": n, "notes": text, "big": 2**70, "list": [text, {"x": None}], "f": 1.5}
        for n, text in enumerate(AWKWARD)
    ]
    rows = [
        {
            "connection_id": connection.pk,
            "source": InboundMessage.Source.POLL,  # a TextChoices member
            "object_type": "time_entries",
            "external_id": str(n),
            "dedupe_key": f"poll:time_entries:{n}:1",
            "source_version": 1,
            "payload": payload,
            "state": InboundMessage.State.APPLIED,
            "error": text,
            "received_at": now,
            "processed_at": None,
        }
        for n, (payload, text) in enumerate(zip(payloads, AWKWARD, strict=True))
    ]
    assert copy_insert_values(InboundMessage, rows, ids=False, binary=True) == []
    stored = list(InboundMessage.objects.filter(connection=connection).order_by("pk"))
    assert [m.payload for m in stored] == payloads
    assert [m.error for m in stored] == AWKWARD
    assert {m.source for m in stored} == {"poll"}
    assert all(m.processed_at is None and m.received_at >= now for m in stored)
    assert len({m.pk for m in stored}) == len(AWKWARD)  # numbered by the table
