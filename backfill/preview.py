"""What a backfill will do, before it does it: its windows per DAG in run order, what each
window does about the runs its DAG already has (new run, skip, re-run, wait or conflict:
``backfill.history``), what Airflow says of each DAG, and an estimated duration. Nothing is
triggered or recorded."""

from __future__ import annotations

import statistics
import time
from typing import Any

from backfill.airflow import AirflowClient
from backfill.eta import estimate
from backfill.history import Verdict, survey_all
from backfill.model import BackfillParams
from backfill.pacing import Pace
from backfill.record import DagRecord, WindowRecord
from backfill.request import concurrency_warnings, refusals, with_schedules
from backfill.states import DagState, WindowState
from backfill.timefmt import span


def preview(
    airflow: AirflowClient, params: BackfillParams, *, unpause: bool = False, global_limit: int = 0
) -> dict[str, Any]:
    """What ``params`` will do (``backfill plan``, ``dry_run=True``). ``problems`` lists what
    would make the submit refuse it, ``warnings`` what the user should know (a DAG that lets
    others run beside ours)."""
    infos, unknown, paused = refusals(airflow, params.dags, unpause=unpause)
    params = with_schedules(params, infos)
    dags: list[dict[str, Any]] = []
    problems = [f"{dag}: unknown to Airflow at {airflow.config.url}" for dag in unknown]
    surveyed = survey_all(airflow, params, [d for d in params.dags if d in infos])
    for dag in params.dags:
        info = infos.get(dag)
        if info is None:
            dags.append({"dag_id": dag, "airflow": "unknown", **_windows(params, dag), **_no_estimate()})
            continue
        status = "ok"
        if info.is_paused:
            status = "paused" if dag in paused else "paused (will be unpaused)"
            if dag in paused:
                problems.append(f"{dag}: paused in Airflow (submit with --unpause / unpause=True to unpause it)")
        schedule = params.schedule_of(dag)
        verdicts = surveyed[dag]
        conflicts = sum(v.action == "conflict" for v in verdicts)
        if conflicts and params.on_conflict == "refuse":
            problems.append(
                f"{dag}: {conflicts} window(s) conflict with existing runs (use a batch matching the DAG's "
                "schedule, or --on-conflict skip / on_conflict='skip')"
            )
        dags.append({
            "dag_id": dag, "airflow": status, "schedule": schedule.describe(), "max_active_runs": info.max_active_runs,
            "after": (params.after or {}).get(dag, []),
            **_windows(params, dag), **_history(params, dag, verdicts),
            # Skipped windows and conflicts trigger nothing: only the others take time.
            **_estimate(airflow, dag, sum(v.action in ("new", "rerun", "wait") for v in verdicts)),
        })  # fmt: skip
    return {
        "dry_run": True,
        "dags": dags,
        **params.outline(),
        "estimated_seconds": _with_gates(
            params, dags, _overall(dags, params.max_parallel_dags, global_limit, params.after)
        ),
        "problems": problems,
        "warnings": concurrency_warnings(infos),
    }


def _history(params: BackfillParams, dag: str, verdicts: list[Verdict]) -> dict[str, Any]:
    """Per window in run order, what exists at its logical date and what the window will do
    (``new`` for a window no run stands in the way of), with counts per action."""
    actions = []
    counts = dict.fromkeys(("new", "skip", "rerun", "wait", "conflict"), 0)
    for verdict in verdicts:
        action = verdict.action
        if action == "conflict" and params.on_conflict == "skip":
            action = "skip"
        counts[action if action in counts else "new"] += 1
        run = verdict.run
        actions.append({
            "action": action, "reason": verdict.reason or None, "run_id": run.run_id if run else None,
            "run_state": run.state if run else None, "run_type": run.run_type if run else None,
        })  # fmt: skip
    return {"actions": actions, "counts": counts}


def _windows(params: BackfillParams, dag: str) -> dict[str, Any]:
    order = [params.spec.window(i) for i in params.indices(dag)]
    return {"count": len(order), "windows": [[w.start.isoformat(), w.end.isoformat()] for w in order]}


def _no_estimate() -> dict[str, Any]:
    return {"recent_runs": 0, "median_run_seconds": None, "estimated_seconds": None}


def _estimate(airflow: AirflowClient, dag: str, runs: int) -> dict[str, Any]:
    # From trigger (queued_at) to end: a window costs the scheduler's pick-up time too.
    took = []
    for r in airflow.recent_successes(dag):
        began = r.queued_at or r.start_date
        if r.end_date and began:
            took.append((r.end_date - began).total_seconds())
    if not took:
        return _no_estimate()
    median = statistics.median(took)
    return {
        "recent_runs": len(took),
        "median_run_seconds": round(median, 1),
        "estimated_seconds": round(median * runs, 1),
    }


def _overall(
    dags: list[dict[str, Any]], max_parallel: int, global_limit: int, after: dict[str, list[str]] | None = None
) -> float | None:
    """DAGs run side by side, so the longest DAG bounds the whole; with a limit of k DAGs at
    once, so does the total work divided by k. With ``after``, a window of a DAG ends no sooner
    than its DAG's previous window and the same window of each upstream DAG, plus its own run
    (the critical path through the order)."""
    each = [d["estimated_seconds"] for d in dags]
    if not each or any(e is None for e in each):
        return None
    limits = [k for k in (max_parallel, global_limit) if k > 0]
    bound = sum(each) / min(limits) if limits else 0.0
    return float(round(max(max(each), bound, _critical_path(dags, after or {})), 1))


def _with_gates(params: BackfillParams, dags: list[dict[str, Any]], overall: float | None) -> float | None:
    """``overall``, or longer when the windows laid out as ``backfill.eta`` does (a handoff
    between windows, quiet hours, the hourly cap, the order) end later."""
    if overall is None or not all(d.get("actions") is not None for d in dags):
        return overall
    infos, recs = {}, {}
    for d in dags:
        dag = d["dag_id"]
        infos[dag] = DagRecord(state=DagState.RUNNING, total=d["count"], pace=Pace(total=d["median_run_seconds"]))
        runs_nothing = [a["action"] not in ("new", "rerun", "wait") for a in d["actions"]]
        recs[dag] = {i: WindowRecord(state=WindowState.SKIPPED) for i, skip in zip(params.indices(dag), runs_nothing,
                                                                                    strict=True) if skip}  # fmt: skip
    now = time.time()
    _, end = estimate(params, infos, recs, now)
    return overall if end is None else float(round(max(overall, end - now), 1))


def _critical_path(dags: list[dict[str, Any]], after: dict[str, list[str]]) -> float:
    if not after:
        return 0.0
    by_id = {d["dag_id"]: d for d in dags}
    ends: dict[str, dict[str, float]] = {}  # DAG -> window start -> when it ends

    def of(dag: str) -> dict[str, float]:
        if dag not in ends:
            d, t, out = by_id[dag], 0.0, {}
            actions = d.get("actions") or [{"action": "new"}] * len(d["windows"])
            for (start, _), act in zip(d["windows"], actions, strict=True):
                ready = max([t] + [of(u).get(start, 0.0) for u in after.get(dag, []) if u in by_id])
                took = d["median_run_seconds"] if act["action"] in ("new", "rerun", "wait") else 0.0
                t = out[start] = ready + took
            ends[dag] = out
        return ends[dag]

    return max((max(of(d).values(), default=0.0) for d in by_id), default=0.0)


def render(data: dict[str, Any], *, max_rows: int = 10) -> str:
    """The text view of ``backfill plan``."""
    limit = f", at most {data['max_parallel_dags']} DAG(s) at once" if data["max_parallel_dags"] else ""
    lines = [
        f"plan: {len(data['dags'])} DAG(s), {data['windows']} {data['batch']} window(s) over "
        f"[{data['range'][0]}, {data['range'][1]}), {data['order']}, one window at a time per DAG{limit}",
        f"estimated duration: {_duration(data['estimated_seconds'])}",
        "nothing has been triggered",
        "",
    ]
    for d in data["dags"]:
        est = ""
        if d["median_run_seconds"] is not None:
            est = f", ~{_duration(d['estimated_seconds'])} "
            est += f"({d['median_run_seconds']} s/run over {d['recent_runs']} recent runs)"
        sched = f", schedule {d['schedule']}" if d.get("schedule") else ""
        order = f", after {', '.join(d['after'])}" if d.get("after") else ""
        lines.append(f"  {d['dag_id']}: {d['count']} window(s){order}, Airflow: {d['airflow']}{sched}{est}")
        counts = d.get("counts")
        if counts:
            lines.append("    " + ", ".join(f"{n} {_COUNT_WORDS[a]}" for a, n in counts.items() if n))
        actions = d.get("actions") or [{"action": "new"}] * len(d["windows"])
        shown = list(zip(d["windows"], actions, strict=True))
        shown = shown if max_rows <= 0 else shown[:max_rows]
        for i, (w, act) in enumerate(shown, 1):
            what = _ACTION_WORDS[act["action"]]
            detail = f": {act['reason']}" if act.get("reason") else ""
            lines.append(f"    {i:>5}. [{w[0]}, {w[1]})  {what}{detail}")
        if len(d["windows"]) > len(shown):
            lines.append(f"    ... {len(d['windows']) - len(shown)} more (--max-rows 0 lists all)")
    if data.get("warnings"):
        lines += ["", "warnings:"] + [f"  {w}" for w in data["warnings"]]
    if data["problems"]:
        lines += ["", "problems:"] + [f"  {p}" for p in data["problems"]]
    return "\n".join(lines)


_ACTION_WORDS = {"new": "new run", "skip": "skip", "rerun": "re-run", "wait": "wait", "conflict": "CONFLICT"}
_COUNT_WORDS = {"new": "new", "skip": "skipped", "rerun": "re-run", "wait": "wait for a run in flight",
                "conflict": "conflict(s)"}  # fmt: skip


def _duration(seconds: float | None) -> str:
    return "unknown (no successful run yet)" if seconds is None else span(seconds, digits=0)
