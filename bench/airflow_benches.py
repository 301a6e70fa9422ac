"""B1 and B2: against a real ``airflow standalone`` 3.3 with the DAGs in ``bench/dags``.

Airflow runs on a private PostgreSQL (``BenchStack.start_airflow``). Each B1 round also prints
where its wall time went (``breakdown``).

B1 (handoff speed): 3 daily DAGs (``max_active_runs=1``, a 1 s task), 10 daily windows each,
backfilled by Airflow's native backfill (``POST /api/v2/backfills``, ``max_active_runs=1``) and
by this orchestrator (daily batches), alternating, ``rounds`` times, each on fresh dates of the
same DAGs. From Airflow's run records: wall time from the request to the last run's end, and
the gaps between one run's end and the next run's start of the same DAG.

B2 (load on Airflow): Airflow requests per window, as counted by our client and recorded with
each window (``api_calls``), for a DAG whose task takes 2 s and one whose task takes 60 s.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from types import ModuleType

from airflow_client.client import BackfillApi, BackfillPostBody, MonitorApi

from backfill.airflow import AirflowClient, RunInfo
from backfill.errors import AirflowUnavailable
from backfill.record import Record
from bench.common import Figure, by_dag, gaps, wait_backfill, wait_until

B1_DAGS = ["bench_daily_1", "bench_daily_2", "bench_daily_3"]
B1_WINDOWS = 10


class DateAllocator:
    """Fresh, never-used logical dates for each backfill (after every run the DAGs hold)."""

    def __init__(self, airflow: AirflowClient, dags: list[str]) -> None:
        latest = datetime(2001, 1, 1, tzinfo=UTC)
        for dag in dags:
            run = airflow.latest_run(dag, until=datetime(2020, 1, 1, tzinfo=UTC))
            if run and run.logical_date and run.logical_date >= latest:
                latest = run.logical_date + timedelta(days=1)
        self.next = latest

    def take(self, days: int) -> datetime:
        start = self.next
        self.next = start + timedelta(days=days + 1)
        return start


def _runs_between(airflow: AirflowClient, dag: str, start: datetime, days: int) -> list[RunInfo]:
    return airflow.runs_between(dag, start, start + timedelta(days=days - 1))


def _settle(airflow: AirflowClient, dags: list[str]) -> None:
    """Wait until no run of these DAGs is active (the scheduled run a DAG gets when it appears)
    and Airflow has marked every native backfill of them completed (it refuses a new one before)."""
    scheduler_alive(airflow)
    api = BackfillApi(airflow.api_client)

    def idle() -> bool:
        if any(airflow.active_runs(d) for d in dags):
            return False
        return all(b.completed_at for d in dags for b in airflow._call("backfills", api.list_backfills, d).backfills)

    wait_until(idle, 300, "bench DAGs idle", every=1)


def native_round(airflow: AirflowClient, start: datetime) -> tuple[float, list[RunInfo]]:
    """One native backfill per DAG, created one after the other; the clock starts before the first."""
    api = BackfillApi(airflow.api_client)
    t0 = time.time()
    for dag in B1_DAGS:
        body = BackfillPostBody(
            dag_id=dag, from_date=start, to_date=start + timedelta(days=B1_WINDOWS - 1), max_active_runs=1
        )
        for attempt in range(40):
            try:
                airflow._call("native backfill", api.create_backfill, body, idempotent=False)
                break
            except AirflowUnavailable:
                if _has_backfill(airflow, api, dag, start):
                    break  # it went through before the error
                if attempt == 39:
                    raise
                time.sleep(0.5)
    runs = _wait_runs(airflow, start)
    return t0, runs


def _has_backfill(airflow: AirflowClient, api: BackfillApi, dag: str, start: datetime) -> bool:
    page = airflow._call("backfills", api.list_backfills, dag, limit=100)
    return any(b.from_date == start for b in page.backfills)


def scheduler_alive(airflow: AirflowClient) -> None:
    health = airflow._call("health", MonitorApi(airflow.api_client).get_health)
    if health.scheduler.status != "healthy":
        raise RuntimeError(f"Airflow's scheduler is {health.scheduler.status}: see .stack/bench/airflow/airflow.log")


def ours_round(airflow: AirflowClient, tasks: ModuleType, start: datetime) -> tuple[float, list[RunInfo]]:
    t0 = time.time()
    end = start + timedelta(days=B1_WINDOWS)
    bf = tasks.submit_backfill.delay(B1_DAGS, start.isoformat(), end.isoformat(), "daily").get(timeout=60)
    meta = wait_backfill(tasks, bf["backfill_id"], 600)
    assert meta["state"] == "succeeded", meta
    runs = _wait_runs(airflow, start)
    assert all(r.run_id.startswith(bf["backfill_id"]) for r in runs)
    return t0, runs


def _wait_runs(airflow: AirflowClient, start: datetime) -> list[RunInfo]:
    def done() -> list[RunInfo] | None:
        runs = [r for dag in B1_DAGS for r in _runs_between(airflow, dag, start, B1_WINDOWS)]
        finished = len(runs) == len(B1_DAGS) * B1_WINDOWS and all(r.state in ("success", "failed") for r in runs)
        return runs if finished else None

    # Wall times come from Airflow's own end dates, so looking every 2 s does not blur them; it
    # keeps the benchmark's own requests (3 per look) from loading Airflow during native rounds
    # (ours are waited for on Redis first).
    runs = wait_until(done, 600, "B1 runs", every=2)
    bad = [r.run_id for r in runs if r.state != "success"]
    assert not bad, f"runs failed: {bad}"
    return runs


def breakdown(runs: list[RunInfo], t0: float) -> str:
    """Where a round's wall time went, for its slowest DAG: request → first start, the runs
    themselves (start → end), and the gaps between them (end → next start), in seconds."""
    slowest = max(by_dag(runs).values(), key=lambda rs: rs[-1].end_date)
    first = slowest[0].start_date.timestamp() - t0
    running = sum((r.end_date - r.start_date).total_seconds() for r in slowest)
    g = gaps(slowest)
    return f"slowest DAG: first start {first:.2f} + runs {running:.2f} + gaps {sum(g):.2f} (max {max(g):.2f})"


def handoffs(record: Record, runs: list[RunInfo]) -> str:
    """Our own share of each gap, from our event stream against Airflow's records: a run's end
    to the look that saw it, and that look to the next window's trigger (medians, seconds).
    ``runs``: one backfill's (their run ids start with its id), one daily window each."""
    bf = runs[0].run_id.partition("__")[0]
    seen = {(e["dag"], e["idx"], e["state"]): e["ts"] for _, e in record.events(bf) if e.get("kind") == "window"}
    to_seen, to_trigger = [], []
    for dag_runs in by_dag(runs).values():
        for idx, r in enumerate(dag_runs):  # daily windows run in order: start order is window order
            saw, nxt = seen.get((r.dag_id, idx, "success")), seen.get((r.dag_id, idx + 1, "triggered"))
            if saw and nxt:
                to_seen.append(saw - r.end_date.timestamp())
                to_trigger.append(nxt - saw)
    return (
        f"run end → seen {statistics.median(to_seen):.2f} s (max {max(to_seen):.2f}), "
        f"seen → next trigger {statistics.median(to_trigger):.2f} s (max {max(to_trigger):.2f})"
    )


def b1(airflow: AirflowClient, tasks: ModuleType, *, rounds: int) -> list[Figure]:
    _settle(airflow, B1_DAGS)
    dates = DateAllocator(airflow, B1_DAGS)
    native_wall, ours_wall, native_gap, ours_gap, ratios = [], [], [], [], []
    for r in range(rounds):
        # Alternate who goes first, so drift on a shared machine does not favour either.
        order = ("native", "ours") if r % 2 == 0 else ("ours", "native")
        walls: dict[str, float] = {}
        for who in order:
            start = dates.take(B1_WINDOWS)
            t0, runs = native_round(airflow, start) if who == "native" else ours_round(airflow, tasks, start)
            wall, g = max(r.end_date.timestamp() for r in runs) - t0, gaps(runs)
            (native_gap if who == "native" else ours_gap).append(statistics.median(g))
            walls[who] = wall
            print(f"  B1 round {r + 1} {who:6}: wall {wall:6.1f} s, median gap {statistics.median(g):.2f} s, "
                  f"{breakdown(runs, t0)}", flush=True)  # fmt: skip
            if who == "ours":
                print(f"    ours: {handoffs(tasks.context().record, runs)}", flush=True)
            _settle(airflow, B1_DAGS)
        native_wall.append(walls["native"])
        ours_wall.append(walls["ours"])
        ratios.append(walls["ours"] / walls["native"])
    gap_target = statistics.median(native_gap) + 0.15
    return [
        Figure("B1", "wall time, ours / native (per round)", ratios, 1.05, "x"),
        Figure(
            "B1",
            "median end→next start gap, ours",
            ours_gap,
            round(gap_target, 3),
            "s",
            note="target: native's median gap + 0.15 s",
        ),
        Figure("B1", "median end→next start gap, native (reference)", native_gap, float("inf"), "s"),
        Figure("B1", "wall time, ours", ours_wall, float("inf"), "s"),
        Figure("B1", "wall time, native (reference)", native_wall, float("inf"), "s"),
    ]


def b2(airflow: AirflowClient, tasks: ModuleType, *, windows_2s: int = 8, windows_60s: int = 4) -> list[Figure]:
    """Both DAGs in one backfill-pair at once (different DAGs run in parallel). A window's own
    requests are counted by its client (``api_calls``); the watcher's lists serve every window
    in flight, so each window is charged an equal share of the lists made meanwhile."""
    dags = {"bench_run_2s": windows_2s, "bench_run_60s": windows_60s}
    dates = DateAllocator(airflow, list(dags))
    parking = tasks.context().parking
    lists0 = parking.lists()
    subs = {}
    for dag, n in dags.items():
        start = dates.take(n)
        subs[dag] = tasks.submit_backfill.delay([dag], start.isoformat(), (start + timedelta(days=n)).isoformat())
    record = tasks.context().record
    own: dict[str, list[float]] = {}
    for dag, sub in subs.items():
        bf = sub.get(timeout=60)["backfill_id"]
        meta = wait_backfill(tasks, bf, 1200)
        assert meta["state"] == "succeeded", meta
        recs = record.windows(bf, dag).values()
        assert all(w.api_calls is not None for w in recs), "a window ended without its request count"
        own[dag] = [float(w.api_calls or 0) for w in recs]
    lists = parking.lists() - lists0
    share = lists / sum(dags.values())
    out = []
    for dag, calls in own.items():
        total = [c + share for c in calls]
        print(f"  B2 {dag}: own requests per window {sorted(calls)}, + {share:.2f} of the watcher's {lists} "
              f"lists each", flush=True)  # fmt: skip
        out.append(Figure("B2", f"Airflow requests per window, {dag[10:]} task", total, 4, "requests",
                          note=f"its own median {statistics.median(calls):g} + {share:.2f} lists of the watcher "
                          f"({lists} over the {sum(dags.values())} windows of both DAGs)"))  # fmt: skip
    return out
