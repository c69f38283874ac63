"""The Date header on hostile values: parse_date and date_skew; every result pinned."""

from __future__ import annotations

import datetime

import pytest

from spamgate.core.headers import date_skew, parse_date

UTC = datetime.UTC


def _zone(hours: int, minutes: int = 0) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(hours=hours, minutes=minutes))


# --- parse_date and date_skew ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "Mon, 1 Jan 2024 10:00:00 +0200",
            datetime.datetime(2024, 1, 1, 10, tzinfo=_zone(2)),
            id="rfc5322",
        ),
        pytest.param(
            "Tue, 02 Jan 2024 03:04:05 -0530",
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=_zone(-5, -30)),
            id="negative-half-hour-zone",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 +0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="no-day-name",
        ),
        pytest.param(
            "Mon,1 Jan 2024 10:00:00 +0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="no-space-after-comma",
        ),
        pytest.param(
            "1 Jan 2024 10:00 +0100",
            datetime.datetime(2024, 1, 1, 10, tzinfo=_zone(1)),
            id="no-seconds",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 -0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="unknown-local-zone-is-utc",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00", datetime.datetime(2024, 1, 1, 10, tzinfo=UTC), id="no-zone"
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 GMT", datetime.datetime(2024, 1, 1, 10, tzinfo=UTC), id="gmt"
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 UT", datetime.datetime(2024, 1, 1, 10, tzinfo=UTC), id="ut"
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 EST",
            datetime.datetime(2024, 1, 1, 10, tzinfo=_zone(-5)),
            id="obs-zone-est",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 PDT",
            datetime.datetime(2024, 1, 1, 10, tzinfo=_zone(-7)),
            id="obs-zone-pdt",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 CEST",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="unknown-zone-name-is-utc",
        ),
        pytest.param(
            "Thu, 23 Jan 2025 11:04:48 +0300 (+03)",
            datetime.datetime(2025, 1, 23, 11, 4, 48, tzinfo=_zone(3)),
            id="zone-comment",
        ),
        pytest.param(
            "1 Jan 99 10:00:00 +0000",
            datetime.datetime(1999, 1, 1, 10, tzinfo=UTC),
            id="two-digit-year-1900s",
        ),
        pytest.param(
            "1 Jan 24 10:00:00 +0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="two-digit-year-2000s",
        ),
        pytest.param(
            "Monday, 01-Jan-24 10:00:00 GMT",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="rfc850",
        ),
        pytest.param(
            "Jan 1 2024 10:00:00 +0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="month-first",
        ),
        pytest.param(
            "1 Jan 2024 10.00.00 +0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="dotted-time",
        ),
        pytest.param(
            "Mon, 1 Jan 2024\r\n 10:00:00 +0000",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="folded",
        ),
        pytest.param(
            "31 Dec 2016 23:59:60 +0000",
            datetime.datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC),
            id="leap-second",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 +2359",
            datetime.datetime(2024, 1, 1, 10, tzinfo=_zone(23, 59)),
            id="largest-zone",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 +0000 \udcff trailing junk",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="trailing-text-ignored",
        ),
        pytest.param(
            "1 Jan 2024 10:00:00 +0000\x00",
            datetime.datetime(2024, 1, 1, 10, tzinfo=UTC),
            id="nul-spoils-zone",
        ),
        pytest.param(
            "29 Feb 2024 10:00:00 +0000",
            datetime.datetime(2024, 2, 29, 10, tzinfo=UTC),
            id="leap-day",
        ),
        pytest.param(
            "31 Dec 9999 23:59:59 +0000",
            datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
            id="last-year",
        ),
    ],
)
def test_parse_date(value: str, expected: datetime.datetime) -> None:
    parsed = parse_date(value)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("\r\n ", id="fold-only"),
        pytest.param("garbage", id="garbage"),
        pytest.param("Mon, 1 Jan", id="too-short"),
        pytest.param("1 Foo 2024 10:00:00 +0000", id="unknown-month"),
        pytest.param("29 Feb 2023 10:00:00 +0000", id="not-a-leap-year"),
        pytest.param("31 Feb 2024 10:00:00 +0000", id="31-feb"),
        pytest.param("32 Jan 2024 10:00:00 +0000", id="day-32"),
        pytest.param("0 Jan 2024 10:00:00 +0000", id="day-0"),
        pytest.param("1 Jan 99999 10:00:00 +0000", id="year-99999"),
        pytest.param("1 Jan 2024 24:00:00 +0000", id="hour-24"),
        pytest.param("1 Jan 2024 10:60:00 +0000", id="minute-60"),
        pytest.param("1 Jan 2024 10:00:61 +0000", id="second-61"),
        pytest.param("1 Jan 2024 -1:00:00 +0000", id="negative-hour"),
        pytest.param("1 Jan 2024 10:00:00 +2400", id="zone-a-day"),
        pytest.param("1 Jan 2024 10:00:00 +9999", id="zone-over-a-day"),
        pytest.param("1 Jan 99999999999999999999 10:00:00 +0000", id="year-overflows-c-int"),
        pytest.param("1 Jan 2024 10:00:00 +99999999999999999999", id="zone-overflows"),
        pytest.param("1 Jan " + "9" * 5000 + " 10:00:00 +0000", id="year-too-many-digits"),
        pytest.param("1 Jan 2024 10:00:00:00 +0000", id="four-part-time"),
        pytest.param("17 June , 2022", id="gh-95087-indexerror"),
        pytest.param("Wed, 3 Apr 2002 12.34.56.78+0800", id="bpo-45239-unboundlocalerror"),
        pytest.param("Mon, 1 Jan 2024 10:00:00 +0000 " + "x" * 1000, id="longer-than-a-line"),
    ],
)
def test_malformed_dates(value: str) -> None:
    assert parse_date(value) is None
    assert date_skew(value, datetime.datetime(2024, 1, 1, tzinfo=UTC)) is None


NOW = datetime.datetime(2024, 1, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Mon, 1 Jan 2024 10:00:00 +0000", datetime.timedelta(0), id="now"),
        pytest.param("Mon, 1 Jan 2024 12:00:00 +0200", datetime.timedelta(0), id="now-in-zone"),
        pytest.param("Mon, 1 Jan 2024 11:30:00 +0000", datetime.timedelta(hours=1.5), id="ahead"),
        pytest.param("Sun, 31 Dec 2023 10:00:00 +0000", datetime.timedelta(days=-1), id="behind"),
        pytest.param("Mon, 1 Jan 2024 10:00:00 -0500", datetime.timedelta(hours=5), id="zone-west"),
        pytest.param(
            "1 Jan 70 00:00:00 +0000", datetime.datetime(1970, 1, 1, tzinfo=UTC) - NOW, id="epoch"
        ),
        pytest.param(
            "31 Dec 9999 23:59:59 -2359",
            datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_zone(-23, -59)) - NOW,
            id="far-future",
        ),
    ],
)
def test_date_skew(value: str, expected: datetime.timedelta) -> None:
    assert date_skew(value, NOW) == expected


def test_date_skew_compares_against_a_now_in_any_zone() -> None:
    now_in_tokyo = NOW.astimezone(_zone(9))
    assert date_skew("Mon, 1 Jan 2024 10:00:00 +0000", now_in_tokyo) == datetime.timedelta(0)


def test_date_skew_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        date_skew("Mon, 1 Jan 2024 10:00:00 +0000", datetime.datetime(2024, 1, 1))
