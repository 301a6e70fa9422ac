"""B3: long ranges. 20 DAGs x 10 years of daily windows (73,000 windows), against the stand-in.

- time to submit (``submit_backfill`` called until it returns), 1 year and 10 years;
- every message the orchestrator puts on the broker, read on the real redis-server with
  ``MONITOR`` (each ``LPUSH`` to a queue, its payload unescaped to its exact bytes): the
  largest one, and the bytes per finished window, over the first ``sample`` windows of every
  DAG (cancelled after), for 1 year and for 10 years;
- Redis memory of the record (``MEMORY USAGE`` of every key of the backfill): right after the
  submit, and for a record in which all 73,000 windows went planned → triggered → running →
  success through ``Record.transition`` (the worker's own code path), as at the end of a
  backfill's life.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backfill.commands import cancel
from backfill.request import Request, validate
from bench.common import Figure, bench_stack, wait_backfill, wait_until
from bench.standin import Standin, serve

DAGS = [f"bench_{i:03d}" for i in range(20)]
START = datetime(2010, 1, 1, tzinfo=UTC)


class Monitor:
    """``redis-cli MONITOR`` into a file; ``pushes()`` returns every LPUSH payload's size."""

    def __init__(self, redis_url: str, out: Path) -> None:
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        self.out = out
        self.fh = out.open("wb")
        self.proc = subprocess.Popen(["redis-cli", "-p", port, "monitor"], stdout=self.fh)
        time.sleep(0.3)

    def stop(self) -> list[int]:
        self.proc.terminate()
        self.proc.wait(10)
        self.fh.close()
        sizes = []
        with self.out.open("rb") as fh:
            for line in fh:
                m = _LPUSH.search(line)
                if m:
                    sizes.append(len(_unescape(m.group(1))))
        self.out.unlink()
        return sizes


_LPUSH = re.compile(rb'"LPUSH" "[^"]*" "((?:[^"\\]|\\.)*)"')
_ESC = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b'"': b'"', b"\\": b"\\"}


def _unescape(s: bytes) -> bytes:
    def one(m: re.Match[bytes]) -> bytes:
        e = m.group(1)
        return bytes([int(e[1:], 16)]) if e.startswith(b"x") and len(e) == 3 else _ESCAPES.get(e, e)

    return _ESC.sub(one, s)


def record_memory(redis: Any, prefix: str) -> int:
    # SAMPLES 0: every element counted, not an estimate from five of them.
    return sum(redis.memory_usage(k, samples=0) or 0 for k in redis.scan_iter(f"{prefix}*", count=1000))


def _one(tasks: Any, redis_url: str, root: Path, years: int, sample: int, start: datetime) -> dict[str, float]:
    ctx = tasks.context()
    end = start.replace(year=start.year + years)
    mon = Monitor(redis_url, root / f"monitor-{years}y.txt")
    t0 = time.perf_counter()
    sub = tasks.submit_backfill.delay(DAGS, start.isoformat(), end.isoformat(), "daily").get(timeout=120)
    submit_s = time.perf_counter() - t0
    bf = sub["backfill_id"]
    memory_at_submit = record_memory(ctx.redis, ctx.record.k_meta(bf))

    def sampled() -> bool:
        return all(ctx.record.dag(bf, d).counts["success"] >= sample for d in DAGS)

    wait_until(sampled, 900, f"{sample} windows of every DAG", every=1)
    cancel(ctx, bf, revoke=lambda b: tasks.app.control.revoke_by_stamped_headers({"backfill_id": b}, terminate=False))
    wait_backfill(tasks, bf, 120)
    time.sleep(1)
    finished = sum(ctx.record.dag(bf, d).counts["success"] for d in DAGS)
    sizes = mon.stop()
    print(
        f"  B3 {years:2d} y: {sub['windows']:,} windows, submit {submit_s:.2f} s, {len(sizes)} messages, "
        f"largest {max(sizes):,} B, {sum(sizes) / finished:,.0f} B per finished window ({finished} finished)",
        flush=True,
    )
    return {
        "submit": submit_s, "largest": max(sizes), "per_window": sum(sizes) / finished, "memory": memory_at_submit,
        "per_message": sum(sizes) / len(sizes),
    }  # fmt: skip


def full_record_memory(tasks: Any) -> int:
    """A 73,000-window record after every window succeeded, written by ``Record.transition``."""
    ctx = tasks.context()
    request = Request(dags=DAGS, start=START, end=START.replace(year=START.year + 10), batch="daily")
    params = validate(request, max_windows=ctx.settings.max_windows)
    ctx.record.create(params)
    t = 1_700_000_000.0
    for dag in params.dags:
        for seq in range(params.count(dag)):
            idx = params.index_at(seq, dag)
            window = params.spec.window(idx)
            run = params.run_id(window)
            ctx.record.transition(params, dag, idx, "triggered", run=run, triggered_at=t)
            ctx.record.transition(
                params, dag, idx, "running", run=run, started=datetime.fromtimestamp(t, UTC).isoformat()
            )
            ctx.record.transition(
                params, dag, idx, "success", run=run, api_calls=6, duration=3.1,
                started=datetime.fromtimestamp(t, UTC).isoformat(),
                ended=(datetime.fromtimestamp(t, UTC) + timedelta(seconds=3.1)).isoformat(),
            )  # fmt: skip
        ctx.record.finish_dag(params, dag, "succeeded")
    memory = record_memory(ctx.redis, ctx.record.k_meta(params.backfill_id))
    print(f"  B3 full record of {params.total:,} finished windows: {memory / 2**20:.1f} MiB", flush=True)
    return memory


def b3(root: Path, *, sample: int = 60) -> list[Figure]:
    # Runs end as soon as they are triggered: every window then costs exactly two looks (trigger,
    # then see it ended), so bytes per window measure message sizes, not timing luck.
    standin = Standin(set(DAGS), duration=0.0, queued=0.0)
    with bench_stack(root) as b:
        server = serve(standin, port := _free_port())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        b.stack.airflow_url = f"http://127.0.0.1:{port}"
        b.stack.airflow_password = "standin"
        redis_url = b.stack.start_redis()
        b.start_worker()
        tasks = b.orchestrator()
        try:
            # Disjoint ranges: on dates the first backfill ran, the second would find runs and skip
            # its windows (one message each, not counted as finished), which once inflated the
            # 10-year bytes per window by 1.3 to 1.5 x.
            one = _one(tasks, redis_url, root, 1, sample, START.replace(year=START.year - 10))
            ten = _one(tasks, redis_url, root, 10, sample, START)
            memory = full_record_memory(tasks)
        finally:
            server.shutdown()
            tasks.app.close()
    return [
        Figure("B3", "time to submit 73,000 windows (20 DAGs x 10 y)", [ten["submit"]], 5.0, "s"),
        Figure("B3", "time to submit 7,300 windows (20 DAGs x 1 y)", [one["submit"]], float("inf"), "s"),
        Figure("B3", "largest broker message, 10 y", [ten["largest"] / 1024], 64.0, "KiB"),
        Figure("B3", "largest broker message, 1 y", [one["largest"] / 1024], 64.0, "KiB"),
        Figure(
            "B3",
            "average broker message, 10 y / 1 y",
            [ten["per_message"] / one["per_message"]],
            1.05,
            "x",
            note=f"{one['per_message']:,.0f} B (1 y) and {ten['per_message']:,.0f} B (10 y)",
        ),
        Figure(
            "B3",
            "broker bytes per window, 10 y / 1 y",
            [ten["per_window"] / one["per_window"]],
            1.25,
            "x",
            note=f"{one['per_window']:,.0f} B (1 y) and {ten['per_window']:,.0f} B (10 y) per finished window, "
            f"over the first {sample} windows of each of the 20 DAGs",
        ),
        Figure("B3", "record in Redis right after the submit, 10 y", [ten["memory"] / 2**20], 100.0, "MiB"),
        Figure("B3", "record in Redis with all 73,000 windows finished", [memory / 2**20], 40.0, "MiB"),
    ]


def _free_port() -> int:
    from devstack import free_port

    return free_port()
