"""B1's arithmetic on Airflow's run records (bench/): gaps per DAG and where a round's time went."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backfill.airflow import RunInfo
from bench.airflow_benches import breakdown
from bench.common import by_dag, gaps

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def run(dag: str, start: float, end: float) -> RunInfo:
    s, e = T0 + timedelta(seconds=start), T0 + timedelta(seconds=end)
    return RunInfo(
        dag_id=dag, run_id=f"bf__{dag}_{start}", state="success", run_type="manual", logical_date=s,
        data_interval_start=s, data_interval_end=e, start_date=s, end_date=e, queued_at=s, conf={},
    )  # fmt: skip


def test_gaps_are_per_dag_in_start_order_whatever_the_input_order():
    runs = [run("b", 0.5, 2.0), run("a", 4.0, 6.0), run("a", 0.0, 3.0), run("b", 3.0, 5.5)]
    assert [r.start_date for r in by_dag(runs)["a"]] == [T0, T0 + timedelta(seconds=4)]
    assert sorted(gaps(runs)) == [1.0, 1.0]


def test_breakdown_adds_up_to_the_slowest_dags_wall_time():
    runs = [run("a", 0.5, 2.5), run("a", 3.5, 5.5), run("b", 0.2, 1.0)]
    # a: first start 0.5 + runs 2 + 2 + gap 1 = its last end, 5.5 s after t0
    assert breakdown(runs, T0.timestamp()) == "slowest DAG: first start 0.50 + runs 4.00 + gaps 1.00 (max 1.00)"
