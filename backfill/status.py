"""A backfill's status, read from its record: a dict for scripts and a text view for people."""

from __future__ import annotations

from typing import Any

from backfill.airflow import AirflowClient
from backfill.record import Record
from backfill.states import FINISHED, IN_FLIGHT, TERMINAL, WindowState
from backfill.timefmt import clock, span
from backfill.verify import describe, serial_check


def status(record: Record, bf: str, *, events: bool = False, airflow: AirflowClient | None = None) -> dict[str, Any]:
    """``airflow``: also check from Airflow's run records that each DAG's runs were serial
    (``backfill.verify``): per DAG, ``serial`` is ``{"checked": n, "overlaps": [...]}``."""
    params = record.params(bf)
    checks = serial_check(airflow, record, bf) if airflow is not None else {}
    meta = record.meta(bf)
    dags = []
    for dag in params.dags:
        info = record.dag(bf, dag)
        counts = {s: int(info.get(s, 0)) for s in sorted(TERMINAL)}
        current = None
        if "current" in info:
            idx = int(info["current"])
            window = params.spec.window(idx)
            detail = record.window(bf, dag, idx)
            current = {
                "seq": params.seq_of(idx, dag) + 1,
                "start": window.start.isoformat(),
                "end": window.end.isoformat(),
                "state": detail.get("state"),
                "run_id": detail.get("run"),
                "reason": detail.get("reason") or None,
            }
        failures = [
            {"start": params.spec.window(i).start.isoformat(), "run_id": w.get("run"), "reason": w.get("reason")}
            for i, w in sorted(record.windows(bf, dag).items())
            if w.get("state") == WindowState.FAILED
        ]
        dags.append(
            {
                "dag_id": dag,
                "state": info.get("state", "pending"),
                "total": params.count(dag),
                "done": sum(counts.values()),
                "counts": counts,
                "current": current,
                "failures": failures,
                "serial": checks.get(dag),
            }
        )
    out: dict[str, Any] = {
        "backfill_id": bf,
        "state": "cancelling" if meta.get("cancelled") == "1" and meta.get("state") == "running" else meta["state"],
        "created_at": float(meta["created_at"]),
        "finished_at": float(meta["finished_at"]) if meta.get("finished_at") else None,
        "params": {
            "dags": params.dags,
            "start": params.start,
            "end": params.end,
            "batch": params.batch,
            "tz": params.tz,
            "reverse": params.reverse,
            "on_failure": params.on_failure,
            "reprocess": params.reprocess,
        },
        "dags": dags,
    }
    if events:
        out["events"] = [e for _, e in record.events(bf)]
    return out


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render(data: dict[str, Any]) -> str:
    p = data["params"]
    lines = [
        f"backfill {data['backfill_id']}  {data['state'].upper()}",
        f"  {p['batch']} windows over [{p['start']}, {p['end']}), "
        f"{'newest' if p['reverse'] else 'oldest'} first, on_failure={p['on_failure']}, reprocess={p['reprocess']}",
        f"  created {clock(data['created_at'])} UTC"
        + (f", finished {clock(data['finished_at'])} UTC" if data["finished_at"] else ""),
        "",
    ]
    width = max(len(d["dag_id"]) for d in data["dags"])
    for d in data["dags"]:
        c = d["counts"]
        line = f"  {d['dag_id']:<{width}}  {_bar(d['done'], d['total'])} {d['done']:>5}/{d['total']:<5} {d['state']:<9}"
        extras = [f"{c[k]} {k.replace('_', ' ')}" for k in ("failed", "skipped", "not_run", "cancelled") if c[k]]
        if extras:
            line += " (" + ", ".join(extras) + ")"
        cur = d["current"]
        if cur and d["state"] not in FINISHED:
            line += f"\n  {'':<{width}}  now #{cur['seq']} [{cur['start']}, {cur['end']}) {cur['state']}"
            if cur["run_id"]:
                line += f" run={cur['run_id']}"
            if cur["reason"] and cur["state"] in (WindowState.WAITING, *IN_FLIGHT):
                line += f"\n  {'':<{width}}  waiting: {cur['reason']}"
        if d.get("serial") is not None:
            line += "".join(f"\n  {'':<{width}}  {text}" for text in describe(d["serial"]))
        lines.append(line)
    failures = [(d["dag_id"], f) for d in data["dags"] for f in d["failures"]]
    if failures:
        lines += ["", "  failures:"]
        lines += [
            f"    {dag} {f['start']}" + (f" run={f['run_id']}" if f["run_id"] else "") + f": {f['reason']}"
            for dag, f in failures
        ]
    for e in data.get("events", []):
        if e.get("kind") == "window":
            extra = f" run={e['run']}" if e.get("run") else ""
            why = f" ({e['reason']})" if e.get("reason") else ""
            lines.append(f"  {clock(e['ts'])} {e['dag']} [{e['start']}, {e['end']}) {e['state']}{extra}{why}")
        else:
            lines.append(f"  {clock(e['ts'])} {e.get('dag') or 'backfill'} {e['state']}")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    return "unknown (no successful run yet)" if seconds is None else span(seconds, digits=0)


def render_plan(data: dict[str, Any], *, max_rows: int = 10) -> str:
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
        lines.append(f"  {d['dag_id']}: {d['count']} window(s), Airflow: {d['airflow']}{sched}{est}")
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
