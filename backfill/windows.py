"""The generator: split [start, end] into half-open windows aligned to the calendar.

Windows are aligned to calendar units in the backfill's time zone (UTC unless told): hours,
days, ISO weeks (starting Monday) and calendar months. The first and the last window are
clipped to the range, so ``2024-01-15 .. 2024-03-10`` monthly gives ``[01-15, 02-01)``,
``[02-01, 03-01)``, ``[03-01, 03-11)``.

Any window is computed from its index in O(1) (``WindowSpec.window(i)``), so a task that
continues a DAG's chain at window 40,000 does not regenerate the 39,999 before it, and a
10-year hourly range costs nothing until it is walked.

Days, weeks and months are counted in local wall time, so a daily window in Europe/Paris is
23 or 25 hours long across DST changes and always starts at local midnight; hours are counted
in absolute time, so an hourly backfill across a DST change has no missing or doubled hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo

from dateutil import parser as dtparser
from dateutil import tz as dttz
from dateutil.relativedelta import relativedelta

from backfill.errors import InputError

BATCHES = ("hourly", "daily", "weekly", "monthly")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STEP = {
    "hourly": relativedelta(hours=1),
    "daily": relativedelta(days=1),
    "weekly": relativedelta(weeks=1),
    "monthly": relativedelta(months=1),
}
# A lower bound of each unit's length, to estimate a window count before correcting it.
_MIN_SECONDS = {"hourly": 3600, "daily": 23 * 3600, "weekly": 7 * 23 * 3600, "monthly": 28 * 86400}


@dataclass(frozen=True, slots=True)
class Window:
    """One half-open interval ``[start, end)``, both aware and in UTC."""

    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """The window's start as ISO text: stable, sortable, used in run ids."""
        return self.start.isoformat()

    def label(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def get_tz(name: str | None) -> tzinfo:
    """The time zone named ``name`` (an IANA name such as ``Europe/Paris``); UTC for None."""
    if name is None or name.upper() == "UTC":
        return dttz.UTC
    zone = dttz.gettz(name) if name.strip() else None
    if zone is None:
        raise InputError(f"tz: unknown time zone {name!r} (use an IANA name like 'Europe/Paris')")
    return zone


def _localize(naive: datetime, zone: tzinfo) -> datetime:
    """Attach ``zone`` to a wall time; a time skipped by DST moves forward to a real one."""
    return dttz.resolve_imaginary(naive.replace(tzinfo=zone))


def _check_wall_time(naive: datetime, value: object, *, name: str, zone: tzinfo) -> None:
    """A naive datetime must name one instant in ``zone``: not one skipped or repeated by DST."""
    aware = naive.replace(tzinfo=zone)
    where = (getattr(zone, "_filename", None) or "UTC").split("zoneinfo/")[-1]
    if not dttz.datetime_exists(aware):
        raise InputError(
            f"{name}: {value!s} does not exist in {where} (the clocks jump forward over it); "
            "give it with a UTC offset, e.g. 2024-03-31T03:30:00+02:00"
        )
    if dttz.datetime_ambiguous(aware):
        raise InputError(
            f"{name}: {value!s} happens twice in {where} (the clocks go back over it); "
            "give it with a UTC offset to say which, e.g. 2024-10-27T02:30:00+01:00"
        )


def parse_bound(value: str | date | datetime | None, *, name: str, zone: tzinfo, is_end: bool) -> datetime:
    """Parse a range bound into an aware datetime.

    A date (``2024-03-31``) is a whole day: as ``start`` it means that day's first instant,
    as ``end`` the next day's (both days are included). A datetime is an instant; naive ones
    are read in ``zone``; as ``end`` it is exclusive.
    """
    if isinstance(value, datetime):
        moment, whole_day = value, False
    elif isinstance(value, date):
        moment, whole_day = datetime(value.year, value.month, value.day), True
    elif isinstance(value, str):
        text = value.strip()
        whole_day = bool(_DATE_ONLY.match(text))
        try:
            moment = dtparser.isoparse(text)
        except (ValueError, OverflowError):
            raise InputError(f"{name}: cannot read {value!r} as a date (YYYY-MM-DD) or an ISO 8601 datetime") from None
    else:
        raise InputError(f"{name}: expected a date or an ISO 8601 string, got {type(value).__name__}")
    if moment.tzinfo is None:
        if not whole_day:
            _check_wall_time(moment, value, name=name, zone=zone)
        moment = _localize(moment, zone)
    if whole_day and is_end:
        moment = _localize(moment.replace(tzinfo=None) + relativedelta(days=1), zone)
    return moment


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A range cut into windows: everything needed to compute any window by its index.

    ``count`` is the number of windows; ``window(i)`` the i-th in chronological order.
    """

    start: datetime
    end: datetime
    batch: str
    zone: tzinfo
    anchor: datetime  # naive local wall time of the calendar unit containing ``start``
    count: int
    _cache: dict[int, Window] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _boundary(self, i: int) -> datetime:
        if self.batch == "hourly":
            # Absolute hours: DST neither drops nor doubles an hour.
            first = _localize(self.anchor, self.zone).astimezone(dttz.UTC)
            return first + timedelta(hours=i)
        return _localize(self.anchor + _STEP[self.batch] * i, self.zone)

    def window(self, i: int) -> Window:
        got = self._cache.get(i)
        if got is not None:  # a window's step asks for its bounds several times (bench B4)
            return got
        if not 0 <= i < self.count:
            raise IndexError(i)
        lo = max(self._boundary(i), self.start)
        hi = min(self._boundary(i + 1), self.end)
        if len(self._cache) >= 1024:
            self._cache.clear()
        got = self._cache[i] = Window(lo.astimezone(dttz.UTC), hi.astimezone(dttz.UTC))
        return got

    def __iter__(self) -> Iterator[Window]:
        return (self.window(i) for i in range(self.count))

    def __len__(self) -> int:
        return self.count


def _anchor(moment: datetime, batch: str, zone: tzinfo) -> datetime:
    local = moment.astimezone(zone).replace(tzinfo=None)
    if batch == "hourly":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if batch == "daily":
        return day
    if batch == "weekly":
        return day - relativedelta(days=day.weekday())
    return day.replace(day=1)


def window_spec(
    start: str | date | datetime | None,
    end: str | date | datetime | None,
    batch: str,
    *,
    tz: str | None = None,
    max_windows: int | None = None,
) -> WindowSpec:
    """Validate a range and cut it into ``batch`` windows.

    Raises InputError naming the bad input: an unknown batch or time zone, a bound that does
    not parse, an empty or reversed range, or more windows than ``max_windows``.
    """
    if batch not in BATCHES:
        raise InputError(f"batch: unknown batch size {batch!r} (choose one of {', '.join(BATCHES)})")
    zone = get_tz(tz)
    lo = parse_bound(start, name="start", zone=zone, is_end=False)
    hi = parse_bound(end, name="end", zone=zone, is_end=True)
    if lo >= hi:
        raise InputError(f"start ({start}) is after end ({end}): the range is empty")
    anchor = _anchor(lo, batch, zone)
    spec = WindowSpec(lo, hi, batch, zone, anchor, 0)
    # Estimate from a lower bound of the unit's length, then step to the exact count.
    n = max(1, int((hi - lo).total_seconds() // _MIN_SECONDS[batch]))
    while n > 1 and spec._boundary(n - 1) >= hi:
        n -= 1
    while spec._boundary(n) < hi:
        n += 1
    if max_windows is not None and n > max_windows:
        raise InputError(
            f"the range {lo.isoformat()} .. {hi.isoformat()} makes {n} {batch} windows, "
            f"more than the cap of {max_windows} (BACKFILL_MAX_WINDOWS)"
        )
    return WindowSpec(lo, hi, batch, zone, anchor, n)
