"""B1 and B2: against a real ``airflow standalone`` 3.3 with the DAGs in ``bench/dags``.

Airflow runs on a private PostgreSQL (``BenchStack.start_airflow``).

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
from bench.common import Figure, gaps, wait_backfill, wait_until

B1_DAGS = ["bench_daily_1", "bench_daily_2", "bench_daily_3"]
B1_WINDOWS = 10


class DateAllocator:
    """Fresh, never-used logical dates for each backfill (after every run the DAGs hold)."""

    def __init__(self, airflow: AirflowClient, dags: list[str]) -> None:
        latest = datetime(2001, 1, 1, tzinfo=UTC)
        for dag in dags:
            page = airflow._call(
                "latest run", airflow._runs.get_dag_runs, dag, order_by=["-logical_date"], limit=1,
                logical_date_lte=datetime(2020, 1, 1, tzinfo=UTC),
            )  # fmt: skip
            for run in page.dag_runs:
                if run.logical_date and run.logical_date >= latest:
                    latest = run.logical_date + timedelta(days=1)
        self.next = latest

    def take(self, days: int) -> datetime:
        start = self.next
        self.next = start + timedelta(days=days + 1)
        return start


def _runs_between(airflow: AirflowClient, dag: str, start: datetime, days: int) -> list[RunInfo]:
    page = airflow._call(
        "runs", airflow._runs.get_dag_runs, dag, logical_date_gte=start,
        logical_date_lte=start + timedelta(days=days - 1), limit=100,
    )  # fmt: skip
    return [RunInfo.from_api(r) for r in page.dag_runs]


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


def native_round(airflow: AirflowClient, start: datetime) -> tuple[float, list[float]]:
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
    return max(r.end_date.timestamp() for r in runs) - t0, gaps(runs)


def _has_backfill(airflow: AirflowClient, api: BackfillApi, dag: str, start: datetime) -> bool:
    page = airflow._call("backfills", api.list_backfills, dag, limit=100)
    return any(b.from_date == start for b in page.backfills)


def scheduler_alive(airflow: AirflowClient) -> None:
    health = airflow._call("health", MonitorApi(airflow.api_client).get_health)
    if health.scheduler.status != "healthy":
        raise RuntimeError(f"Airflow's scheduler is {health.scheduler.status}: see .stack/bench/airflow/airflow.log")


def ours_round(airflow: AirflowClient, tasks: ModuleType, start: datetime) -> tuple[float, list[float]]:
    t0 = time.time()
    end = start + timedelta(days=B1_WINDOWS)
    bf = tasks.submit_backfill.delay(B1_DAGS, start.isoformat(), end.isoformat(), "daily").get(timeout=60)
    meta = wait_backfill(tasks, bf["backfill_id"], 600)
    assert meta["state"] == "succeeded", meta
    runs = _wait_runs(airflow, start)
    assert all(r.run_id.startswith(bf["backfill_id"]) for r in runs)
    return max(r.end_date.timestamp() for r in runs) - t0, gaps(runs)


def _wait_runs(airflow: AirflowClient, start: datetime) -> list[RunInfo]:
    def done() -> list[RunInfo] | None:
        runs = [r for dag in B1_DAGS for r in _runs_between(airflow, dag, start, B1_WINDOWS)]
        finished = len(runs) == len(B1_DAGS) * B1_WINDOWS and all(r.state in ("success", "failed") for r in runs)
        return runs if finished else None

    runs = wait_until(done, 600, "B1 runs", every=0.5)
    bad = [r.run_id for r in runs if r.state != "success"]
    assert not bad, f"runs failed: {bad}"
    return runs


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
            if who == "native":
                wall, g = native_round(airflow, start)
                native_gap.append(statistics.median(g))
            else:
                wall, g = ours_round(airflow, tasks, start)
                ours_gap.append(statistics.median(g))
            walls[who] = wall
            print(
                f"  B1 round {r + 1} {who:6}: wall {wall:6.1f} s, median gap {statistics.median(g):.2f} s", flush=True
            )
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
    """Both DAGs in one backfill-pair at once (different DAGs run in parallel)."""
    dags = {"bench_run_2s": windows_2s, "bench_run_60s": windows_60s}
    dates = DateAllocator(airflow, list(dags))
    subs = {}
    for dag, n in dags.items():
        start = dates.take(n)
        subs[dag] = tasks.submit_backfill.delay([dag], start.isoformat(), (start + timedelta(days=n)).isoformat())
    record = tasks.context().record
    out = []
    for dag, sub in subs.items():
        bf = sub.get(timeout=60)["backfill_id"]
        meta = wait_backfill(tasks, bf, 1200)
        assert meta["state"] == "succeeded", meta
        calls = [float(w["api_calls"]) for w in record.windows(bf, dag).values()]
        print(f"  B2 {dag}: requests per window {sorted(calls)}", flush=True)
        limit = 10 if dag == "bench_run_2s" else 20
        out.append(Figure("B2", f"Airflow requests per window, {dag[10:]} task", calls, limit, "requests"))
    return out
