import itertools
from datetime import date, datetime, timedelta

import pytest
from dateutil import tz as dttz

from backfill.errors import InputError
from backfill.windows import window_spec

UTC = dttz.UTC


def labels(spec):
    return [(w.start.isoformat()[:16], w.end.isoformat()[:16]) for w in spec]


def test_monthly_example_from_the_issue_clips_first_and_last():
    spec = window_spec("2024-01-15", "2024-03-10", "monthly")
    assert labels(spec) == [
        ("2024-01-15T00:00", "2024-02-01T00:00"),
        ("2024-02-01T00:00", "2024-03-01T00:00"),
        ("2024-03-01T00:00", "2024-03-11T00:00"),
    ]


def test_month_ends_and_leap_day():
    spec = window_spec("2024-01-31", "2024-03-01", "monthly")
    assert labels(spec) == [
        ("2024-01-31T00:00", "2024-02-01T00:00"),
        ("2024-02-01T00:00", "2024-03-01T00:00"),  # 29 days: 2024 is a leap year
        ("2024-03-01T00:00", "2024-03-02T00:00"),
    ]
    days = window_spec("2024-02-28", "2024-03-01", "daily")
    assert [w.start.day for w in days] == [28, 29, 1]
    assert window_spec("2023-02-28", "2023-03-01", "daily").count == 2  # no Feb 29 in 2023


def test_daily_windows_cover_the_range_without_gaps():
    spec = window_spec("2024-01-01", "2024-12-31", "daily")
    assert spec.count == 366
    windows = list(spec)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert windows[0].start == datetime(2024, 1, 1, tzinfo=UTC)
    assert windows[-1].end == datetime(2025, 1, 1, tzinfo=UTC)


def test_weekly_windows_are_iso_weeks_across_a_year_boundary():
    spec = window_spec("2024-12-25", "2025-01-08", "weekly")
    assert labels(spec) == [
        ("2024-12-25T00:00", "2024-12-30T00:00"),  # partial: Wednesday to Monday
        ("2024-12-30T00:00", "2025-01-06T00:00"),  # the ISO week that spans the new year
        ("2025-01-06T00:00", "2025-01-09T00:00"),  # partial last week, end day included
    ]
    assert all(w.start.weekday() == 0 for w in list(spec)[1:])


def test_hourly_and_datetime_bounds_are_exclusive_at_the_end():
    spec = window_spec("2024-01-01T22:30:00", "2024-01-02T01:00:00", "hourly")
    assert labels(spec) == [
        ("2024-01-01T22:30", "2024-01-01T23:00"),
        ("2024-01-01T23:00", "2024-01-02T00:00"),
        ("2024-01-02T00:00", "2024-01-02T01:00"),
    ]


def test_dates_and_datetimes_objects_are_accepted():
    spec = window_spec(date(2024, 1, 1), datetime(2024, 1, 3, tzinfo=UTC), "daily")
    assert spec.count == 2
    offset = window_spec("2024-01-01T00:00:00+02:00", "2024-01-01T03:00:00+02:00", "hourly")
    assert offset.window(0).start == datetime(2023, 12, 31, 22, tzinfo=UTC)


def test_daily_windows_in_a_dst_zone_follow_local_midnight():
    spring = window_spec("2024-03-30", "2024-04-01", "daily", tz="Europe/Paris")
    lengths = [(w.end - w.start) for w in spring]
    assert lengths == [timedelta(hours=24), timedelta(hours=23), timedelta(hours=24)]
    paris = dttz.gettz("Europe/Paris")
    assert all(w.start.astimezone(paris).hour == 0 for w in spring)
    autumn = window_spec("2024-10-27", "2024-10-27", "daily", tz="Europe/Paris")
    assert [(w.end - w.start) for w in autumn] == [timedelta(hours=25)]


def test_hourly_windows_across_dst_have_no_gap_or_double():
    spring = window_spec("2024-03-31T00:00", "2024-03-31T05:00", "hourly", tz="Europe/Paris")
    assert spring.count == 4  # 02:00-03:00 local does not exist that night
    autumn = window_spec("2024-10-27T00:00", "2024-10-27T05:00", "hourly", tz="Europe/Paris")
    assert autumn.count == 6  # 02:00-03:00 local happens twice
    for spec in (spring, autumn):
        ws = list(spec)
        assert all(w.end - w.start == timedelta(hours=1) for w in ws)
        assert all(a.end == b.start for a, b in itertools.pairwise(ws))


def test_monthly_in_a_tz_starts_at_local_midnight_of_the_first():
    spec = window_spec("2024-01-01", "2024-03-31", "monthly", tz="America/New_York")
    ny = dttz.gettz("America/New_York")
    assert [(w.start.astimezone(ny).day, w.start.astimezone(ny).hour) for w in spec] == [(1, 0)] * 3
    assert spec.window(2).start == datetime(2024, 3, 1, 5, tzinfo=UTC)  # EST is UTC-5


def test_long_ranges_are_counted_without_walking_them():
    spec = window_spec("2014-01-01", "2023-12-31", "daily")
    assert spec.count == 3652
    assert spec.window(3651).end == datetime(2024, 1, 1, tzinfo=UTC)
    assert window_spec("2000-01-01", "2023-12-31", "hourly").count == 210_384


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("2024-01-01", "2024-01-31", "fortnightly"), {}, "batch: unknown batch size 'fortnightly'"),
        (("2024-01-01", "2024-01-31", "daily"), {"tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
        (("2024-13-01", "2024-01-31", "daily"), {}, "start: cannot read '2024-13-01'"),
        (("2024-01-01", "yesterday", "daily"), {}, "end: cannot read 'yesterday'"),
        (("2024-02-01", "2024-01-31", "daily"), {}, "start (2024-02-01) is after end (2024-01-31)"),
        (("2024-01-01T05:00", "2024-01-01T05:00", "hourly"), {}, "the range is empty"),
        (("2024-01-01", "2024-12-31", "hourly"), {"max_windows": 1000}, "makes 8784 hourly windows, more than the cap"),
        ((20240101, "2024-01-31", "daily"), {}, "start: expected a date or an ISO 8601 string, got int"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(args, kwargs, message):
    with pytest.raises(InputError) as err:
        window_spec(*args, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ("2024-03-31T02:30", r"^start: 2024-03-31T02:30 does not exist in Europe/Paris \(the clocks jump forward"),
        ("2024-10-27T02:30", r"^start: 2024-10-27T02:30 happens twice in Europe/Paris \(the clocks go back"),
    ],
)
def test_a_naive_datetime_must_name_one_instant_in_its_zone(start, message):
    with pytest.raises(InputError, match=message):
        window_spec(start, "2024-11-30", "hourly", tz="Europe/Paris")
    # With an offset it is one instant, and accepted.
    spec = window_spec("2024-10-27T02:30+01:00", "2024-10-28", "hourly", tz="Europe/Paris")
    assert spec.start == datetime(2024, 10, 27, 1, 30, tzinfo=dttz.UTC)
