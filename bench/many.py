"""B4: 1,000 DAGs with a window running at once, one worker with 2 processes, against the stand-in;
B5: the Airflow requests per second that puts on Airflow, with 200 and with 1,000 DAGs.

One backfill of 1,000 DAGs x ``windows`` daily windows; every run takes ``duration`` s (+-10 %)
once started. From the stand-in's own records: how many runs were active at once, and per DAG
the gaps between a run's end and the next window's trigger (a starved DAG shows a long gap).
From the record: every window succeeded. From ``/proc``: the CPU time of the worker's
processes (main process and pool children) over the backfill, per window.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import redis

from bench.common import Figure, bench_stack, process_cpu, wait_backfill, wait_until
from bench.standin import Standin, serve

DAG_COUNT = 1000
B5_DAGS = (200, 1000)
B5_DURATION = 240.0  # a four-minute run: B5 counts the requests of the waits, not of the handoffs
B5_TARGET = 20.0  # requests per second at 1,000 DAGs
HANDOFF_TARGET = 2.5  # seconds from a run's end to its DAG's next trigger, first windows included
FLOOR_RATIO = 2.0  # the orchestrator's CPU per window, at most this many times Celery's own floor
INF = float("inf")  # a reference figure
# BACKFILL_* settings of this process go to the worker too (to compare settings side by side).
ENV = {k: v for k, v in os.environ.items() if k.startswith("BACKFILL_")}


def b4(root: Path, *, windows: int = 5, duration: float = 20.0) -> list[Figure]:
    dags = [f"bench_{i:03d}" for i in range(DAG_COUNT)]
    standin = Standin(set(dags), duration=duration, jitter=0.1, queued=0.5)
    with bench_stack(root) as b:
        server, port = _standin_stack(b, standin)
        # The same worker runs Celery's floor afterwards (bench.floor adds one task to its app).
        worker = b.start_worker(app="bench.floor", **ENV)
        tasks = b.orchestrator()
        try:
            stats0 = _command_stats(tasks.context().redis)
            cpu0, main0 = process_cpu([worker.pid]), process_cpu([worker.pid], descendants=False)
            t0 = time.time()
            sub = tasks.submit_backfill.delay(dags, "2010-01-01", f"2010-01-{windows:02d}", "daily").get(timeout=120)
            meta = wait_backfill(tasks, sub["backfill_id"], 60 * (windows + 2) * duration)
            wall = time.time() - t0
            cpu = process_cpu([worker.pid]) - cpu0
            main_cpu = process_cpu([worker.pid], descendants=False) - main0  # consumer and watcher
            commands = _command_stats(tasks.context().redis) - stats0
            record = tasks.context().record
            states = [w.state for d in dags for w in record.windows(sub["backfill_id"], d).values()]
            recs = [(i, w) for d in dags for i, w in record.windows(sub["backfill_id"], d).items()]
            ended_at = {(d, i): w.at or 0.0 for d in dags for i, w in record.windows(sub["backfill_id"], d).items()}
            calls = [w.api_calls or 0 for _, w in recs]
            first_calls = [w.api_calls or 0 for i, w in recs if i == 0]
            later_calls = [w.api_calls or 0 for i, w in recs if i > 0]
            # The floor at the same pace: as many task executions as ours made (each window records
            # its own, ``steps``), over a run's length.
            executions = sum(w.steps or 1 for _, w in recs)
            lists = tasks.context().parking.lists()
            looks = _spread(executions, DAG_COUNT, windows)
            per_window = executions / (DAG_COUNT * windows)
            every = (duration + standin.queued) / max(1.0, per_window - 1)
            redis_url = tasks.context().settings.redis_url
            floor_cpu, floor_main = _floor(worker.pid, redis_url, dags, looks=looks, every=every, urls={})
            base = f"http://127.0.0.1:{port}/api/v2/dags"
            urls = {d: f"{base}/{d}/dagRuns/{next(iter(standin.runs[d]))}" for d in dags}
            http_cpu, _ = _floor(worker.pid, redis_url, dags, looks=looks, every=every, urls=urls)
        finally:
            server.shutdown()
            tasks.app.close()
    total = DAG_COUNT * windows
    ok = sum(1 for s in states if s == "success")
    print(
        f"  B4 Redis commands per window ({sum(commands.values()) / total:.1f} in all, the worker's and the "
        "benchmark's reads): " + ", ".join(f"{k} {v / total:.2f}" for k, v in commands.most_common(12)),
        flush=True,
    )
    handoffs = _handoff_gaps(standin, dags)
    _print_split(standin, dags, ended_at)
    gaps = [g for _, g in handoffs]
    after_first = [g for pos, g in handoffs if pos == 0] or [0.0]
    later = [g for pos, g in handoffs if pos > 0] or [0.0]
    first = sorted(t for t, _ in standin.triggers)[:DAG_COUNT]
    print(
        f"  B4: {meta['state']}, {ok}/{total} windows succeeded in {wall:.0f} s, max {standin.max_active} runs "
        f"active at once, CPU {cpu:.1f} s ({1000 * cpu / total:.1f} ms per window), "
        f"median {statistics.median(calls)} own requests per window (first {statistics.median(first_calls)}, "
        f"{lists} lists of the watcher), main process {1000 * main_cpu / total:.1f} ms per window, "
        f"later {statistics.median(later_calls) if later_calls else '-'}), end->next trigger gap median "
        f"{statistics.median(gaps):.2f} s max {max(gaps):.2f} s "
        f"(after a DAG's first window: max {max(after_first):.2f} s, later: max {max(later):.2f} s)",
        flush=True,
    )
    return [
        Figure(
            "B4",
            "runs active at once (stand-in's count)",
            [standin.max_active],
            DAG_COUNT,
            "runs",
            higher_is_worse=False,
        ),
        Figure("B4", "windows succeeded", [ok], total, "windows", higher_is_worse=False),
        Figure(
            "B4",
            "orchestrator CPU per window / Celery's floor (same run)",
            [cpu / max(floor_cpu, 1e-6)],
            FLOOR_RATIO,
            "x",
            note=f"{1000 * cpu / total:.1f} ms per window against the floor's {1000 * floor_cpu / total:.1f} ms "
            f"(a bare task run {per_window:.2f} times per window as ours was, {every:.1f} s apart, in chains of "
            f"{windows} per DAG; with one HTTP GET to the stand-in per look: {1000 * http_cpu / total:.1f} ms)",
        ),
        Figure("B4", "orchestrator CPU per window (worker, all processes)", [1000 * cpu / total], INF, "ms"),
        Figure("B4", "of which the worker's main process (consumer, watcher)", [1000 * main_cpu / total], INF, "ms"),
        Figure("B4", "Celery's floor: CPU per window", [1000 * floor_cpu / total], INF, "ms"),
        Figure("B4", "of which the worker's main process (consumer)", [1000 * floor_main / total], INF, "ms"),
        Figure("B4", "Celery's floor + one HTTP GET per look: CPU per window", [1000 * http_cpu / total], INF, "ms"),
        Figure(
            "B4",
            "longest run end -> next trigger of its DAG",
            [max(gaps)],
            HANDOFF_TARGET,
            "s",
            note=f"a starved DAG would show a long gap; median over all handoffs {statistics.median(gaps):.2f} s",
        ),
        Figure("B4", f"first window of all {DAG_COUNT:,} DAGs triggered within", [first[-1] - first[0]], 10.0, "s"),
    ]


def b5(root: Path) -> list[Figure]:
    """Airflow requests per second (the stand-in's count, submit to end) of a backfill of one
    ``B5_DURATION`` s window per DAG, with 200 and with 1,000 DAGs, one after the other on the
    same worker: what the waits cost Airflow once the windows are triggered."""
    figures: list[Figure] = []
    dags_all = [f"bench_{i:03d}" for i in range(max(B5_DAGS))]
    standin = Standin(set(dags_all), duration=B5_DURATION, jitter=0.1, queued=0.5)
    with bench_stack(root) as b:
        server, _ = _standin_stack(b, standin)
        b.start_worker(**ENV)
        tasks = b.orchestrator()
        try:
            for n, year in zip(B5_DAGS, (2001, 2002), strict=True):
                dags = dags_all[:n]
                t0 = time.time()
                sub = tasks.submit_backfill.delay(dags, f"{year}-01-01", f"{year}-01-01", "daily").get(timeout=120)
                wait_backfill(tasks, sub["backfill_id"], 4 * B5_DURATION + 120)
                t1 = time.time()
                times = [t for t in standin.request_times if t0 <= t <= t1]
                kinds = Counter(k for t, k in zip(standin.request_times, standin.request_kinds, strict=True)
                                if t0 <= t <= t1)  # fmt: skip
                print(f"  B5 {n} DAGs by request: " + "; ".join(f"{k} {c}" for k, c in kinds.most_common()), flush=True)
                busy = [t for t in times if t >= t0 + 10]  # once every window is triggered
                rate, wait_rate = len(times) / (t1 - t0), len(busy) / max(1.0, t1 - t0 - 10)
                print(f"  B5 {n} DAGs: {len(times)} requests in {t1 - t0:.0f} s = {rate:.1f}/s "
                      f"({wait_rate:.1f}/s after the first 10 s)", flush=True)  # fmt: skip
                figures.append(Figure(
                    "B5", f"Airflow requests per second, {n:,} DAGs in flight", [rate],
                    B5_TARGET if n == max(B5_DAGS) else INF, "req/s",
                    note=f"{len(times)} requests over {t1 - t0:.0f} s (one {B5_DURATION:.0f} s window per DAG); "
                    f"{wait_rate:.2f}/s once every window was triggered",
                ))  # fmt: skip
        finally:
            server.shutdown()
            tasks.app.close()
    return figures


def _standin_stack(b: Any, standin: Standin) -> tuple[Any, int]:
    """The stand-in served on a private port, the stack pointed at it, its redis-server started."""
    from devstack import free_port

    server = serve(standin, port := free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    b.stack.airflow_url = f"http://127.0.0.1:{port}"
    b.stack.airflow_password = "standin"
    b.stack.start_redis()
    return server, port


def _spread(executions: int, dags: int, windows: int) -> list[list[int]]:
    """``executions`` task executions over ``dags`` x ``windows`` windows, as evenly as can be."""
    base, extra = divmod(executions, dags * windows)
    flat = [max(1, base + (i < extra)) for i in range(dags * windows)]
    return [flat[d * windows : (d + 1) * windows] for d in range(dags)]


def _floor(pid: int, redis_url: str, dags: list[str], *, looks: list[list[int]], every: float,
           urls: dict[str, str]) -> tuple[float, float]:  # fmt: skip
    """The worker's CPU seconds for Celery's floor (``bench.floor``): its windows' looks, in all
    its processes and in its main process (the consumer: fetching, acking, the countdowns)."""
    from bench import floor

    client = redis.Redis.from_url(redis_url)
    client.delete(floor.DONE_KEY)
    total = sum(len(ns) for ns in looks)
    cpu0, main0 = process_cpu([pid]), process_cpu([pid], descendants=False)
    floor.floor_send.delay(dags=dags, looks=looks, every=every, done_url=redis_url, urls=urls)
    longest = max(sum(ns) for ns in looks) * every
    wait_until(lambda: int(client.get(floor.DONE_KEY) or 0) >= total, 120 + 2 * longest, "Celery's floor", every=0.2)
    return process_cpu([pid]) - cpu0, process_cpu([pid], descendants=False) - main0


def _command_stats(client: redis.Redis) -> Counter[str]:
    """Redis's count of the commands it ran, by command (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def _print_split(standin: Standin, dags: list[str], ended_at: dict[tuple[str, int], float]) -> None:
    """Each handoff in two: from the run's end to its window's end recorded (the watcher's list,
    the woken window's step) and from there to the next trigger (the next link's step)."""
    seen, on = [], []
    for dag in dags:
        runs = sorted(standin.runs[dag].values(), key=lambda r: r.queued_at)
        for i, (a, b) in enumerate(itertools.pairwise(runs)):
            end = a.queued_at + standin.queued + a.duration
            seen.append((ended_at.get((dag, i), end) - end, dag, i))
            on.append((b.queued_at - ended_at.get((dag, i), end), dag, i))
    worst = max(zip(seen, on, strict=True), key=lambda p: p[0][0] + p[1][0])
    seen_median, on_median = statistics.median(x for x, _, _ in seen), statistics.median(x for x, _, _ in on)
    print(f"  B4 handoff split: run end -> end recorded median {seen_median:.2f} s max {max(seen)[0]:.2f} s; "
          f"end recorded -> next trigger median {on_median:.2f} s max {max(on)[0]:.2f} s; the longest handoff "
          f"({worst[0][1]} #{worst[0][2] + 1}): {worst[0][0]:.2f} s + {worst[1][0]:.2f} s", flush=True)  # fmt: skip


def _handoff_gaps(standin: Standin, dags: list[str]) -> list[tuple[int, float]]:
    """Per DAG, (position, seconds) from each run's end to the trigger of its next window."""
    out: list[tuple[int, float]] = []
    by_dag: dict[str, list] = defaultdict(list)
    for runs in standin.runs.values():
        for r in runs.values():
            by_dag[r.dag_id].append(r)
    for runs in by_dag.values():
        runs.sort(key=lambda r: r.queued_at)
        for pos, (a, b) in enumerate(itertools.pairwise(runs)):
            end = a.queued_at + standin.queued + a.duration
            out.append((pos, b.queued_at - end))
    return out
