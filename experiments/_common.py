"""What every experiment shares: findings, the fresh logical dates they use, triggering and
waiting through a busy Airflow, and measuring overlaps."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_client.client import TaskInstanceApi

from backfill.airflow import AirflowClient, RunInfo
from backfill.errors import AirflowNotFound, AirflowUnavailable
from backfill.windows import Window


@dataclass
class Finding:
    requirement: str
    met: bool
    evidence: str


@dataclass
class Experiment:
    title: str
    setup: str
    runs: list[RunInfo] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


# -- helpers ------------------------------------------------------------------------------


def fresh_day(airflow: AirflowClient, dag: str, *, month_start: bool = False) -> datetime:
    """A logical date after every run the DAG holds (experiments can be run again)."""
    last = airflow.latest_run(dag, until=datetime(2020, 1, 1, tzinfo=UTC))
    latest = max([last.logical_date] if last and last.logical_date else [datetime(2001, 1, 1, tzinfo=UTC)])
    day = (latest + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    if month_start:
        day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    if day.year >= 2020:  # scheduled runs hold recent dates; experiments use 2001-2019
        raise RuntimeError(f"{dag}: no past logical date left; use a fresh Airflow")
    return day


def trigger(airflow: AirflowClient, dag: str, day: datetime, run_id: str, conf: dict[str, Any] | None = None) -> None:
    for attempt in range(10):
        try:
            airflow.trigger(dag, run_id, Window(day, day + timedelta(days=1)), conf=conf or {})
            return
        except AirflowUnavailable:  # SQLite under load answers 500 "Database error" now and then
            time.sleep(1)
            with contextlib.suppress(AirflowNotFound, AirflowUnavailable):
                airflow.get_run(dag, run_id)
                return  # it went through
            if attempt == 9:
                raise


def wait_runs(airflow: AirflowClient, dag: str, prefix: str, count: int, timeout: float = 180) -> list[RunInfo]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = airflow.runs_by_prefix(dag, prefix)
        if len(runs) >= count and not any(r.active for r in runs):
            return sorted(runs, key=lambda r: r.logical_date)
        time.sleep(1)
    raise TimeoutError(f"{dag}: runs {prefix}* did not end within {timeout:.0f} s")


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of [start, end) intervals covering one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    return max(itertools.accumulate(d for _, d in events), default=0)


def spans(runs: list[RunInfo]) -> list[tuple[datetime, datetime]]:
    return [(r.start_date, r.end_date) for r in runs if r.start_date and r.end_date]


def new_tag() -> str:
    return f"exp{int(time.time() * 1000) % 10**9}"


def task_instances(airflow: AirflowClient, dag: str, run_id: str = "~", task_id: str | None = None) -> list[Any]:
    """A run's task instances (``~``: every run's), through the API."""
    api = TaskInstanceApi(airflow.api_client)
    kwargs = {"task_id": task_id} if task_id else {}
    return list(airflow._call("task instances", api.get_task_instances, dag, run_id, **kwargs).task_instances)
