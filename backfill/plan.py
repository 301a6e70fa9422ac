"""What a backfill will do, before it does it: its windows per DAG in run order, what Airflow
says of each DAG, and an estimated duration. Nothing is triggered or recorded."""

from __future__ import annotations

import statistics
from typing import Any

from backfill.airflow import AirflowClient
from backfill.errors import AirflowNotFound
from backfill.record import BackfillParams


def plan(
    airflow: AirflowClient, params: BackfillParams, *, unpause: bool = False, global_limit: int = 0
) -> dict[str, Any]:
    """The plan of ``params``; ``problems`` lists what would make the submit refuse it."""
    dags: list[dict[str, Any]] = []
    problems: list[str] = []
    for dag in params.dags:
        try:
            info = airflow.get_dag(dag)
        except AirflowNotFound:
            problems.append(f"{dag}: unknown to Airflow at {airflow.config.url}")
            dags.append({"dag_id": dag, "airflow": "unknown", **_windows(params, dag), **_no_estimate()})
            continue
        status = "ok"
        if info.is_paused:
            status = "paused (will be unpaused)" if unpause else "paused"
            if not unpause:
                problems.append(f"{dag}: paused in Airflow (submit with --unpause / unpause=True to unpause it)")
        dags.append({"dag_id": dag, "airflow": status, **_windows(params, dag), **_estimate(airflow, params, dag)})
    return {
        "dry_run": True,
        "dags": dags,
        "windows": params.total,
        "batch": params.batch,
        "range": [params.start, params.end],
        "order": "newest first" if params.reverse else "oldest first",
        "max_parallel_dags": params.max_parallel_dags,
        "estimated_seconds": _overall(dags, params.max_parallel_dags, global_limit),
        "problems": problems,
    }


def _windows(params: BackfillParams, dag: str) -> dict[str, Any]:
    order = [params.spec.window(i) for i in params.indices(dag)]
    return {"count": len(order), "windows": [[w.start.isoformat(), w.end.isoformat()] for w in order]}


def _no_estimate() -> dict[str, Any]:
    return {"recent_runs": 0, "median_run_seconds": None, "estimated_seconds": None}


def _estimate(airflow: AirflowClient, params: BackfillParams, dag: str) -> dict[str, Any]:
    # From trigger (queued_at) to end: a window costs the scheduler's pick-up time too.
    took = [
        (r.end_date - (r.queued_at or r.start_date)).total_seconds()
        for r in airflow.recent_successes(dag)
        if r.end_date and (r.queued_at or r.start_date)
    ]
    if not took:
        return _no_estimate()
    median = statistics.median(took)
    return {
        "recent_runs": len(took),
        "median_run_seconds": round(median, 1),
        "estimated_seconds": round(median * params.count(dag), 1),
    }


def _overall(dags: list[dict[str, Any]], max_parallel: int, global_limit: int) -> float | None:
    """DAGs run side by side, so the longest DAG bounds the whole; with a limit of k DAGs at
    once, so does the total work divided by k."""
    each = [d["estimated_seconds"] for d in dags]
    if not each or any(e is None for e in each):
        return None
    limits = [k for k in (max_parallel, global_limit) if k > 0]
    bound = sum(each) / min(limits) if limits else 0.0
    return round(max(max(each), bound), 1)
