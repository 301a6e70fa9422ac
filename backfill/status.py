"""A backfill's status, read from its record: a dict for scripts and a text view for people."""

from __future__ import annotations

import time
from typing import Any

from backfill.airflow import AirflowClient
from backfill.eta import estimate
from backfill.locks import DagLocks
from backfill.record import Record
from backfill.states import FINISHED, IN_FLIGHT, DagState, WindowState
from backfill.timefmt import clock
from backfill.verify import describe, serial_check


def status(
    record: Record, bf: str, *, events: bool = False, airflow: AirflowClient | None = None,
    locks: DagLocks | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``airflow``: also check from Airflow's run records that each DAG's runs were serial
    (``backfill.verify``): per DAG, ``serial`` is ``{"checked": n, "overlaps": [...]}``.
    ``locks``: per running DAG, which backfill holds it and which are in line, in the order
    they will get it (``queue``)."""
    params = record.params(bf)
    checks = serial_check(airflow, record, bf) if airflow is not None else {}
    meta = record.meta(bf)
    dags = []
    infos = {dag: record.dag(bf, dag) for dag in params.dags}
    recs = {dag: record.windows(bf, dag) for dag in params.dags}
    etas, expected_end = estimate(params, infos, recs, time.time())
    for dag in params.dags:
        info = infos[dag]
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
        windows = recs[dag]
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
                "eta": etas[dag].as_dict(),
                "queue": _queue(locks, dag) if locks is not None and info.state not in FINISHED else None,
            }
        )
    out: dict[str, Any] = {
        "backfill_id": bf,
        "state": DagState.CANCELLING
        if meta.get("cancelled") == "1" and meta.get("state") == DagState.RUNNING
        else meta["state"],
        "created_at": float(meta["created_at"]),
        "finished_at": float(meta["finished_at"]) if meta.get("finished_at") else None,
        "expected_end": round(expected_end, 1) if expected_end else None,
        "eta_at_submit": float(meta["eta_at_submit"]) if meta.get("eta_at_submit") else None,
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


def _queue(locks: DagLocks, dag: str) -> dict[str, Any]:
    """The backfills wanting the DAG: its holder and the line, by backfill (a window's token is
    ``<backfill id>__<window start>``)."""
    holder, line = locks.queue(dag)

    def of(token: str) -> dict[str, str]:
        bf, _, start = token.partition("__")
        return {"backfill_id": bf, "window_start": start}

    return {"holder": of(holder) if holder else None, "line": [of(t) for t in line]}


def _expected(data: dict[str, Any]) -> str:
    """The backfill's expected end while it runs; the ETA given at submit beside the end once done."""
    at_submit = f"ETA at submit {clock(data['eta_at_submit'])} UTC" if data.get("eta_at_submit") else ""
    if data["finished_at"]:
        return f" ({at_submit})" if at_submit else ""
    if data.get("expected_end"):
        return f"\n  expected end {clock(data['expected_end'])} UTC" + (f" ({at_submit})" if at_submit else "")
    return ""


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
        + (f", finished {clock(data['finished_at'])} UTC" if data["finished_at"] else "")
        + _expected(data),
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
            eta = d.get("eta") or {}
            if eta.get("expected_end"):
                line += (
                    f"\n  {'':<{width}}  expected end {clock(eta['expected_end'])} UTC: {eta['remaining']} "
                    f"window(s) x ({eta['run_seconds']} s run + {eta['handoff_seconds']} s handoff"
                    + (f" + {eta['retry_seconds']} s retries" if eta.get("retry_seconds") else "")
                    + ")"
                )
            elif eta.get("remaining"):
                line += f"\n  {'':<{width}}  expected end: not known yet (no run of this DAG measured)"
        q = d.get("queue") or {}
        others = [w for w in ([q["holder"]] if q.get("holder") else []) + q.get("line", [])
                  if w["backfill_id"] != data["backfill_id"]]  # fmt: skip
        if others:
            held = q.get("holder") or {}
            who = f"held by {held['backfill_id']}" if held else "free"
            order = ", ".join(f"{i}. {w['backfill_id']}" for i, w in enumerate(q.get("line", []), 1))
            line += f"\n  {'':<{width}}  DAG {who}" + (f"; in line for it: {order}" if order else "")
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
