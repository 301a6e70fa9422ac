"""Helpers for integration tests: every assertion reads Airflow's run records or Redis."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
import urllib.request
from itertools import pairwise
from typing import Any

from backfill.airflow import AirflowClient, RunInfo
from backfill.record import Record


def submit(orch: Any, **kwargs: Any) -> dict[str, Any]:
    return orch.tasks.submit_backfill.apply_async(kwargs=kwargs).get(timeout=60)


def wait_done(record: Record, bf: str, timeout: float = 180) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = record.meta(bf)
        if meta["state"] != "running":
            return meta
        time.sleep(0.5)
    raise AssertionError(f"backfill {bf} still running after {timeout} s: {record.meta(bf)}")


def runs(airflow: AirflowClient, dag: str, prefix: str) -> list[RunInfo]:
    """The DAG's runs whose id starts with ``prefix``, in order of logical date."""
    return airflow.runs_by_prefix(dag, prefix)


def by_trigger_time(rs: list[RunInfo]) -> list[RunInfo]:
    return sorted(rs, key=lambda r: r.queued_at)


def assert_serial(rs: list[RunInfo]) -> None:
    """Each run was triggered only after the previous one ended: never two at once on a DAG.

    ``queued_at`` is when the run was triggered, so this holds even where Airflow's own
    max_active_runs would have kept a second run queued.
    """
    ordered = by_trigger_time(rs)
    for prev, nxt in pairwise(ordered):
        assert prev.end_date is not None, f"{prev.run_id} never ended"
        assert nxt.queued_at >= prev.end_date, (
            f"{nxt.run_id} triggered at {nxt.queued_at} before {prev.run_id} ended at {prev.end_date}"
        )


def max_concurrent(rs: list[RunInfo]) -> int:
    """Most runs in flight at one moment, counting a run from its trigger to its end."""
    points = [(r.queued_at, 1) for r in rs] + [(r.end_date, -1) for r in rs]
    best = now = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        now += delta
        best = max(best, now)
    return best


def wait_for(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout} s")


class Proxy:
    """A TCP proxy in front of Airflow's API that can be cut (connections refused) and restored;
    with ``tls`` (a server-side SSL context) it is a TLS front, as a load balancer would be."""

    def __init__(self, target: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tls = tls
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        server, self._server = self._server, None
        if server:
            # shutdown() first: on Linux, close() alone leaves a thread blocked in accept()
            # holding the listening socket open, and connections would still go through.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    client = self.tls.wrap_socket(client, server_side=True)
                except (ssl.SSLError, OSError):
                    client.close()  # the client refused our certificate
                    continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class Webhook:
    """A local HTTP endpoint that records the JSON bodies POSTed to it, as a chat's webhook
    would receive them; the first ``fail_first`` POSTs are answered 503 (to see retries)."""

    def __init__(self, *, fail_first: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.paths: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 503 if len(hook.statuses) < fail_first else 200
                hook.statuses.append(status)
                hook.paths.append(self.path)
                if status == 200:
                    hook.bodies.append(json.loads(raw))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One Prometheus scrape of ``127.0.0.1:port``: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def exposed(port: int) -> set[str]:
    """Every metric name ``127.0.0.1:port`` exposes, as PromQL names it (a counter's ``_total``,
    a histogram's ``_bucket``/``_count``/``_sum``), samples or not yet."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes} | {s.name for s in family.samples}
    return names


def samples(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> dict[
        tuple[tuple[str, str], ...], float]:  # fmt: skip
    """The samples of ``name`` whose labels include ``labels``."""
    return {lab: v for (n, lab), v in scraped.items() if n == name and all((k, w) in lab for k, w in labels.items())}
