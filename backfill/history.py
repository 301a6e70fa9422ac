"""The runs a DAG already has, and what each window does about them.

Airflow keeps one run per DAG and logical date, and a window's logical date is its start. So
at most one existing run can stand in a window's way; ``decide`` says what the window does:

- ``new``: no run holds the date: trigger the window's own run;
- ``follow``: the run is ours (same run id): follow it;
- ``wait``: it is this window's run, queued or running: wait until it ends;
- ``skip`` / ``rerun``: it ended and is this window's run: ``reprocess`` decides, as in
  Airflow's native backfill (``none`` skips, ``failed`` re-runs a failed one, ``completed``
  re-runs every ended one); a re-run clears the existing run;
- ``conflict``: it covers something else than the window (weekly windows over a
  daily DAG's history): re-running it would process another interval, and a second run at
  that date is impossible. Refused at submit (``on_conflict="refuse"``) or skipped
  (``on_conflict="skip"``); one that appears after the submit fails its window.

A run "is" a window's run when its data interval is the window, or when it has no data
interval (Airflow 3's default timetables for cron and timedelta schedules record runs as
``[logical date, logical date]``) and the window is exactly one period of the DAG's schedule
(``backfill.schedule``). ``survey`` applies this to every window of a backfill with one
paged listing of the DAG's runs in the range, for ``plan`` and for ``submit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backfill.airflow import AirflowClient, RunInfo
from backfill.model import BackfillParams
from backfill.schedule import Schedule
from backfill.states import RunState
from backfill.windows import Window

ON_CONFLICT = ("refuse", "skip")


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str
    run: RunInfo | None = None
    reason: str = ""


def is_windows_run(run: RunInfo, window: Window, schedule: Schedule) -> bool:
    if run.covers(window):
        return True
    return _no_interval(run) and run.logical_date == window.start and schedule.is_period(window.start, window.end)


def decide(
    run: RunInfo | None,
    window: Window,
    *,
    own_run_id: str,
    schedule: Schedule,
    reprocess: str,
    lineage: Iterable[str] = (),
) -> Verdict:
    if run is None:
        return Verdict("new")
    if run.run_id == own_run_id:
        return Verdict("follow", run)
    if not is_windows_run(run, window, schedule):  # in flight or not, it will never be this window's
        return Verdict("conflict", run, conflict_reason(run, window, schedule))
    if run.active:
        return Verdict("wait", run, f"logical date {window.key} held by run {run.run_id} ({run.state})")
    earlier = run.run_id.partition("__")[0] in set(lineage)
    if earlier and run.state == RunState.SUCCESS:
        return Verdict("skip", run, f"already succeeded in run {run.run_id} of an earlier attempt")
    if earlier or reprocess == "completed" or (reprocess == "failed" and run.state == RunState.FAILED):
        return Verdict("rerun", run, f"re-running existing run {run.run_id} (was {run.state}, reprocess={reprocess})")
    outcome = "succeeded" if run.state == RunState.SUCCESS else run.state
    return Verdict("skip", run, f"already {outcome} in run {run.run_id} (reprocess={reprocess})")


def conflict_reason(run: RunInfo, window: Window, schedule: Schedule) -> str:
    if _no_interval(run):
        covers = f"only its logical date (the DAG's schedule: {schedule.describe()})"
    else:
        covers = f"[{_iso(run.data_interval_start)}, {_iso(run.data_interval_end)})"
    return (
        f"logical date {window.key} is held by run {run.run_id} ({run.run_type}, {run.state}) covering "
        f"{covers}, not the window {window.label()}; Airflow allows one run per logical date "
        "(use a batch matching the DAG's schedule, skip such windows with on_conflict=skip, or delete that run)"
    )


def survey_all(airflow: AirflowClient, params: BackfillParams, dags: Sequence[str]) -> dict[str, list[Verdict]]:
    """``survey`` of each of ``dags`` (by ``params.schedule_of``), their runs in the range
    listed together (``AirflowClient.runs_between_many``: a few requests for a thousand DAGs)."""
    windows = {dag: [params.spec.window(i) for i in params.indices(dag)] for dag in dags}
    starts = [w.start for ws in windows.values() for w in ws]
    if not starts:
        return {dag: [] for dag in dags}
    listed = airflow.runs_between_many([d for d in dags if windows[d]], min(starts), max(starts))
    out: dict[str, list[Verdict]] = {}
    for dag, ws in windows.items():
        held = {r.logical_date: r for r in listed.get(dag, []) if r.logical_date is not None}
        schedule = params.schedule_of(dag)
        out[dag] = [
            decide(
                held.get(w.start),
                w,
                own_run_id=params.run_id(w),
                schedule=schedule,
                reprocess=params.reprocess,
                lineage=params.lineage,
            )
            for w in ws
        ]
    return out


def _no_interval(run: RunInfo) -> bool:
    start, end = run.data_interval_start, run.data_interval_end
    return start is None or end is None or start == end


def _iso(value: object) -> str:
    return value.isoformat() if value is not None else "none"  # type: ignore[attr-defined]
