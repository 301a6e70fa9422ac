"""A DAG's schedule, read from what Airflow's REST API says of it (``timetable_summary`` and
``timezone``), to answer one question: is a window exactly one period of the DAG's schedule?

Airflow 3's default timetables for a cron string (``CronTriggerTimetable``) and for a
``timedelta`` (``DeltaTriggerTimetable``) record runs with no data interval: a scheduled run
of an ``@daily`` DAG at 2024-01-08 covers ``[2024-01-08, 2024-01-08]``. Such a run *is* the
daily window ``[2024-01-08, 2024-01-09)`` (the same work, Airflow's native backfill would
re-run it), but it is not the weekly window starting that day. ``Schedule.is_period`` tells
the two apart: the window starts on a tick of the schedule and ends on the next tick.

Understood schedules: the cron presets, five-field cron expressions (``*``, lists, ranges,
steps, month and day names; day-of-month and day-of-week combine with OR as in cron), and
``timedelta`` summaries (``1 day, 0:00:00``). Ticks are wall times in the DAG's time zone,
as Airflow's cron timetables compute them. Anything else (custom timetables, ``@once``,
``None``, assets, several crons) has no periods: its runs without an interval are conflicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from dateutil import rrule
from dateutil import tz as dttz

PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_NAMES = {3: {m: i for i, m in enumerate(_MONTHS, 1)}, 4: {d: i for i, d in enumerate(_DAYS)}}
_MAX_DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_DELTA = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2})$")
# dateutil's weekdays are Monday=0; cron's are Sunday=0 (and 7).
_WEEKDAYS = [rrule.SU, rrule.MO, rrule.TU, rrule.WE, rrule.TH, rrule.FR, rrule.SA, rrule.SU]


@dataclass(frozen=True)
class Schedule:
    """``summary``: Airflow's ``timetable_summary``; ``timezone``: the DAG's time zone name."""

    summary: str | None
    timezone: str | None = None

    @property
    def zone(self) -> tzinfo | None:
        """The DAG's time zone; None if Airflow named one we cannot read (then no periods)."""
        return _zone(self.timezone)

    def is_period(self, start: datetime, end: datetime) -> bool:
        """Whether ``[start, end)`` is exactly one period: ``start`` is a tick and ``end`` the next."""
        delta = self._delta()
        if delta is not None:
            return end - start == delta
        zone = self.zone
        if zone is None:
            return False
        local = start.astimezone(zone).replace(tzinfo=None)
        rule = _cron_rule(self.summary or "", local)  # iterates from ``local`` on
        if rule is None:
            return False
        ticks = iter(rule)
        if next(ticks, None) != local:
            return False
        nxt = next(ticks, None)
        if nxt is None:
            return False
        if _every_hour(self.summary or ""):
            # As Airflow's cron timetables: a schedule that fires every hour steps in elapsed
            # time, so no hour is skipped or doubled when the clocks change.
            return end - start == nxt - local
        return _localize(nxt, zone) == end

    def describe(self) -> str:
        zone = f" in {self.timezone}" if self.timezone and self.zone is not dttz.UTC else ""
        return f"{self.summary}{zone}" if self.summary else "no schedule"

    # -- parsing --------------------------------------------------------------------------

    def _delta(self) -> timedelta | None:
        m = _DELTA.match((self.summary or "").strip())
        if not m:
            return None
        days, h, mi, s = (int(g or 0) for g in m.groups())
        delta = timedelta(days=days, hours=h, minutes=mi, seconds=s)
        return delta if delta > timedelta(0) else None


def _localize(naive: datetime, zone: tzinfo) -> datetime:
    # A wall time the clocks repeat: the second one (fold=1), as Airflow's make_aware does.
    return dttz.resolve_imaginary(naive.replace(tzinfo=zone, fold=1)).astimezone(dttz.UTC)


_FIXED = re.compile(r'^(?:FixedTimezone\((-?\d+)(?:, name="[^"]*")?\)|([+-])(\d{2}):?(\d{2}))$')


def _zone(name: str | None) -> tzinfo | None:
    """A zone as Airflow names it: an IANA name, "UTC", "+01:00" or pendulum's
    ``FixedTimezone(3600, name="+01:00")``."""
    if not name or name.strip().upper() in ("UTC", "Z", "ETC/UTC"):
        return dttz.UTC
    m = _FIXED.match(name.strip())
    if m:
        seconds, sign, hh, mm = m.groups()
        offset = int(seconds) if seconds is not None else (1 if sign == "+" else -1) * (int(hh) * 3600 + int(mm) * 60)
        return dttz.tzoffset(None, offset)
    return dttz.gettz(name.strip())


def _every_hour(summary: str) -> bool:
    parts = PRESETS.get(summary.strip().lower(), summary.strip()).split()
    return len(parts) == 5 and parts[1] == "*"


def _field(text: str, pos: int) -> list[int] | None:
    """One cron field as the sorted values it allows; None for ``*`` (any)."""
    lo, hi = _BOUNDS[pos]
    if text == "*":
        return None
    out: set[int] = set()
    for part in text.lower().split(","):
        rng, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            a, b = lo, hi
        else:
            first, _, last = rng.partition("-")
            a = _value(first, pos)
            b = _value(last, pos) if last else (hi if step_text else a)
        if step < 1 or not lo <= a <= b <= hi:
            raise ValueError(part)
        out.update(range(a, b + 1, step))
    return sorted(out)


def _value(text: str, pos: int) -> int:
    return _NAMES.get(pos, {}).get(text, None) if not text.isdigit() else int(text)  # type: ignore[return-value]


def _cron_rule(summary: str, dtstart: datetime) -> rrule.rrulebase | None:
    expr = PRESETS.get(summary.strip().lower(), summary.strip())
    parts = expr.split()
    if len(parts) != 5:
        return None
    try:
        minute, hour, dom, month, dow = (_field(p, i) for i, p in enumerate(parts))
    except (ValueError, TypeError):
        return None
    if dom is not None and not any(d <= _MAX_DAYS[m - 1] for m in month or range(1, 13) for d in dom):
        # A day of the month that never comes (February 30th): dateutil would search for it
        # minute by minute. Without a day of the week, the cron never fires.
        if dow is None:
            return None
        dom = None
    common: dict[str, Any] = {
        # Bounded: a cron that never fires (Feb 30) would otherwise be searched to year 9999.
        "until": dtstart + timedelta(days=9 * 366),
        "dtstart": dtstart.replace(second=0, microsecond=0) + (timedelta(minutes=1) if dtstart.second else timedelta()),
        "bysecond": [0],
        "byminute": minute if minute is not None else list(range(60)),
        "byhour": hour if hour is not None else list(range(24)),
        "bymonth": month if month is not None else list(range(1, 13)),
    }
    days: dict[str, Any] = {"bymonthday": dom} if dom is not None else {}
    weekdays: dict[str, Any] = (
        {"byweekday": sorted({_WEEKDAYS[d] for d in dow}, key=lambda w: w.weekday)} if dow is not None else {}
    )
    if dom is not None and dow is not None:  # cron: either day field matches
        both = rrule.rruleset()
        both.rrule(rrule.rrule(rrule.MINUTELY, **common, **days))
        both.rrule(rrule.rrule(rrule.MINUTELY, **common, **weekdays))
        return both
    return rrule.rrule(rrule.MINUTELY, **common, **days, **weekdays)
