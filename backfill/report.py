"""The timeline of a backfill: what ran when, one lane per DAG and one bar per window.

Times are Airflow's own (each run's start and end date, recorded when the window ended); a
window that never had a run (skipped, not run, cancelled before it triggered) is a thin mark
at the moment its outcome was recorded. The text view is for a terminal, the HTML view a
self-contained page (inline CSS, no script, nothing fetched) to open anywhere or attach.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backfill.airflow import AirflowClient
from backfill.gates import quiet_until
from backfill.record import Record
from backfill.states import IN_FLIGHT
from backfill.timefmt import clock, span
from backfill.verify import describe, serial_check
from backfill.windows import get_tz

COLOURS = {
    "success": "#2e9d4f",
    "failed": "#d64545",
    "skipped": "#8c8c8c",
    "not_run": "#c9a227",
    "cancelled": "#7a5bc7",
    "running": "#3b82f6",
    "triggered": "#93c5fd",
    "waiting": "#e0e0e0",
}
TEXT_MARKS = {"success": "#", "failed": "X", "skipped": "s", "not_run": "n", "cancelled": "c", "running": ">"}


@dataclass(frozen=True, slots=True)
class Bar:
    dag: str
    seq: int  # 1-based position in the DAG's run order
    start: str  # window bounds
    end: str
    state: str
    run_id: str | None
    t0: float  # when it ran (epoch seconds)
    t1: float
    reason: str | None
    attempts: int = 1  # runs of the window: 1, or more when failed attempts were retried

    @property
    def ran(self) -> bool:
        return self.t1 > self.t0


def _ts(value: Any) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else float(value)


def collect(record: Record, bf: str, *, airflow: AirflowClient | None = None) -> dict[str, Any]:
    """``airflow``: also check each DAG's runs were serial, from Airflow's records (``backfill.verify``)."""
    params = record.params(bf)
    meta = record.meta(bf)
    lanes: dict[str, list[Bar]] = {}
    for dag in params.dags:
        recs = record.windows(bf, dag)
        bars = []
        for seq, idx in enumerate(params.indices(dag)):
            rec = recs.get(idx)
            if not rec:
                continue  # never reached (the backfill is still running)
            window = params.spec.window(idx)
            at = rec.at or 0.0
            t0 = _ts(rec.started) or rec.triggered_at or at
            t1 = _ts(rec.ended) or (at if rec.state in IN_FLIGHT else t0)
            if rec.state in IN_FLIGHT:
                t1 = max(t1, datetime.now(UTC).timestamp())
            bars.append(
                Bar(
                    dag=dag, seq=seq + 1, start=window.start.isoformat(), end=window.end.isoformat(),
                    state=rec.state, run_id=rec.run, t0=t0, t1=max(t0, t1), reason=rec.reason,
                    attempts=rec.attempt,
                )
            )  # fmt: skip
        lanes[dag] = bars
    times = [t for bars in lanes.values() for b in bars for t in (b.t0, b.t1)]
    lo = min(times) if times else float(meta.get("created_at", 0))
    hi = max(times) if times else lo
    return {
        "quiet": _quiet_bands(params.quiet_hours, params.tz, lo, hi),
        "backfill_id": bf,
        "state": meta.get("state", "?"),
        "batch": params.batch,
        "range": [params.start, params.end],
        "lanes": lanes,
        "serial": serial_check(airflow, record, bf) if airflow is not None else {},
        "after": params.after or {},
        "eta_at_submit": float(meta["eta_at_submit"]) if meta.get("eta_at_submit") else None,
        "finished_at": float(meta["finished_at"]) if meta.get("finished_at") else None,
        "t0": min(times) if times else float(meta.get("created_at", 0)),
        "t1": max(times) if times else float(meta.get("created_at", 0)),
    }


def text(data: dict[str, Any], *, width: int = 60, max_rows: int = 100) -> str:
    t0, t1 = data["t0"], data["t1"]
    total = max(t1 - t0, 1e-6)
    lanes: dict[str, list[Bar]] = data["lanes"]
    name_w = max([len(d) for d in lanes] + [3])
    out = [
        f"backfill {data['backfill_id']}  {data['state'].upper()}  ({data['batch']} windows over "
        f"[{data['range'][0]}, {data['range'][1]}))",
        f"timeline {clock(t0)} .. {clock(t1)} UTC ({span(t1 - t0)}), one lane per DAG, one mark per window",
        *([eta] if (eta := eta_line(data)) else []),
        "",
    ]
    for dag, bars in lanes.items():
        cells = [" "] * width
        for b in bars:
            a = min(width - 1, int((b.t0 - t0) / total * width))
            z = max(a, min(width - 1, int((b.t1 - t0) / total * width - 1e-9)))
            for i in range(a, z + 1):
                cells[i] = TEXT_MARKS.get(b.state, "?")
        counts = _counts(bars)
        ups = data.get("after", {}).get(dag)
        out.append(f"  {dag:<{name_w}} |{''.join(cells)}| {counts}" + (f" (after {', '.join(ups)})" if ups else ""))
    out += ["", "  " + "  ".join(f"{m} {s.replace('_', ' ')}" for s, m in TEXT_MARKS.items()), ""]
    for dag, check in data.get("serial", {}).items():
        out += [f"  {dag}: {line}" for line in describe(check)]
    if data.get("serial"):
        out.append("")
    rows = sorted((b for bars in lanes.values() for b in bars), key=lambda b: (b.t0, b.dag))
    shown = rows if max_rows <= 0 else rows[:max_rows]
    out.append(f"  {'ran (UTC)':<19}  {'took':>8}  {'DAG':<{name_w}}  window")
    for b in shown:
        took = span(b.t1 - b.t0) if b.ran else "-"
        run = f" run={b.run_id}" if b.run_id else ""
        why = f" ({b.reason})" if b.reason and b.state != "success" else ""
        tries = f" attempts={b.attempts}" if b.attempts > 1 else ""
        out.append(
            f"  {clock(b.t0)}  {took:>8}  {b.dag:<{name_w}}  #{b.seq} [{b.start}, {b.end}) {b.state}{run}{tries}{why}"
        )
    if len(rows) > len(shown):
        out.append(f"  ... {len(rows) - len(shown)} more (--max-rows 0 shows all)")
    return "\n".join(out)


def _quiet_bands(ranges: list[str] | None, tz: str | None, t0: float, t1: float) -> list[tuple[float, float]]:
    """The quiet hours within [t0, t1] (Unix times), for the page to shade."""
    if not ranges or t1 <= t0:
        return []
    zone, t = get_tz(tz), t0
    out: list[tuple[float, float]] = []
    while t < t1 and len(out) < 400:
        until = quiet_until(ranges, datetime.fromtimestamp(t, UTC), zone)
        if until is not None:
            out.append((t, min(t1, until.timestamp())))
            t = until.timestamp()
        t += 60.0  # quiet hours begin and end on the minute
    merged: list[tuple[float, float]] = []
    for a, b in out:
        if merged and a <= merged[-1][1] + 60.0:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def eta_line(data: dict[str, Any]) -> str:
    """The ETA given at submit next to the actual end (or to now, while it runs)."""
    eta = data.get("eta_at_submit")
    if not eta:
        return ""
    end = data.get("finished_at")
    if end is None:
        return f"ETA at submit {clock(eta)} UTC (still running)"
    late = end - eta
    return f"ETA at submit {clock(eta)} UTC, ended {clock(end)} UTC ({'+' if late >= 0 else '-'}{span(abs(late))})"


def _counts(bars: list[Bar]) -> str:
    seen: dict[str, int] = {}
    for b in bars:
        seen[b.state] = seen.get(b.state, 0) + 1
    return ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(seen.items()))


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:18px;margin:0 0 4px} .sub{color:#555;margin-bottom:16px}
.chart{border:1px solid #ddd;padding:8px 12px 4px;border-radius:6px}
.serial-check{list-style:none;padding:0} .serial-check .serial{color:#1a7f37}
.serial-check .overlap{color:#b42318;font-weight:600}
.lane{display:flex;align-items:center;height:26px}
.label{width:var(--label);flex:none;font-family:monospace;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{position:relative;flex:1;height:18px;background:#f6f6f6;border-radius:3px}
.bar{position:absolute;top:1px;height:16px;min-width:2px;border-radius:2px;box-sizing:border-box;
     border-right:1px solid #fff}
.quiet{position:absolute;top:0;height:18px;background:repeating-linear-gradient(45deg,#e4e4e4 0 4px,#f6f6f6 4px 8px)}
.dep{position:absolute;top:-3px;height:24px;width:0;border-left:2px dashed #444;z-index:1}
.label small{color:#777;font-size:11px}
.axis{display:flex;justify-content:space-between;margin-left:var(--label);color:#666;font-size:12px;padding-top:4px}
.legend span{display:inline-block;margin-right:14px} .legend i{display:inline-block;width:12px;height:12px;
     border-radius:2px;margin-right:4px;vertical-align:-1px}
table{border-collapse:collapse;margin-top:16px;font-size:13px} td,th{padding:2px 10px;text-align:left;
     border-bottom:1px solid #eee} th{color:#555;font-weight:600}
"""


def _dependency_marks(
    dag: str, bars: list[Bar], lanes: dict[str, list[Bar]], ups: list[str], t0: float, total: float
) -> list[str]:
    """``after``: in a dependent DAG's lane, a dashed line where the same window of each upstream
    DAG ended; its own bar starts to the right of it."""
    marks = []
    for up in ups:
        ended = {b.start: b for b in lanes.get(up, []) if b.ran}
        for b in bars:
            u = ended.get(b.start)
            if u is None:
                continue
            tip = f"{up} #{u.seq} [{u.start}, {u.end}) ended {clock(u.t1)} UTC; {dag} #{b.seq} waited for it"
            marks.append(
                f'<div class="dep" data-after="{html.escape(up)}" data-window="{html.escape(b.start)}" '
                f'title="{html.escape(tip)}" style="left:{(u.t1 - t0) / total * 100:.4f}%"></div>'
            )
    return marks


def _serial_html(checks: dict[str, Any]) -> str:
    items = "".join(
        f'<li class="{"overlap" if check["overlaps"] else "serial"}" data-dag="{html.escape(dag)}">'
        f"{html.escape(dag)}: {html.escape(line)}</li>"
        for dag, check in checks.items()
        for line in describe(check)
    )
    return f'<ul class="serial-check">{items}</ul>' if items else ""


def to_html(data: dict[str, Any]) -> str:
    t0, t1 = data["t0"], data["t1"]
    total = max(t1 - t0, 1e-6)
    lanes: dict[str, list[Bar]] = data["lanes"]
    e = html.escape
    label_w = min(260, 12 + 8 * max([len(d) for d in lanes] + [4]))
    rows = []
    after: dict[str, list[str]] = data.get("after", {})
    for dag, bars in lanes.items():
        marks = _dependency_marks(dag, bars, lanes, after.get(dag, []), t0, total)
        marks += [f'<div class="quiet" title="quiet hours" style="left:{(a - t0) / total * 100:.4f}%;'
                  f'width:{(b - a) / total * 100:.4f}%"></div>' for a, b in data.get("quiet", [])]  # fmt: skip
        for b in bars:
            left = (b.t0 - t0) / total * 100
            width = max((b.t1 - b.t0) / total * 100, 0.0)
            tip = f"{dag} #{b.seq} [{b.start}, {b.end}) {b.state}"
            tip += f"\nran {clock(b.t0)} .. {clock(b.t1)} UTC ({span(b.t1 - b.t0)})" if b.ran else ""
            tip += f"\nrun {b.run_id}" if b.run_id else ""
            tip += f"\n{b.attempts} attempts" if b.attempts > 1 else ""
            tip += f"\n{b.reason}" if b.reason else ""
            marks.append(
                f'<div class="bar" data-window="{e(b.start)}" data-state="{e(b.state)}" title="{e(tip)}" '
                f'style="left:{left:.4f}%;width:{width:.4f}%;background:{COLOURS.get(b.state, "#444")}"></div>'
            )
        ups = after.get(dag)
        label = e(dag) + (f"<small> after {e(', '.join(ups))}</small>" if ups else "")
        rows.append(
            f'<div class="lane" data-dag="{e(dag)}"><div class="label" title="{e(dag)}">{label}</div>'
            f'<div class="track">{"".join(marks)}</div></div>'
        )
    ticks = "".join(f"<span>{clock(t0 + total * i / 4)[11:]}</span>" for i in range(5))
    legend = "".join(f'<span><i style="background:{c}"></i>{s.replace("_", " ")}</span>' for s, c in COLOURS.items())
    if data.get("quiet"):
        legend += '<span><i class="quiet" style="position:static"></i>quiet hours</span>'
    if after:
        legend += '<span><i style="border-left:2px dashed #444;width:0"></i>upstream window ended</span>'
    table = "".join(
        f"<tr><td>{e(b.dag)}</td><td>#{b.seq}</td><td>{e(b.start)}</td><td>{e(b.state)}</td>"
        f"<td>{clock(b.t0) if b.t0 else ''}</td><td>{span(b.t1 - b.t0) if b.ran else '-'}</td>"
        f"<td>{e(b.run_id or '')}</td><td>{b.attempts}</td><td>{e(b.reason or '')}</td></tr>"
        for b in sorted((b for bars in lanes.values() for b in bars), key=lambda b: (b.t0, b.dag))
    )
    windows = sum(len(b) for b in lanes.values())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>backfill {e(data["backfill_id"])}</title>
<style>{_CSS}</style></head>
<body style="--label:{label_w}px">
<h1>backfill {e(data["backfill_id"])} &mdash; {e(data["state"])}</h1>
<div class="sub">{e(data["batch"])} windows over [{e(data["range"][0])}, {e(data["range"][1])}) &middot;
{len(lanes)} DAG(s), {windows} window(s) &middot; {clock(t0)} .. {clock(t1)} UTC ({span(t1 - t0)})
{("&middot; " + e(eta_line(data))) if eta_line(data) else ""}</div>
<div class="chart" id="timeline">{"".join(rows)}<div class="axis">{ticks}</div></div>
<p class="legend">{legend}</p>
{_serial_html(data.get("serial", {}))}
<table><tr><th>DAG</th><th>#</th><th>window</th><th>outcome</th><th>ran (UTC)</th><th>took</th><th>Airflow run</th>
<th>attempts</th><th>reason</th></tr>{table}</table>
</body></html>
"""
