"""Helpers for integration tests: every assertion reads Airflow's run records or Redis."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

from backfill.airflow import AirflowClient, RunInfo
from backfill.record import Record


def submit(orch: Any, **kwargs: Any) -> dict[str, Any]:
    return orch.tasks.submit_backfill.apply_async(kwargs=kwargs).get(timeout=60)


def wait_done(record: Record, bf: str, timeout: float = 180) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = record.meta(bf)
        if meta["state"] != "running":
            return meta
        time.sleep(0.5)
    raise AssertionError(f"backfill {bf} still running after {timeout} s: {record.meta(bf)}")


def runs(airflow: AirflowClient, dag: str, prefix: str) -> list[RunInfo]:
    """The DAG's runs whose id starts with ``prefix``, in order of logical date."""
    return airflow.runs_by_prefix(dag, prefix)


def by_trigger_time(rs: list[RunInfo]) -> list[RunInfo]:
    return sorted(rs, key=lambda r: r.queued_at)


def assert_serial(rs: list[RunInfo]) -> None:
    """Each run was triggered only after the previous one ended: never two at once on a DAG.

    ``queued_at`` is when the run was triggered, so this holds even where Airflow's own
    max_active_runs would have kept a second run queued.
    """
    ordered = by_trigger_time(rs)
    for prev, nxt in pairwise(ordered):
        assert prev.end_date is not None, f"{prev.run_id} never ended"
        assert nxt.queued_at >= prev.end_date, (
            f"{nxt.run_id} triggered at {nxt.queued_at} before {prev.run_id} ended at {prev.end_date}"
        )


def max_concurrent(rs: list[RunInfo]) -> int:
    """Most runs in flight at one moment, counting a run from its trigger to its end."""
    points = [(r.queued_at, 1) for r in rs] + [(r.end_date, -1) for r in rs]
    best = now = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        now += delta
        best = max(best, now)
    return best


def wait_for(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout} s")
