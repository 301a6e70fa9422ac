"""Were a backfill's runs really serial? The answer from Airflow's own run records.

The orchestrator triggers a DAG's next window only when the DAG has no queued or running run.
But a DAG with ``max_active_runs > 1`` lets its scheduler (or a person) start a run while one
of ours runs, and nothing outside Airflow can forbid that. So ``status`` and ``report`` check:
for each DAG, every run that ran during the backfill (by Airflow's start and end dates), and
any pair of runs, one of them ours, whose running times overlap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from backfill.airflow import AirflowClient, RunInfo
from backfill.record import Record


def serial_check(airflow: AirflowClient, record: Record, bf: str) -> dict[str, dict[str, Any]]:
    """Per DAG: ``{"checked": n, "overlaps": [...]}``, ``checked`` being how many of our runs
    Airflow has dates for. An empty ``overlaps`` means serial, verified from Airflow's records."""
    params = record.params(bf)
    meta = record.meta(bf)
    now = datetime.now(UTC)
    since = datetime.fromtimestamp(float(meta["created_at"]), UTC)
    until = datetime.fromtimestamp(float(meta["finished_at"]), UTC) if meta.get("finished_at") else now
    out: dict[str, dict[str, Any]] = {}
    for dag in params.dags:
        # Runs a window triggered or re-ran (not the runs a skipped or conflicting window names).
        ours_ids = {w.run for w in record.windows(bf, dag).values() if w.run and w.triggered_at}
        ran = sorted(
            (r for r in airflow.runs_active_between(dag, since, until) if r.start_date is not None),
            key=lambda r: _span(r, now),
        )
        out[dag] = {"checked": sum(r.run_id in ours_ids for r in ran), "overlaps": _overlaps(ran, ours_ids, now)}
    return out


def _overlaps(ran: list[RunInfo], ours_ids: set[str], now: datetime) -> list[dict[str, Any]]:
    """Pairs (one of them ours) whose running times overlap; ``ran`` sorted by start. One sweep:
    each run meets only the runs still running when it starts."""
    found: list[dict[str, Any]] = []
    running: list[RunInfo] = []
    for run in ran:
        start = _span(run, now)[0]
        running = [r for r in running if _span(r, now)[1] > start]
        found += [_overlap(r, run, ours_ids, now) for r in running if ours_ids & {r.run_id, run.run_id}]
        running.append(run)
    return found


def _span(run: RunInfo, now: datetime) -> tuple[datetime, datetime]:
    return run.start_date or now, run.end_date or now


def _overlap(a: RunInfo, b: RunInfo, ours_ids: set[str], now: datetime) -> dict[str, Any]:
    ours, other = (a, b) if a.run_id in ours_ids else (b, a)
    return {
        "ours": ours.run_id,
        "ours_span": [d.isoformat() for d in _span(ours, now)],
        "other": other.run_id,
        "other_type": other.run_type,
        "other_ours": other.run_id in ours_ids,
        "other_span": [d.isoformat() for d in _span(other, now)],
    }


def describe(check: dict[str, Any]) -> list[str]:
    """Text lines for one DAG's check."""
    if not check["overlaps"]:
        return [f"serial, verified from Airflow's records ({check['checked']} run(s) of ours)"]
    return [
        f"OVERLAP: our run {o['ours']} [{o['ours_span'][0]}, {o['ours_span'][1]}] ran at the same time as "
        f"{'our' if o['other_ours'] else 'another'} run {o['other']} ({o['other_type']}) "
        f"[{o['other_span'][0]}, {o['other_span'][1]}]"
        for o in check["overlaps"]
    ]
