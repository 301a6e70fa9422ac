"""The rule that says which existing run is a window's run (backfill.history, backfill.schedule)
and the overlap sweep (backfill.verify), on Airflow run records written by hand. The same rule
is exercised against a real Airflow in tests/integration/test_history.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from backfill.airflow import RunInfo
from backfill.history import decide
from backfill.schedule import Schedule
from backfill.verify import _overlaps
from backfill.windows import Window


def d(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def run(run_id: str, state: str, start: datetime, end: datetime | None, *, logical: datetime | None = None,
        ran: tuple[datetime, datetime | None] | None = None, run_type: str = "scheduled") -> RunInfo:  # fmt: skip
    began, ended = ran or (None, None)
    return RunInfo(dag_id="d", run_id=run_id, state=state, run_type=run_type, logical_date=logical or start,
                   data_interval_start=start, data_interval_end=end, start_date=began, end_date=ended,
                   queued_at=began, conf={})  # fmt: skip


@pytest.mark.parametrize(
    ("summary", "zone", "start", "end", "expected"),
    [
        ("@daily", None, d(2026, 11, 29), d(2026, 11, 30), True),
        ("@daily", None, d(2026, 11, 30), d(2026, 12, 7), False),  # a week over a daily schedule
        ("0 6 * * *", None, d(2026, 11, 1), d(2026, 11, 2), False),  # not on a tick
        ("@weekly", None, d(2026, 11, 29), d(2026, 12, 6), True),  # Sunday to Sunday
        ("0 0 * * mon-fri", None, d(2026, 11, 27), d(2026, 11, 30), True),  # Friday to Monday
        ("0 0 1,15 * mon", None, d(2026, 11, 30), d(2026, 12, 1), True),  # day fields OR'ed, as cron
        ("*/15 * * * *", None, d(2026, 11, 1, 0, 15), d(2026, 11, 1, 0, 30), True),
        ("@monthly", None, d(2026, 11, 1), d(2026, 12, 1), True),
        ("1 day, 0:00:00", None, d(2026, 11, 1), d(2026, 11, 2), True),
        ("6:00:00", None, d(2026, 11, 1), d(2026, 11, 1, 6), True),
        ("@once", None, d(2026, 11, 1), d(2026, 11, 2), False),
        (None, None, d(2026, 11, 1), d(2026, 11, 2), False),
        ("@daily", "+01:00", d(2024, 1, 7, 23), d(2024, 1, 8, 23), True),
        ("@daily", 'FixedTimezone(3600, name="+01:00")', d(2024, 1, 7, 23), d(2024, 1, 8, 23), True),
        ("@daily", "Europe/Paris", d(2024, 10, 26, 22), d(2024, 10, 27, 23), True),  # a 25-hour day
        ("@hourly", "Europe/Paris", d(2024, 10, 27, 0), d(2024, 10, 27, 1), True),  # the repeated hour
        ("@hourly", "Europe/Paris", d(2024, 10, 27, 1), d(2024, 10, 27, 2), True),
        ("@daily", "No/Such_Zone", d(2024, 1, 7), d(2024, 1, 8), False),  # unknown zone: no periods
        ("0 0 31 2 1", None, d(2027, 2, 1), d(2027, 2, 8), True),  # Feb 31 never comes; Mondays do
    ],
)
def test_a_window_is_one_period_of_the_schedule(summary, zone, start, end, expected):
    assert Schedule(summary, zone).is_period(start, end) is expected


def test_a_cron_that_never_fires_is_answered_at_once():
    began = time.perf_counter()
    assert not Schedule("0 0 30 2 *").is_period(d(2024, 2, 29), d(2025, 2, 28))
    assert time.perf_counter() - began < 1


DAILY = Schedule("@daily")
W = Window(d(2026, 11, 29), d(2026, 11, 30))


def verdict(r: RunInfo | None, *, reprocess: str = "none", schedule: Schedule = DAILY, lineage=()) -> str:
    return decide(r, W, own_run_id="bf-1__x", schedule=schedule, reprocess=reprocess, lineage=lineage).action


def test_a_scheduled_run_without_an_interval_is_the_daily_windows_run():
    scheduled = run("scheduled__2026-11-29", "success", W.start, W.start)  # CronTriggerTimetable: [L, L]
    assert verdict(scheduled) == "skip"
    assert verdict(scheduled, reprocess="completed") == "rerun"
    assert verdict(run("s", "failed", W.start, W.start), reprocess="failed") == "rerun"
    assert verdict(run("s", "running", W.start, W.start)) == "wait"
    # The same run under a schedule without periods is another interval's: a conflict.
    assert verdict(scheduled, schedule=Schedule("@once")) == "conflict"
    assert verdict(run("s", "success", W.start, None)) == "skip"  # no interval at all


def test_runs_covering_the_window_or_something_else():
    assert verdict(None) == "new"
    assert verdict(run("bf-1__x", "running", W.start, W.end)) == "follow"
    assert verdict(run("manual__1", "success", W.start, W.end)) == "skip"
    assert verdict(run("bf-0__x", "failed", W.start, W.end), lineage=["bf-0"]) == "rerun"
    assert verdict(run("bf-0__x", "success", W.start, W.end), lineage=["bf-0"]) == "skip"
    week = run("bf-9__w", "success", W.start, W.start + timedelta(days=7))
    assert verdict(week, reprocess="completed") == "conflict"
    # One in flight that can never be this window's is a conflict now, not a wait.
    assert verdict(run("bf-9__w", "running", W.start, W.start + timedelta(days=7))) == "conflict"
    reason = decide(week, W, own_run_id="x", schedule=DAILY, reprocess="none").reason
    assert "bf-9__w" in reason and "on_conflict=skip" in reason


def test_the_overlap_sweep_finds_pairs_with_one_of_ours_only():
    now = d(2026, 11, 30, 12)
    a = run("ours_a", "success", W.start, W.end, ran=(d(2026, 11, 30, 1), d(2026, 11, 30, 2)))
    b = run("ours_b", "success", W.start, W.end, ran=(d(2026, 11, 30, 2), d(2026, 11, 30, 3)))  # touches a
    c = run("manual_c", "success", W.start, W.end, ran=(d(2026, 11, 30, 2, 30), d(2026, 11, 30, 4)), run_type="manual")
    e = run("sched_e", "success", W.start, W.end, ran=(d(2026, 11, 30, 5), d(2026, 11, 30, 6)))
    f = run("sched_f", "running", W.start, W.end, ran=(d(2026, 11, 30, 5, 30), None))
    found = _overlaps([a, b, c, e, f], {"ours_a", "ours_b"}, now)
    assert [(o["ours"], o["other"], o["other_type"]) for o in found] == [("ours_b", "manual_c", "manual")]
