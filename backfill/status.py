"""A backfill's status, read from its record: a dict for scripts and a text view for people."""

from __future__ import annotations

from typing import Any

from backfill.airflow import AirflowClient
from backfill.record import Record
from backfill.states import FINISHED, IN_FLIGHT, DagState, WindowState
from backfill.timefmt import clock
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
        current = None
        if info.current is not None:
            idx = info.current
            window = params.spec.window(idx)
            detail = record.window(bf, dag, idx)
            current = {
                "seq": params.seq_of(idx, dag) + 1,
                "start": window.start.isoformat(),
                "end": window.end.isoformat(),
                "state": detail.state,
                "run_id": detail.run,
                "reason": detail.reason,
                "attempt": detail.attempt,
            }
        windows = record.windows(bf, dag)
        failures = [
            {"start": params.spec.window(i).start.isoformat(), "run_id": w.run, "reason": w.reason,
             "attempts": w.attempt}
            for i, w in sorted(windows.items())
            if w.state == WindowState.FAILED
        ]  # fmt: skip
        dags.append(
            {
                "dag_id": dag,
                "state": info.state,
                "total": params.count(dag),
                "done": info.done,
                "counts": info.counts,
                "current": current,
                "failures": failures,
                # Windows re-run after a failed attempt, and the attempts made past the first.
                "retried": sum(1 for w in windows.values() if w.attempt > 1),
                "retries_used": sum(w.attempt - 1 for w in windows.values()),
                "serial": checks.get(dag),
            }
        )
    out: dict[str, Any] = {
        "backfill_id": bf,
        "state": DagState.CANCELLING
        if meta.get("cancelled") == "1" and meta.get("state") == DagState.RUNNING
        else meta["state"],
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
            "retries": params.retries,
            "retry_delay": params.retry_delay,
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
        if d.get("retries_used"):
            n = d["retries_used"]
            extras.append(f"{n} retr{'y' if n == 1 else 'ies'} over {d['retried']} window(s)")
        if extras:
            line += " (" + ", ".join(extras) + ")"
        cur = d["current"]
        if cur and d["state"] not in FINISHED:
            line += f"\n  {'':<{width}}  now #{cur['seq']} [{cur['start']}, {cur['end']}) {cur['state']}"
            if cur["run_id"]:
                line += f" run={cur['run_id']}"
            if cur.get("attempt", 1) > 1:
                line += f" attempt {cur['attempt']} of {p.get('retries', 0) + 1}"
            if cur["reason"] and cur["state"] in (WindowState.WAITING, *IN_FLIGHT):
                line += f"\n  {'':<{width}}  waiting: {cur['reason']}"
        if d.get("serial") is not None:
            line += "".join(f"\n  {'':<{width}}  {text}" for text in describe(d["serial"]))
        lines.append(line)
    failures = [(d["dag_id"], f) for d in data["dags"] for f in d["failures"]]
    if failures:
        lines += ["", "  failures:"]
        lines += [
            f"    {dag} {f['start']}"
            + (f" run={f['run_id']}" if f["run_id"] else "")
            + f": {f['reason'] or 'no reason recorded'}"
            + (f" after {f['attempts']} attempts" if f.get("attempts", 1) > 1 else "")
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
