"""When a window may start (``backfill.gates``): quiet hours read in the backfill's time zone,
across midnight and DST; the hourly start cap on a real Redis (``StartRate``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from backfill.clock import Clock
from backfill.errors import InputError
from backfill.gates import check_quiet_hours, held_back, quiet_until
from backfill.model import BackfillParams
from backfill.throttle import StartRate
from backfill.windows import get_tz

PARIS = ZoneInfo("Europe/Paris")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_quiet_hours_are_checked_and_kept_as_given() -> None:
    assert check_quiet_hours(None) is None and check_quiet_hours("") is None
    assert check_quiet_hours("08:00-20:00, 22:00-02:00") == ["08:00-20:00", "22:00-02:00"]
    assert check_quiet_hours(["23:30-24:00"]) == ["23:30-24:00"]
    for bad, message in [
        ("8-20", "'8-20' is not a range"),
        ("08:00-08:00", "is empty or the whole day"),
        ("00:00-24:00", "is empty or the whole day"),
        ("24:00-01:00", "is not a range"),
        ("10:00-24:30", "is not a range"),
        ("00:00-12:00,12:00-00:00", "cover the whole day"),
        (3, 'expected "HH:MM-HH:MM" ranges'),
    ]:
        with pytest.raises(InputError, match=message):
            check_quiet_hours(bad)


def test_quiet_until_says_when_a_start_may_come_in_the_backfill_s_zone() -> None:
    ranges = ["08:00-20:00", "22:00-02:00"]
    assert quiet_until(ranges, at("2024-01-01T06:59:00+00:00"), PARIS) is None  # 07:59 in Paris
    assert quiet_until(ranges, at("2024-01-01T07:00:00+00:00"), PARIS) == at("2024-01-01T20:00:00+01:00")
    assert quiet_until(ranges, at("2024-01-01T19:00:00+00:00"), PARIS) is None  # 20:00: the end is free
    assert quiet_until(ranges, at("2024-01-01T21:30:00+00:00"), PARIS) == at("2024-01-02T02:00:00+01:00")
    assert quiet_until(ranges, at("2024-01-02T00:59:59+00:00"), PARIS) == at("2024-01-02T02:00:00+01:00")
    # Adjacent ranges make one quiet stretch; 24:00 is midnight.
    assert quiet_until(["10:00-12:00", "12:00-24:00"], at("2024-01-01T11:00:00+00:00"), UTC) == at(
        "2024-01-02T00:00:00+00:00"
    )
    # Through DST changes, with both time zone libraries (get_tz gives dateutil's): the end is a
    # wall-clock time that exists, never one in the past.
    for zone in (PARIS, get_tz("Europe/Paris")):
        assert quiet_until(["01:00-03:30"], at("2024-03-31T00:30:00+00:00"), zone) == at("2024-03-31T03:30:00+02:00")
        # 22:00-02:30 on the spring night: 02:00-02:59 does not exist, so it ends at 03:00.
        assert quiet_until(["22:00-02:30"], at("2024-03-30T23:30:00+00:00"), zone) == at("2024-03-31T03:00:00+02:00")
        # 22:00-02:30 on the autumn night: 02:xx happens twice; the first 02:30 ends it.
        # (Compared as instants: aware datetimes of one zone compare by wall time, fold ignored.)
        end = quiet_until(["22:00-02:30"], at("2024-10-26T23:30:00+00:00"), zone)
        assert end and end.timestamp() == at("2024-10-27T02:30:00+02:00").timestamp(), end
        # In the repeated hour (the second 02:10, UTC+1): quiet until 02:30 of that second pass.
        end = quiet_until(["22:00-02:30"], at("2024-10-27T01:10:00+00:00"), zone)
        assert end and end.timestamp() == at("2024-10-27T02:30:00+01:00").timestamp(), end


def params(**kw: object) -> BackfillParams:
    base = dict(backfill_id="bf-1", dags=["d"], start="2024-01-01T00:00:00+00:00", end="2024-01-02T00:00:00+00:00",
                batch="daily")  # fmt: skip
    return BackfillParams(**{**base, **kw})  # type: ignore[arg-type]


def test_new_parameters_are_written_only_when_used() -> None:
    plain = json.loads(params().to_json())
    assert not {"notify", "quiet_hours", "max_starts_per_hour"} & set(plain)
    used = params(quiet_hours=["08:00-20:00"], max_starts_per_hour=3)
    assert BackfillParams.from_json(used.to_json()) == used
    assert BackfillParams.from_json(params().to_json()) == params()


class FixedClock(Clock):
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def now(self) -> float:
        return self.ms / 1000

    def script_now(self) -> str:
        return str(self.ms)


def test_the_hourly_cap_counts_starts_from_the_trigger_and_never_twice(scratch_redis) -> None:
    clock = FixedClock(1_000_000_000)
    rate = StartRate(scratch_redis, prefix="t", clock=clock)
    assert rate.check("bf", "a", 2, reserve=True) is None
    assert rate.check("bf", "a", 2, reserve=True) is None  # a repeated step: the same reservation
    assert rate.check("bf", "b", 2, reserve=False) is None  # a peek takes nothing
    clock.ms += 60_000
    assert rate.check("bf", "b", 2, reserve=True) is None
    clock.ms += 60_000
    rate.started("bf", "b")  # b's trigger went out two minutes in: it counts from then
    # Full: c may start when a's start (t0) leaves the hour.
    assert rate.check("bf", "c", 2, reserve=False) == (1_000_000 + 3600, 3600 - 120)
    clock.ms = 1_000_000_000 + 3_600_000
    assert rate.check("bf", "c", 2, reserve=True) is None
    assert rate.check("bf", "d", 2, reserve=True) == (1_000_000 + 120 + 3600, 120)
    # Another backfill's cap is its own.
    assert rate.check("other", "d", 1, reserve=True) is None


def test_held_back_names_the_gate_and_when_the_window_may_start(scratch_redis) -> None:
    clock = FixedClock(int(at("2024-01-01T10:00:00+00:00").timestamp() * 1000))
    rate = StartRate(scratch_redis, prefix="t", clock=clock)
    quiet = params(quiet_hours=["10:00-12:00"], tz="Europe/Paris")  # 11:00 in Paris
    why, wait = held_back(quiet, "m", rate, clock.now(), reserve=False, poll=(0.05, 900))  # type: ignore[misc]
    assert why == "quiet hours 10:00-12:00 (Europe/Paris): may start at 2024-01-01T12:00+01:00"
    assert wait == 900  # an hour away: look again within half the visibility timeout
    assert held_back(quiet, "m", rate, clock.now(), reserve=True, poll=(0.05, 900)) == (
        why,
        900,
    )  # and before the trigger
    capped = params(max_starts_per_hour=1)
    assert held_back(capped, "m1", rate, clock.now(), reserve=True, poll=(0.05, 60)) is None
    why, wait = held_back(capped, "m2", rate, clock.now(), reserve=True, poll=(0.05, 60))  # type: ignore[misc]
    assert why == "max_starts_per_hour=1 reached: may start at 2024-01-01T11:00:00+00:00" and wait == 60
