"""When a window may start, beyond its DAG being free (``WindowRunner`` asks before it takes
the DAG's lock, and again right before it triggers):

- **quiet hours**: the times of day when no window of a backfill starts (a warehouse's busy
  hours). ``quiet_hours="08:00-20:00"``, several ranges separated by commas (or a list), a range
may cross midnight (``"22:00-02:00"``); read in the backfill's time zone (``tz``, UTC if none).
A window in flight when quiet hours begin goes on: only starts wait;
- **max_starts_per_hour**: at most that many windows of the backfill start in any hour
  (``backfill.throttle.StartRate``, reserved right before the trigger).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from backfill.errors import InputError
from backfill.model import BackfillParams
from backfill.throttle import StartRate
from backfill.windows import get_tz

_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
DAY = 24 * 60


def check_quiet_hours(value: Any) -> list[str] | None:
    """``quiet_hours`` as given (None, ``"08:00-20:00,22:00-23:00"`` or a list of ranges), checked."""
    if value is None or value == "" or value == []:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) for p in parts):
        raise InputError(f'quiet_hours: expected "HH:MM-HH:MM" ranges (a string or a list), got {value!r}')
    out = []
    for part in (p.strip() for p in parts):
        m = _RANGE.match(part)
        if not m or (m.group(3) == "24" and m.group(4) != "00"):
            raise InputError(f'quiet_hours: {part!r} is not a range "HH:MM-HH:MM" (24-hour clock, e.g. "08:00-20:00")')
        start, end = _minutes(part)
        if start == end % DAY:
            raise InputError(f"quiet_hours: {part!r} is empty or the whole day (a backfill that may never start)")
        out.append(part)
    if _quiet_minutes(out) >= DAY:
        raise InputError(f"quiet_hours: {','.join(out)} cover the whole day: no window could ever start")
    return out


def _minutes(part: str) -> tuple[int, int]:
    a, b = part.split("-")
    return int(a[:2]) * 60 + int(a[3:]), int(b[:2]) * 60 + int(b[3:])


def _quiet_minutes(ranges: list[str]) -> int:
    quiet = [False] * DAY
    for part in ranges:
        start, end = _minutes(part)
        for m in range(start, end if end > start else end + DAY):
            quiet[m % DAY] = True
    return sum(quiet)


def _quiet_at(ranges: list[str], minute: int) -> bool:
    for part in ranges:
        start, end = _minutes(part)
        if (start <= minute < end) if start < end else (minute >= start or minute < end % DAY):
            return True
    return False


def quiet_until(ranges: list[str] | None, now: datetime, zone: tzinfo) -> datetime | None:
    """None when a window may start at ``now``; else when the quiet hours around it end: the
    first minute, in ``zone``, that no range covers. Steps in real minutes, so a wall-clock time
    that a DST change skips is never the answer, and a repeated hour is lived through twice."""
    if not ranges:
        return None
    local = now.astimezone(zone)
    if not _quiet_at(ranges, local.hour * 60 + local.minute):
        return None
    t = now.astimezone(UTC).replace(second=0, microsecond=0)
    for _ in range(DAY + 120):  # a day, and a fall-back day's extra hour
        t += timedelta(minutes=1)
        wall = t.astimezone(zone)
        if not _quiet_at(ranges, wall.hour * 60 + wall.minute):
            return wall
    raise AssertionError("quiet hours cover the whole day")  # refused by check_quiet_hours


def held_back(
    params: BackfillParams, member: str, starts: StartRate, now: float, *, reserve: bool, poll: tuple[float, float]
) -> tuple[str, float] | None:
    """Why window ``member`` may not start at ``now``, and when to look again (within ``poll``,
    the shortest and longest waits); None when it may. ``reserve`` (right before the trigger)
    also takes the start from ``max_starts_per_hour``; quiet hours are checked both times."""
    if params.quiet_hours:
        until = quiet_until(params.quiet_hours, datetime.fromtimestamp(now, UTC), get_tz(params.tz))
        if until is not None:
            why = (f"quiet hours {','.join(params.quiet_hours)} ({params.tz or 'UTC'}): may start at "
                   f"{until.isoformat(timespec='minutes')}")  # fmt: skip
            return why, min(max(until.timestamp() - now, poll[0]), poll[1])
    if params.max_starts_per_hour:
        answer = starts.check(params.backfill_id, member, params.max_starts_per_hour, reserve=reserve)
        if answer is not None:
            at, wait = answer
            when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
            why = f"max_starts_per_hour={params.max_starts_per_hour} reached: may start at {when}"
            return why, min(max(wait, poll[0]), poll[1])
    return None
