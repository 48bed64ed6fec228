from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from integrations.mapping import transforms as t
from integrations.mapping.errors import MappingError

APPROVAL = t.ValueMapTable.build(
    "harvest_approval",
    {"unsubmitted": "submitted", "submitted": "submitted", "approved": "approved"},
    None,
)


# -- value maps --------------------------------------------------------------------------------


def test_value_map_lookup() -> None:
    assert t.map_value("approved", APPROVAL) == "approved"
    assert t.map_value("unsubmitted", APPROVAL) == "submitted"


def test_value_map_unknown_value_names_the_value_and_the_map() -> None:
    with pytest.raises(MappingError) as caught:
        t.map_value("pending", APPROVAL)
    assert str(caught.value) == (
        "value 'pending' is not in value map 'harvest_approval' and the map has no default"
    )
    assert caught.value.value == "pending"


def test_value_map_default_is_used_for_unknown_values() -> None:
    table = t.ValueMapTable.build("stage", {"Closed Won": "won"}, "open")
    assert t.map_value("Prospecting", table) == "open"
    blank_default = t.ValueMapTable.build("stage", {"Closed Won": "won"}, "")
    with pytest.raises(MappingError):
        t.map_value("Prospecting", blank_default)


def test_value_map_keys_json_booleans_as_text() -> None:
    table = t.ValueMapTable.build("active", {"true": "active", "false": "closed"}, None)
    assert t.map_value(True, table) == "active"
    assert t.map_value(False, table) == "closed"


def test_value_map_reverse_prefers_override_then_first_entry() -> None:
    table = t.ValueMapTable.build("inv", {"DELETED": "voided", "VOIDED": "voided"}, None)
    assert t.unmap_value("voided", table) == "DELETED"
    assert t.unmap_value("voided", table, {"voided": "VOIDED"}) == "VOIDED"
    with pytest.raises(MappingError, match="canonical value 'paid' has no vendor value in value"):
        t.unmap_value("paid", table)


def test_coerce() -> None:
    assert t.coerce("30", "int") == 30
    assert t.coerce("true", "bool") is True
    assert t.coerce("false", "bool") is False
    assert t.coerce("x", "str") == "x"
    with pytest.raises(MappingError, match="'thirty' is not a whole number"):
        t.coerce("thirty", "int")
    with pytest.raises(MappingError, match="'maybe' is not true or false"):
        t.coerce("maybe", "bool")


# -- dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-10-15", date(2026, 10, 15)),  # Harvest spent_date, Salesforce CloseDate
        ("/Date(1790726400000+0000)/", date(2026, 9, 30)),  # Xero Date
        ("/Date(1790726400000)/", date(2026, 9, 30)),
        ("2026-09-30T00:00:00", date(2026, 9, 30)),  # Xero DateString
        ("2026-08-28T09:00:10.000+0000", date(2026, 8, 28)),
        (date(2026, 1, 2), date(2026, 1, 2)),
    ],
)
def test_parse_date(raw: object, expected: date) -> None:
    assert t.parse_date(raw) == expected


@pytest.mark.parametrize("raw", ["31/12/2026", "2026-13-01", "", "/Date(abc)/", 20261231, None])
def test_parse_date_refuses_what_is_not_a_date(raw: object) -> None:
    with pytest.raises(MappingError, match="is not a"):
        t.parse_date(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-10-22T18:01:26Z", datetime(2026, 10, 22, 18, 1, 26, tzinfo=UTC)),  # Harvest
        (
            "2026-08-28T09:00:10.250+0000",  # Salesforce SystemModstamp
            datetime(2026, 8, 28, 9, 0, 10, 250000, tzinfo=UTC),
        ),
        ("2026-08-28T11:00:10+02:00", datetime(2026, 8, 28, 9, 0, 10, tzinfo=UTC)),
        ("/Date(1787907720000+0000)/", datetime(2026, 8, 28, 9, 2, tzinfo=UTC)),  # Xero
        ("/Date(1787907720123-0500)/", datetime(2026, 8, 28, 9, 2, 0, 123000, tzinfo=UTC)),
        ("2026-09-30T00:00:00", datetime(2026, 9, 30, tzinfo=UTC)),  # naive = UTC
    ],
)
def test_parse_datetime(raw: str, expected: datetime) -> None:
    parsed = t.parse_datetime(raw)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_parse_datetime_error_message() -> None:
    with pytest.raises(MappingError) as caught:
        t.parse_datetime("yesterday")
    assert str(caught.value) == (
        "'yesterday' is not a date and time (expected ISO 8601 or /Date(ms+0000)/)"
    )


def test_pre_epoch_xero_dates() -> None:
    assert t.parse_date("/Date(-86400000+0000)/") == date(1969, 12, 31)


def test_to_microseconds_for_source_versions() -> None:
    assert t.to_microseconds("/Date(1787907720000+0000)/") == 1787907720000 * 1000
    assert t.to_microseconds("2026-08-28T09:00:10.000+0000") == 1787907610 * 1_000_000
    assert t.to_microseconds("2026-08-28T09:00:10.000001Z") == 1787907610 * 1_000_000 + 1
    assert t.to_microseconds(42) == 42


def test_format_date_and_datetime_for_each_vendor() -> None:
    assert t.format_date(date(2026, 9, 30)) == "2026-09-30"
    assert t.format_date(date(2026, 9, 30), "xero") == "/Date(1790726400000+0000)/"
    moment = datetime(2026, 8, 28, 9, 0, 10, 250000, tzinfo=UTC)
    assert t.format_datetime(moment) == "2026-08-28T09:00:10.250000Z"
    assert t.format_datetime(moment, "salesforce") == "2026-08-28T09:00:10.250+0000"
    assert t.format_datetime(moment, "xero") == "/Date(1787907610250+0000)/"
    for fmt in ("iso", "salesforce", "xero"):
        assert t.parse_datetime(t.format_datetime(moment, fmt)) == moment


# -- money -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (21500.0, Decimal("21500.0")),
        (0.1, Decimal("0.1")),  # str(float), never the binary expansion
        (190, Decimal("190")),
        ("1234.50", Decimal("1234.50")),
        (" 7.5 ", Decimal("7.5")),
        (Decimal("3.333"), Decimal("3.333")),
    ],
)
def test_parse_money(raw: object, expected: Decimal) -> None:
    amount = t.parse_money(raw)
    assert amount == expected
    assert str(amount) == str(expected)


def test_parse_money_rounds_half_up_to_places() -> None:
    assert t.parse_money(0.125, 2) == Decimal("0.13")
    assert t.parse_money("2.675", 2) == Decimal("2.68")  # float arithmetic would give 2.67
    assert str(t.parse_money(8.0, 2)) == "8.00"


@pytest.mark.parametrize("raw", ["12,50", "EUR 10", "", "NaN", "Infinity", True, None, [1]])
def test_parse_money_refuses_non_amounts(raw: object) -> None:
    with pytest.raises(MappingError, match="not a"):
        t.parse_money(raw)


def test_format_money() -> None:
    assert t.format_money(Decimal("21500.00")) == 21500
    assert t.format_money(Decimal("7.50")) == 7.5
    assert t.format_money(Decimal("7.50"), "string") == "7.50"


# -- default and concatenation -----------------------------------------------------------------


def test_default_and_concat() -> None:
    assert t.with_default(None, "") == ""
    assert t.with_default("", "USD") == "USD"
    assert t.with_default("GBP", "USD") == "GBP"
    assert t.concat(["Jonas", None, "", "Jensen"]) == "Jonas Jensen"
    assert t.concat(["1 Main St", "London"], "\n") == "1 Main St\nLondon"
