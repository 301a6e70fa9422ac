"""A private redis-server for the harness (or the one given)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(url: str | None = None) -> Iterator[str]:
    if url:
        yield url
        return
    port, tmp = _free_port(), tempfile.mkdtemp(prefix="faults-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp, "--databases", "64", "--unixsocket", f"{tmp}/redis.sock", "--unixsocketperm", "700"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        # A Unix socket: a schedule is mostly round trips to Redis, a third faster than over TCP.
        yield f"unix://{tmp}/redis.sock?db=2"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
