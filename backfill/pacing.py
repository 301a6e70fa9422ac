"""When to look again at a run: the orchestrator's only cost that shows in a backfill's length.

The next window can only be triggered once this run's end is seen, so looking late slows the
whole DAG down, and looking often loads Airflow. Each DAG's runs teach two durations, read from
Airflow's own run records (free of our polling delay and of clock skew):

- ``total``: trigger (``queued_at``) to end — what to expect while a run is queued;
- ``run``: start to end — once a run is seen started, its end is its start plus this, which
  varies far less than ``total`` (the scheduler's pick-up time drops out);

each with its usual deviation. The looks then cluster around the expected end: sleep until one
deviation before it, then look every half deviation (but at least every 7.5 % of the run's
length, so long runs stay cheap) until three deviations after it, then back off by half of the
time the run is late (a run much longer than usual is not hammered). With nothing learnt (a DAG
without successes in Airflow, its first window): look every second, then every fifth of the time
waited so far, so the end is seen at most a fifth of the run's length late, for a number of
looks logarithmic in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEDULER_START = 1.0  # seconds Airflow's scheduler typically takes to start a queued run
MIN_DEV = 0.25  # a run's end is only known at a scheduler loop (about 1 s apart): never expect it closer
# A run's length varies by at least this share of it whatever the last few runs showed (an
# average of two deviations can be tiny), so a normal run is not mistaken for a late one.
MIN_SPREAD = 0.05
# Around the expected end, look at least this share of the run's length apart: a long run's end
# seen a little late costs a few per cent of its length; looked at too often, it costs the looks.
TICK = 0.075
# With nothing learnt, look again after this share of the time waited: the end is seen at most
# this share of the run's length late (a half cost a DAG's first 20 s run up to 5 s of handoff in
# bench B4), for about 1 / UNLEARNT + log(length) / log(1 + UNLEARNT) looks.
UNLEARNT = 0.2
FIELDS = ("avg_duration", "dev_duration", "avg_run", "dev_run")  # in the DAG's record


@dataclass(frozen=True, slots=True)
class Pace:
    """A DAG's learnt durations (seconds); ``None`` where nothing is known yet."""

    total: float | None = None
    total_dev: float | None = None
    run: float | None = None
    run_dev: float | None = None

    @classmethod
    def from_record(cls, values: list[Any]) -> Pace:
        return cls(*(float(v) if v not in (None, b"", "") else None for v in values))

    def to_record(self) -> dict[str, float]:
        values = (self.total, self.total_dev, self.run, self.run_dev)
        return {k: round(v, 3) for k, v in zip(FIELDS, values, strict=True) if v is not None}


def next_look(
    pace: Pace,
    elapsed: float,
    *,
    started: float | None = None,
    floor: float,
    ceiling: float,
    lead: float = 1.0,
    unlearnt: float = UNLEARNT,
) -> float:
    """Seconds until the next look at a run triggered ``elapsed`` s ago (``started``: s after the
    trigger at which Airflow started it, once seen), within [``floor``, ``ceiling``]. ``lead``:
    how many deviations before the expected end the first look comes (negative: after it);
    ``unlearnt``: with nothing learnt, the share of the time waited until the next look."""
    expected: float | None
    dev: float | None
    scale: float | None
    if started is not None and pace.run:
        expected, dev = started + pace.run, pace.run_dev
        scale = pace.run
    else:
        expected, dev, scale = pace.total, pace.total_dev, pace.total
    if expected and scale:
        dev = min(0.5 * scale, max(MIN_SPREAD * scale, MIN_DEV, dev if dev is not None else 0.1 * scale))
        tick = max(dev / 2, TICK * scale)
        if elapsed < expected - lead * dev:
            delay = expected - lead * dev - elapsed
        elif elapsed < expected + 3 * dev:
            delay = tick
        else:
            # Later than usual: back off with the delay, at most half of it lost again.
            delay = max(tick, 0.5 * (elapsed - expected))
    else:
        delay = max(unlearnt * elapsed, 1.0)
    return min(ceiling, max(floor, delay))


def learn(pace: Pace, total: float | None, run: float | None) -> Pace:
    """Fold one finished run (its trigger-to-end and start-to-end seconds) into the pace."""
    new_total, new_total_dev = _ewma(pace.total, pace.total_dev, total)
    new_run, new_run_dev = _ewma(pace.run, pace.run_dev, run)
    return Pace(new_total, new_total_dev, new_run, new_run_dev)


def seed(durations: list[float]) -> Pace:
    """A first pace from the start-to-end times of a DAG's recent successes. Their queued-to-end
    times are not used: runs queued behind others (a native backfill queues them all at once)
    waited for their turn."""
    if not durations:
        return Pace()
    durations = sorted(durations)
    median = durations[len(durations) // 2]
    dev = max(0.1 * median, sorted(abs(d - median) for d in durations)[len(durations) // 2])
    total = median + SCHEDULER_START
    return Pace(total, max(0.15 * total, dev), median, dev)


def _ewma(avg: float | None, dev: float | None, sample: float | None) -> tuple[float | None, float | None]:
    if sample is None or sample <= 0:
        return avg, dev
    if avg is None:
        return sample, 0.1 * sample
    old_dev = dev if dev is not None else 0.1 * avg
    return 0.5 * avg + 0.5 * sample, 0.5 * old_dev + 0.5 * abs(sample - avg)
