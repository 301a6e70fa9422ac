"""Honest ETAs: when each DAG of a backfill, and the backfill, should end.

From what is known, not from a constant:

- **a window's run**: the DAG's learnt trigger-to-end time (``backfill.pacing``), seeded at
  submit from Airflow's own recent successful runs of the DAG, then learnt from each run;
- **the handoff**: the mean time measured so far from a window's run end to the DAG's next
  trigger (``HANDOFF_UNKNOWN`` until one is measured);
- **retries ahead**: the retries made so far per window, each costing a run and its wait;
- **the start gates ahead**: each start is moved out of quiet hours and kept under
  ``max_starts_per_hour``;
- **the order** (``after``): a window starts no sooner than the same window of its upstreams ends.

The remaining windows of each DAG are laid out one after another from now (a window in flight
from its trigger), DAGs in the order's levels; with ``max_parallel_dags`` the whole is also at
least the remaining work divided by it. A DAG with nothing learnt has no ETA, nor its backfill.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from backfill.gates import quiet_until
from backfill.model import BackfillParams
from backfill.order import levels
from backfill.record import DagRecord, WindowRecord
from backfill.states import FINISHED, IN_FLIGHT, PENDING, TERMINAL, WindowState
from backfill.windows import get_tz

HANDOFF_UNKNOWN = 3.0  # seconds from a run's end to the next trigger, before one is measured
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class DagEta:
    remaining: int  # windows not ended
    run: float | None  # seconds a window's run should take (trigger to end)
    handoff: float  # seconds from a run's end to the next trigger
    retry: float  # expected seconds of retries per window
    end: float | None  # Unix time; None: nothing learnt yet

    def as_dict(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "run_seconds": _r(self.run), "handoff_seconds": _r(self.handoff),
                "retry_seconds": _r(self.retry), "expected_end": _r(self.end)}  # fmt: skip


def estimate(
    params: BackfillParams, dags: dict[str, DagRecord], windows: dict[str, dict[int, WindowRecord]], now: float
) -> tuple[dict[str, DagEta], float | None]:
    """Each DAG's ETA and the backfill's expected end (None if any running DAG has none)."""
    starts: list[float] = []  # the starts laid out so far, for max_starts_per_hour
    ends: dict[tuple[str, int], float] = {}  # (DAG, window index) -> expected end
    out: dict[str, DagEta] = {}
    depth = levels(params.dags, params.after)
    for dag in sorted(params.dags, key=lambda d: depth[d]):
        out[dag] = _dag(params, dag, dags[dag], windows.get(dag, {}), now, starts, ends)
    running = [e for d, e in out.items() if dags[d].state not in FINISHED]
    if not running:
        return out, None
    if any(e.end is None for e in running):
        return out, None
    end = max(e.end or now for e in running)
    if params.max_parallel_dags and len(running) > params.max_parallel_dags:
        work = sum(e.remaining * ((e.run or 0.0) + e.handoff + e.retry) for e in running)
        end = max(end, now + work / params.max_parallel_dags)
    return out, end


def _dag(
    params: BackfillParams, dag: str, info: DagRecord, recs: dict[int, WindowRecord], now: float,
    starts: list[float], ends: dict[tuple[str, int], float],
) -> DagEta:  # fmt: skip
    order = params.indices(dag)
    left = [i for i in order if (recs.get(i) or WindowRecord()).state not in TERMINAL]
    run = info.pace.total or info.pace.run
    handoff = _handoff(order, recs)
    ran = [recs[i] for i in order if i in recs and recs[i].state in (WindowState.SUCCESS, WindowState.FAILED)]
    retry = 0.0
    if params.retries and ran and run is not None:  # retries per window that ran, so far
        retry = sum(w.attempt - 1 for w in ran) / len(ran) * (run + params.retry_wait(1))
    if info.state in FINISHED or not left:
        return DagEta(0, run, handoff, retry, info.finished_at or (None if info.state in FINISHED else now))
    if run is None:
        return DagEta(len(left), None, handoff, retry, None)
    t = now
    zone = get_tz(params.tz)
    for i in left:
        rec = recs.get(i) or WindowRecord()
        if rec.state in IN_FLIGHT and rec.triggered_at:
            t = max(now, rec.triggered_at + run)  # in flight: its own trigger counts
        else:
            begin = max([t] + [ends.get((u, i), now) for u in (params.after or {}).get(dag, [])])
            if rec.retry_at and rec.state in PENDING:  # waiting for its retry: that cost is known
                begin = _gated(params, max(begin, rec.retry_at), starts, zone)
                t = begin + run
            else:
                t = _gated(params, begin, starts, zone) + run + retry
        ends[(dag, i)] = t
        t += handoff
    return DagEta(len(left), run, handoff, retry, ends[(dag, left[-1])])


def _handoff(order: list[int], recs: dict[int, WindowRecord]) -> float:
    """Mean seconds from a window's run end (Airflow's clock, placed on ours) to the next trigger."""
    gaps = []
    for a, b in pairwise(order):
        prev, nxt = recs.get(a), recs.get(b)
        if prev and nxt and prev.ended and nxt.triggered_at:
            gaps.append(max(0.0, nxt.triggered_at - (datetime.fromisoformat(prev.ended).timestamp() + prev.skew)))
    return sum(gaps) / len(gaps) if gaps else HANDOFF_UNKNOWN


def _gated(params: BackfillParams, t: float, starts: list[float], zone: Any) -> float:
    """The first time from ``t`` a window may start: out of quiet hours, under the hourly cap."""
    for _ in range(1000):
        quiet = quiet_until(params.quiet_hours, datetime.fromtimestamp(t, UTC), zone)
        if quiet is not None:
            t = max(t, quiet.timestamp())
        cap = params.max_starts_per_hour
        if cap:  # the starts in (t - 1 h, t]: bisected, a long backfill's layout stays linear
            lo, hi = bisect_right(starts, t - HOUR), bisect_right(starts, t)
            if hi - lo >= cap:
                t = starts[hi - cap] + HOUR
                continue
        if quiet is None:
            break
    if params.max_starts_per_hour:
        insort(starts, t)
    return t


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
