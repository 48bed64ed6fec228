"""field_sources: which system, connection and version last set each field of a record."""

from __future__ import annotations

from integrations.models import Resource
from integrations.models.base import FieldSource, with_sources


def test_fields_move_to_the_stamp_that_set_them_last() -> None:
    psa = FieldSource("psa", 3, 17)
    crm = FieldSource("crm", 1, 40)
    sources = with_sources(None, ["name", "role", "email"], psa)
    assert sources == {"psa:3:17": ["email", "name", "role"]}

    sources = with_sources(sources, ["email"], crm)
    assert sources == {"psa:3:17": ["name", "role"], "crm:1:40": ["email"]}

    # A newer PSA version takes both remaining fields: the old stamp, now empty, goes.
    sources = with_sources(sources, ["name", "role"], FieldSource("psa", 3, 18))
    assert sources == {"crm:1:40": ["email"], "psa:3:18": ["name", "role"]}


def test_a_record_says_who_set_a_field() -> None:
    record = Resource(field_sources={"crm:1:40": ["email"], "psa:3:18": ["name"]})
    assert record.source_of("email") == FieldSource("crm", 1, 40)
    assert record.source_of("name") == FieldSource("psa", 3, 18)
    assert record.source_of("role") is None
    assert FieldSource.parse("erp::5") == FieldSource("erp", None, 5)
