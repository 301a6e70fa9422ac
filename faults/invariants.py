"""The orchestrator's promises, checked after a schedule from the stand-in's records and Redis.

1. never two of our runs of a DAG active at once (from each run's executions in the stand-in);
2. nothing triggered or cleared twice for one window (the stand-in's log of actions), but for
   its retries: at most ``retries`` more, each after the previous attempt failed and
   ``retry_wait`` later, and a window failed by its run made every attempt;
3. the windows of a DAG start in the backfill's order;
4. every window ends exactly once: a final state in its record, one final event;
5. the DAG counters match the windows;
6. every backfill ended (and each of its DAGs);
7. no lock or slot left behind (one held at the end belongs to a cancelled window: left to
   expire, as a cancel leaves a lock armed for a trigger);
8. the caps (max_parallel_dags, the global cap) held, for runs the orchestrator still owned;
9. a window recorded successful followed a run that succeeded; one recorded failed because its
   run failed followed a run that failed;
10. after ``cancel --fail-running`` returned, no run of the backfill is left active or ends
    other than failed;
11. notifications (below); 12. start gates (below);
13. ordering across DAGs: a window of a DAG with ``after`` started only after the same window of
    each upstream DAG succeeded (its run ended) or was skipped, and never when one of them
    ended otherwise (then it is not run, or cancelled).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise
from typing import TYPE_CHECKING

from backfill.record import WindowRecord
from backfill.states import TERMINAL

if TYPE_CHECKING:
    from faults.run import Sim

COUNTED = ("success", "failed", "skipped", "not_run", "cancelled")


def check(sim: Sim) -> list[str]:
    out: list[str] = []
    r, record, airflow, world = sim.redis, sim.record, sim.airflow, sim.world
    world.current = None  # reads below are the checker's, not an actor's
    recorded = sorted(set(record.recent(10_000)) | {bf for bf, how in sim.submitted.items() if how == "recorded"})
    params = {bf: record.params(bf) for bf in recorded}

    for bf, p in params.items():
        meta = record.meta(bf)
        if meta.get("state") not in ("succeeded", "failed", "cancelled"):
            out.append(f"6 backfill {bf} never ended (state {meta.get('state')}, dags_left {meta.get('dags_left')})")
        events = [e for _, e in record.events(bf) if e.get("kind") == "window"]
        finals = Counter((e["dag"], e["idx"]) for e in events if e["state"] in TERMINAL)
        for dag in p.dags:
            wins = record.windows(bf, dag)
            d = record.dag(bf, dag)
            if not d.finished_at:
                out.append(f"6 {bf} {dag}: the DAG was never closed")
            counts = Counter()
            for idx in p.indices(dag):
                w = wins.get(idx) or WindowRecord()
                if w.state not in TERMINAL:
                    out.append(f"4 {bf} {dag} window {idx}: never ended (state {w.state}, {w.reason})")
                    continue
                counts[w.state] += 1
                if finals[(dag, idx)] != 1:
                    out.append(f"4 {bf} {dag} window {idx}: {finals[(dag, idx)]} final events")
                run = airflow.runs[dag].get(w.run or "")
                if w.state == "success" and not _ended(run, "success"):
                    out.append(f"9 {bf} {dag} window {idx}: recorded success, its run {w.run} never succeeded")
                failed_run = str(w.reason).startswith("Airflow run")
                if w.state == "failed" and failed_run and not _ended(run, "failed"):
                    out.append(f"9 {bf} {dag} window {idx}: recorded failed, its run {w.run} never failed")
            for state in COUNTED:
                if d.counts[state] != counts[state]:
                    out.append(f"5 {bf} {dag}: counter {state}={d.counts[state]}, windows say {counts[state]}")

    # 10: cancel --fail-running.
    for bf, done in sim.cancel_done.items():
        for dag, runs in airflow.runs.items():
            for run in runs.values():
                for e in run.executions:
                    if e.by == bf and (e.ended is None or e.ended > done) and e.state != "failed":
                        out.append(
                            f"10 {bf} {dag}: run {run.run_id} {e.state or 'still active'} after cancel --fail-running"
                        )

    # 11: notifications (every backfill has a webhook here), at least once, never of what did not happen.
    told = Counter((b["backfill_id"], event, b.get("dag"), b["state"]) for event, b in sim.notifications)
    for bf, p in params.items():
        state = record.meta(bf).get("state")
        ended = [k for k in told if k[:2] == (bf, "backfill_ended")]
        if state in ("succeeded", "failed", "cancelled") and ended != [(bf, "backfill_ended", None, state)]:
            out.append(f"11 {bf}: ended {state}, notified {ended or 'nothing'}")
        for dag in p.dags:
            failed = record.dag(bf, dag).state == "failed"
            if failed != ((bf, "dag_failed", dag, "failed") in told):
                out.append(f"11 {bf} {dag}: DAG {record.dag(bf, dag).state}, dag_failed notified {not failed}")
            windows = record.windows(bf, dag)
            for idx in p.indices(dag):
                label = p.spec.window(idx).label()
                rec = windows.get(idx) or WindowRecord()
                sent = any(b["backfill_id"] == bf and b.get("dag") == dag and b.get("window") == label
                           for e, b in sim.notifications if e == "window_failed")  # fmt: skip
                if (rec.state == "failed") != sent:
                    out.append(f"11 {bf} {dag} window {idx}: {rec.state}, window_failed notified {sent}")

    # 12: start gates. No start well inside quiet hours (a worker's clock may be 10 s off, and a
    # step checks them before the DAG's busy check, then triggers), and never more starts in an
    # hour than max_starts_per_hour (judged on Redis's clock, the world's; a start counts from
    # its record after the trigger, or from its step's reservation if a crash came between).
    starts: dict[str, list[float]] = defaultdict(list)
    for t, what, _, _, by, _ in airflow.actions:
        if by in params and what in ("trigger", "clear"):
            starts[by].append(t)
    for bf, times in starts.items():
        p = params[bf]
        for t in times:
            minute = (t % 86400) / 60
            for part in p.quiet_hours or []:
                a, b = (int(x[:2]) * 60 + int(x[3:]) for x in part.split("-"))
                if a + 0.5 <= minute < b - 0.5:
                    out.append(f"12 {bf}: a window started at t+{t - 1.75e9:.0f} s, in its quiet hours {part}")
        if p.max_starts_per_hour:
            ordered = sorted(times)
            for i, t in enumerate(ordered):
                n = sum(1 for u in ordered[i:] if u < t + 3600 - 30)  # [t, t + 1 h), less one step
                if n > p.max_starts_per_hour:
                    cap = p.max_starts_per_hour
                    out.append(f"12 {bf}: {n} starts within an hour of t+{t - 1.75e9:.0f} s, max {cap}")

    out += _order(sim, params)

    # 1, 2, 3: from the stand-in's executions and actions.
    for dag, runs in airflow.runs.items():
        ours = sorted(((e.active_from, e.ended if e.ended is not None else float("inf"), e.by, run.run_id)
                       for run in runs.values() for e in run.executions if e.by), key=lambda x: x[0])  # fmt: skip
        for (_, a1, by_a, run_a), (b0, _, by_b, run_b) in pairwise(ours):
            if b0 < a1:
                out.append(
                    f"1 {dag}: runs {run_a} ({by_a}) and {run_b} ({by_b}) active at once from t+{b0 - 1.75e9:.1f}"
                )
    per_window: Counter[tuple[str | None, str, int | None]] = Counter()
    order: dict[tuple[str, str], list[int]] = defaultdict(list)
    for _, _, dag, _, by, seq in airflow.actions:
        if by is None:
            continue
        per_window[(by, dag, seq)] += 1
        order[(by, dag)].append(seq if seq is not None else -1)
    for (by, dag, seq), n in per_window.items():
        allowed = 1 + (params[by].retries if by in params else 0)
        if n > allowed:
            out.append(f"2 {by} {dag} window #{seq}: triggered or cleared {n} times (at most {allowed})")
    out += _retries(sim, params)
    for (by, dag), seqs in order.items():
        if seqs != sorted(seqs):
            out.append(f"3 {by} {dag}: windows started in the order {seqs}")

    # 7: locks and slots.
    now_ms = int(world.t * 1000)
    for key in r.keys("bf:lock:*"):
        token, until = r.hmget(key, ["token", "until"])
        dag = key.decode().rsplit(":", 1)[-1]
        if token and until and int(until) > now_ms and not _excused(sim, params, token.decode(), dag):
            out.append(f"7 lock {key.decode()} still held by {token.decode()}")
    for key in r.keys("bf:*slots*"):
        if r.type(key) != b"zset" or key.endswith((b":line", b":seen")):
            continue
        for member, until in r.zrange(key, 0, -1, withscores=True):
            token, _, dag = member.decode().rpartition("@")
            if until > now_ms and not _excused(sim, params, token, dag):
                out.append(f"7 slot {member.decode()} still held in {key.decode()}")

    # 8: caps, over the time each of our executions was ours (until its window ended or its backfill's cancel).
    spans: list[tuple[float, float, str]] = []
    for dag, runs in airflow.runs.items():
        for run in runs.values():
            for e in run.executions:
                if not e.by or e.by not in params:
                    continue
                p = params[e.by]
                idx = p.index_at(e.seq, dag) if e.seq is not None else None
                stop = e.ended if e.ended is not None else float("inf")
                stop = min(stop, sim.ended_at.get((e.by, dag, idx), stop), sim.cancels.get(e.by, stop))
                if stop > e.active_from:
                    spans.append((e.active_from, stop, e.by))
    out += _caps(spans, params, sim.schedule.global_max_runs)
    return out


def _order(sim: Sim, params: dict) -> list[str]:
    out: list[str] = []
    first: dict[tuple[str, str, int | None], float] = {}  # (by, dag, seq) -> its first trigger or clear
    for t, _, dag, _, by, seq in sim.airflow.actions:
        if by is not None:
            first.setdefault((by, dag, seq), t)
    ended: dict[tuple[str, str, int | None], float] = {}  # (by, dag, seq) -> its last execution's end
    for dag, runs in sim.airflow.runs.items():
        for run in runs.values():
            for e in run.executions:
                if e.by and e.ended is not None:
                    ended[(e.by, dag, e.seq)] = max(ended.get((e.by, dag, e.seq), 0.0), e.ended)
    for bf, p in params.items():
        for dag, ups in (p.after or {}).items():
            mine = sim.record.windows(bf, dag)
            for idx in p.indices(dag):
                began = first.get((bf, dag, p.seq_of(idx, dag)))
                rec = mine.get(idx) or WindowRecord()
                for up in ups:
                    if not p.runs_window(up, idx):
                        continue
                    urec = sim.record.windows(bf, up).get(idx) or WindowRecord()
                    if began is not None and urec.state not in ("success", "skipped"):
                        out.append(f"13 {bf} {dag} window {idx}: started while {up}'s was {urec.state}")
                    up_end = ended.get((bf, up, p.seq_of(idx, up)))
                    if began is not None and up_end is not None and began < up_end:
                        out.append(f"13 {bf} {dag} window {idx}: started {up_end - began:.1f} s before {up}'s ended")
                    if urec.state in ("failed", "not_run", "cancelled") and rec.state not in ("not_run", "cancelled"):
                        out.append(f"13 {bf} {dag} window {idx}: {rec.state} though {up}'s ended {urec.state}")
    return out


def _retries(sim: Sim, params: dict) -> list[str]:
    """Each attempt of a window after its first began after the previous one failed, no
    sooner than ``retry_wait`` (less the workers' largest clock error); a window recorded
    failed by its run made them all."""
    out: list[str] = []
    slack = max(sim.schedule.skews) - min(sim.schedule.skews) + 1.0
    for dag, runs in sim.airflow.runs.items():
        for run in runs.values():
            mine: dict[tuple[str, int | None], list] = defaultdict(list)
            for e in run.executions:
                if e.by in params:
                    mine[(e.by, e.seq)].append(e)
            for (by, seq), execs in mine.items():
                for k, (prev, nxt) in enumerate(pairwise(execs), start=1):
                    if prev.state != "failed" or prev.ended is None:
                        out.append(f"2 {by} {dag} window #{seq}: attempt {k + 1} began while attempt {k} was "
                                   f"{prev.state or 'active'}")  # fmt: skip
                    elif nxt.active_from < prev.ended + params[by].retry_wait(k) - slack:
                        out.append(f"2 {by} {dag} window #{seq}: attempt {k + 1} began "
                                   f"{nxt.active_from - prev.ended:.1f} s after attempt {k} failed")  # fmt: skip
    for bf, p in params.items():
        for dag in p.dags:
            for idx, w in sim.record.windows(bf, dag).items():
                if w.state == "failed" and str(w.reason).startswith("Airflow run") and w.attempt != p.retries + 1:
                    out.append(f"2 {bf} {dag} window {idx}: failed after {w.attempt} of {p.retries + 1} attempts")
    return out


def _ended(run: object, state: str) -> bool:
    return run is not None and (run.state == state or any(e.state == state for e in run.executions))  # type: ignore[attr-defined]


def _excused(sim: Sim, params: dict, token: str, dag: str) -> bool:
    """A lock or slot may outlive its window only when its holder's worker died holding it (it
    expires), and no step of that window ran after it ended (which should have released it)."""
    bf, _, _ = token.partition("__")
    if bf not in sim.world.crashed_for or bf not in params:
        return False
    p = params[bf]
    for idx in p.indices(dag) if dag in p.dags else []:
        if p.run_id(p.spec.window(idx)) == token:
            ended = sim.ended_at.get((bf, dag, idx))
            if ended is None:  # recorded by a pipeline cut midway (its answer lost): the record's own time
                rec = sim.record.window(bf, dag, idx)
                ended = rec.at if rec.state in TERMINAL else None
            stepped = sim.world.steps.get((bf, dag, p.seq_of(idx, dag)))
            return ended is None or stepped is None or stepped <= ended
    return True


def _caps(spans: list[tuple[float, float, str]], params: dict, global_cap: int) -> list[str]:
    out: list[str] = []
    points = sorted(
        [(a, 1, bf) for a, _, bf in spans] + [(b, -1, bf) for _, b, bf in spans], key=lambda x: (x[0], x[1])
    )
    total, per = 0, Counter()
    for t, delta, bf in points:
        total += delta
        per[bf] += delta
        mpd = params[bf].max_parallel_dags
        if delta > 0 and mpd and per[bf] > mpd:
            out.append(f"8 {bf}: {per[bf]} runs in flight at t+{t - 1.75e9:.1f}, max_parallel_dags={mpd}")
        if delta > 0 and global_cap and total > global_cap:
            out.append(f"8 global: {total} runs in flight at t+{t - 1.75e9:.1f}, cap {global_cap}")
    return sorted(set(out))


def dump(sim: Sim) -> str:
    """What happened, for a failing schedule's report."""
    lines = [f"seed {sim.schedule.seed}: {sim.schedule}"]
    lines += ["injected:"] + [f"  {i}" for i in sim.world.injected]
    lines += ["airflow actions:"] + [f"  t+{t - 1.75e9:.1f} {w} {d} {run} by {by} #{seq}"
                                     for t, w, d, run, by, seq in sim.airflow.actions]  # fmt: skip
    for bf in sim.submitted:
        try:
            for _, e in sim.record.events(bf):
                lines.append(f"  {bf} {json.dumps(e)}")
        except Exception:
            pass
    return "\n".join(lines)
