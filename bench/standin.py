"""A stand-in for Airflow's REST API: a BENCHMARK TOOL, not a test double for correctness.

Airflow cannot run 200 DAGs at once on a 2-core machine, so B4 (and B3, which only needs DAGs
to exist and runs to end) talks to this small server instead. It answers the endpoints the
orchestrator uses, with bodies shaped like Airflow 3.3's (``standin_templates.json`` holds a
real DAG and a real run as returned by Airflow 3.3.2), and the same rules that matter to the
orchestrator: one run per (DAG, logical date) and per run id (409), runs go queued → running →
success after configurable times, clear re-queues a run, a PATCH fails it.

Correctness is tested against the real Airflow (``tests/integration``); this only measures
the orchestrator's own cost.

    python -m bench.standin --port 8099 --dags 200 --duration 20 --queued 0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

TEMPLATES = json.loads((Path(__file__).parent / "standin_templates.json").read_text())


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Run:
    dag_id: str
    run_id: str
    logical_date: str
    interval: tuple[str, str]
    conf: dict[str, Any]
    queued_at: float
    duration: float
    failed_at: float | None = None

    def times(self, queued: float) -> tuple[str, float | None, float | None]:
        now = time.time()
        start = self.queued_at + queued
        end = start + self.duration
        if self.failed_at is not None:
            return "failed", min(start, self.failed_at), self.failed_at
        if now < start:
            return "queued", None, None
        if now < end:
            return "running", start, None
        return "success", start, end


@dataclass
class Standin:
    dags: set[str]
    duration: float = 20.0
    jitter: float = 0.0  # each run's duration is duration * (1 +- jitter)
    queued: float = 0.5  # seconds a run stays queued before it starts
    runs: dict[str, dict[str, Run]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    request_times: list[float] = field(default_factory=list)  # when each request came (B5)
    request_kinds: list[str] = field(default_factory=list)  # and what it asked (``kind``)
    triggers: list[tuple[float, str]] = field(default_factory=list)

    def run_json(self, run: Run) -> dict[str, Any]:
        state, start, end = run.times(self.queued)
        body = copy.deepcopy(TEMPLATES["run"])
        body.update(
            dag_run_id=run.run_id, dag_id=run.dag_id, logical_date=run.logical_date, queued_at=_iso(run.queued_at),
            start_date=_iso(start), end_date=_iso(end), duration=(end - start) if end and start else None,
            data_interval_start=run.interval[0], data_interval_end=run.interval[1], run_after=_iso(run.queued_at),
            state=state, conf=run.conf, note=None, dag_display_name=run.dag_id,
        )  # fmt: skip
        return body

    def active(self) -> int:
        states = (r.times(self.queued)[0] for runs in self.runs.values() for r in runs.values())
        return sum(1 for s in states if s in ("queued", "running"))

    @property
    def max_active(self) -> int:
        """The most runs active (queued or running) at once, from the runs' own times, afterwards:
        counted at every trigger, it cost the stand-in (on the benchmark's cores) a pass over
        every DAG's runs per trigger, B4's busiest moments included."""
        with self.lock:
            return self._peak()

    def _peak(self) -> int:
        edges = []
        for runs in self.runs.values():
            for r in runs.values():
                end = r.failed_at if r.failed_at is not None else r.queued_at + self.queued + r.duration
                edges += [(r.queued_at, 1), (end, -1)]
        peak = level = 0
        for _, step in sorted(edges):  # an end before a start at the same instant
            level += step
            peak = max(peak, level)
        return peak

    def ended(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v2/dags/~/dagRuns/list``: runs of ``dag_ids`` in ``states`` ended at or
        after ``end_date_gte``, or started at or after ``start_date_gte`` (the watcher's
        filters), or with a logical date in [``logical_date_gte``, ``logical_date_lte``] (the
        submit's), oldest first, paged."""
        ended = _parse(body["end_date_gte"]).timestamp() if body.get("end_date_gte") else None
        started = _parse(body["start_date_gte"]).timestamp() if body.get("start_date_gte") else None
        lo = _parse(body["logical_date_gte"]) if body.get("logical_date_gte") else None
        hi = _parse(body["logical_date_lte"]) if body.get("logical_date_lte") else None
        states = set(body.get("states") or ("queued", "running", "success", "failed"))
        found = []
        for dag in body.get("dag_ids") or list(self.runs):
            for run in self.runs.get(dag, {}).values():
                state, start, end = run.times(self.queued)
                if state not in states:
                    continue
                if ended is not None and (end is None or end < ended):
                    continue
                if started is not None and (start is None or start < started):
                    continue
                if lo is not None or hi is not None:
                    logical = _parse(run.logical_date)
                    if (lo is not None and logical < lo) or (hi is not None and logical > hi):
                        continue
                found.append((run.queued_at, run))
        found.sort(key=lambda x: x[0])
        offset, limit = int(body.get("page_offset") or 0), int(body.get("page_limit") or 100)
        page = [self.run_json(r) for _, r in found[offset : offset + limit]]
        return {"dag_runs": page, "total_entries": len(found)}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            active = self.active()
            return {
                "requests": self.requests,
                "max_active": self._peak(),
                "active": active,
                "triggers": self.triggers,
            }


def kind(method: str, path: str, q: dict[str, list[str]]) -> str:
    """What a request asked, for B5's breakdown: ``GET run``, ``POST runs/list``, ..."""
    if path.endswith("/dagRuns/list"):
        return f"{method} runs/list (many DAGs)"
    parts = path.removeprefix("/api/v2/dags/").split("/")
    if path.startswith("/api/v2/dags/") and len(parts) <= 2 and not path.endswith("/dagRuns"):
        return f"{method} DAG"
    if path.endswith("/dagRuns"):
        asked = ",".join(sorted(k for k in q if k not in ("limit", "offset")))
        return f"{method} {'trigger' if method == 'POST' else 'runs ?' + asked}"
    if path.endswith("/clear"):
        return f"{method} clear"
    return f"{method} {'run' if '/dagRuns/' in path else path}"


def make_handler(st: Standin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK add 40 ms to every answer.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            q = parse_qs(url.query)
            body = self._body() if method != "GET" else {}
            with st.lock:
                st.requests += 1
                st.request_times.append(time.time())
                st.request_kinds.append(kind(method, url.path, q))
                status, out = self._handle(method, url.path, q, body)
            self._send(status, out)

        def _handle(self, method: str, path: str, q: dict[str, list[str]], body: dict[str, Any]) -> tuple[int, Any]:
            if path == "/auth/token":
                return 201, {"access_token": "standin.eyJleHAiOjQxMDI0NDQ4MDB9.x"}
            if path == "/bench/stats":
                return 200, st.stats()
            if path == "/api/v2/dags/~/dagRuns/list" and method == "POST":
                return 200, st.ended(body)
            path = path.removesuffix("/details")  # the DAG's details: the same fields, and more
            m = re.fullmatch(r"/api/v2/dags/([^/]+)(/dagRuns(?:/([^/]+)(/clear)?)?)?", path)
            if not m or m.group(1) not in st.dags:
                return 404, {"detail": f"not found: {path}"}
            dag_id, runs_part, run_id, clear = m.groups()
            run_id = unquote(run_id) if run_id else None
            runs = st.runs.setdefault(dag_id, {})
            if not runs_part:
                dag = copy.deepcopy(TEMPLATES["dag"])
                dag.update(dag_id=dag_id, dag_display_name=dag_id, is_paused=False, tags=[])
                return 200, dag
            if run_id is None and method == "POST":
                return self._trigger(dag_id, runs, body)
            if run_id is None:
                return 200, self._list(runs, q)
            run = runs.get(run_id)
            if run is None:
                return 404, {"detail": f"run {run_id} not found"}
            if clear:
                run.queued_at, run.failed_at = time.time(), None
                return 200, {"task_instances": [], "total_entries": 0}
            if method == "PATCH":
                run.failed_at = time.time()
            return 200, st.run_json(run)

        def _trigger(self, dag_id: str, runs: dict[str, Run], body: dict[str, Any]) -> tuple[int, Any]:
            rid, logical = body["dag_run_id"], body["logical_date"]
            if rid in runs or any(_parse(r.logical_date) == _parse(logical) for r in runs.values()):
                return 409, {"detail": "Unique constraint violation"}
            duration = st.duration * (1 + random.uniform(-st.jitter, st.jitter))
            run = Run(dag_id, rid, logical, (body["data_interval_start"], body["data_interval_end"]),
                      body.get("conf") or {}, time.time(), duration)  # fmt: skip
            runs[rid] = run
            st.triggers.append((run.queued_at, dag_id))
            return 200, st.run_json(run)

        def _list(self, runs: dict[str, Run], q: dict[str, list[str]]) -> dict[str, Any]:
            chosen = runs.values()
            if "state" in q:  # before the JSON (a busy check per window asks for the active ones)
                chosen = [r for r in chosen if r.times(st.queued)[0] in q["state"]]
            items = [st.run_json(r) for r in chosen]
            if "logical_date_gte" in q:
                lo = _parse(q["logical_date_gte"][0])
                items = [r for r in items if _parse(r["logical_date"]) >= lo]
            if "logical_date_lte" in q:
                hi = _parse(q["logical_date_lte"][0])
                items = [r for r in items if _parse(r["logical_date"]) <= hi]
            if "run_id_pattern" in q:
                items = [r for r in items if q["run_id_pattern"][0] in r["dag_run_id"]]
            order = (q.get("order_by") or ["logical_date"])[0]
            key = order.lstrip("-")
            items.sort(key=lambda r: r.get(key) or "", reverse=order.startswith("-"))
            offset = int((q.get("offset") or ["0"])[0])
            limit = int((q.get("limit") or ["50"])[0])
            return {"dag_runs": items[offset : offset + limit], "total_entries": len(items)}

    return Handler


def serve(st: Standin, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(st))
    server.daemon_threads = True
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description="A stand-in for Airflow's REST API (benchmark tool)")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--dags", type=int, default=200, help="DAGs bench_000 .. bench_NNN")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds a run takes once started")
    ap.add_argument("--jitter", type=float, default=0.0)
    ap.add_argument("--queued", type=float, default=0.5, help="seconds a run stays queued")
    a = ap.parse_args()
    st = Standin({f"bench_{i:03d}" for i in range(a.dags)}, duration=a.duration, jitter=a.jitter, queued=a.queued)
    serve(st, a.port).serve_forever()


if __name__ == "__main__":
    main()
