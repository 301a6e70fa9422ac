"""Helpers for integration tests: every assertion reads Airflow's run records or Redis."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
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
