"""integrations.timestamps: the one reader and writer of the vendors' time stamps, on values of
the shapes the vendors send (Xero's examples are from ../shared/specs/xero-accounting.yaml)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from integrations import timestamps as ts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Xero UpdatedDateUTC, with and without the offset part.
        ("/Date(1796153857772+0000)/", datetime(2026, 12, 1, 19, 37, 37, 772000, tzinfo=UTC)),
        ("/Date(1550793549320+0000)/", datetime(2019, 2, 21, 23, 59, 9, 320000, tzinfo=UTC)),
        ("/Date(1550793549392)/", datetime(2019, 2, 21, 23, 59, 9, 392000, tzinfo=UTC)),
        # The offset names the zone the value was entered in; the number is UTC milliseconds.
        ("/Date(1511827200000+1300)/", datetime(2017, 11, 28, tzinfo=UTC)),
        ("/Date(1511827200000-0500)/", datetime(2017, 11, 28, tzinfo=UTC)),
        ("/Date(-86400000+0000)/", datetime(1969, 12, 31, tzinfo=UTC)),
        # Xero DateString: UTC without a zone.
        ("2019-02-22T00:00:00", datetime(2019, 2, 22, tzinfo=UTC)),
        # Harvest updated_at.
        ("2017-06-26T21:52:18Z", datetime(2017, 6, 26, 21, 52, 18, tzinfo=UTC)),
        # Salesforce SystemModstamp.
        ("2026-08-28T09:00:10.000+0000", datetime(2026, 8, 28, 9, 0, 10, tzinfo=UTC)),
        ("2026-08-28T11:00:10.5+02:00", datetime(2026, 8, 28, 9, 0, 10, 500000, tzinfo=UTC)),
        (" 2026-08-28T09:00:10.000001Z ", datetime(2026, 8, 28, 9, 0, 10, 1, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_reads_every_vendor_shape_as_utc(raw: str, expected: datetime) -> None:
    parsed = ts.parse_timestamp(raw)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "raw", ["yesterday", "/Date(abc+0000)/", "/Date(1550793549320+00)/", "/Date(155)", ""]
)
def test_parse_timestamp_names_what_it_cannot_read(raw: str) -> None:
    with pytest.raises(ValueError, match="is not a"):
        ts.parse_timestamp(raw)


def test_micros_are_exact_for_millisecond_stamps() -> None:
    # 1796153857.772 is not exact as a float; the microseconds must still be 772000.
    assert ts.micros_of("/Date(1796153857772+0000)/") == 1796153857772 * 1000
    assert ts.micros_of("2026-08-28T09:00:10.000001Z") == 1787907610 * 1_000_000 + 1
    assert ts.micros_of(None) == 0
    assert ts.micros_of("") == 0


def test_micros_round_trip_through_a_since() -> None:
    micros = ts.micros_of("2026-08-28T09:00:10.250001Z")
    assert ts.micros_to_iso(micros) == "2026-08-28T09:00:10.250001Z"
    assert ts.micros_of(ts.micros_to_iso(micros)) == micros
    assert ts.from_micros(micros) == datetime(2026, 8, 28, 9, 0, 10, 250001, tzinfo=UTC)
    # A naive datetime counts as UTC, an aware one by its own offset.
    assert ts.to_micros(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000
    plus_two = timezone(timedelta(hours=2))
    assert ts.to_micros(datetime(1970, 1, 1, 2, 0, 1, tzinfo=plus_two)) == 1_000_000


def test_formats_back_in_each_vendor_shape() -> None:
    moment = datetime(2026, 8, 28, 9, 0, 10, 250000, tzinfo=UTC)
    assert ts.format_iso(moment) == "2026-08-28T09:00:10.250000Z"
    assert ts.format_salesforce(moment) == "2026-08-28T09:00:10.250+0000"
    assert ts.format_xero(moment) == "/Date(1787907610250+0000)/"
    for text in (ts.format_iso(moment), ts.format_salesforce(moment), ts.format_xero(moment)):
        assert ts.parse_timestamp(text) == moment
    spec_example = "/Date(1550793549320+0000)/"
    assert ts.format_xero(ts.parse_timestamp(spec_example)) == spec_example


@pytest.mark.parametrize(
    ("stored", "micros"),
    [
        # Concord's own unit, as digits (cross-references, poll cursors).
        ("1796153857772000", 1796153857772000),
        (1796153857772000, 1796153857772000),
        # What a push stored before versions had one unit: Xero's UpdatedDateUTC, with and
        # without the offset part; Salesforce's SystemModstamp; Harvest's updated_at.
        ("/Date(1796153857772+0000)/", 1796153857772000),
        ("/Date(1796153857772)/", 1796153857772000),
        ("2026-08-28T09:00:10.000+0000", 1787907610000000),
        ("2017-06-26T21:52:18Z", 1498513938000000),
        ("", 0),
        (None, 0),
    ],
)
def test_version_micros_reads_a_version_stored_in_any_unit(
    stored: str | int | None, micros: int
) -> None:
    assert ts.version_micros(stored) == micros


def test_version_micros_names_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="is not a"):
        ts.version_micros("v3")


def test_if_modified_since_is_an_rfc3339_date_time_with_its_offset() -> None:
    micros = ts.micros_of("2026-09-06T09:11:00.250999Z")
    # Milliseconds (Xero's precision), rounded down so a watermark never passes a record.
    assert ts.format_rfc3339(micros) == "2026-09-06T09:11:00.250Z"
    assert ts.parse_timestamp(ts.format_rfc3339(micros)).utcoffset() == timedelta(0)
