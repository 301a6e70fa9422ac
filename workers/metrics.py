"""A worker's ``/metrics`` (``backfill.metrics``): with ``BACKFILL_METRICS_PORT`` set, the
worker's main process serves the values its task processes wrote.

prometheus-client picks its multiprocess mode when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR``: ``prepare`` runs before anything imports it (``workers``'s first
line), so this module imports it only inside ``serve``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping

MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
PORT = "BACKFILL_METRICS_PORT"


def prepare(env: MutableMapping[str, str]) -> str | None:
    """With ``BACKFILL_METRICS_PORT`` set, give the processes a directory to write their values
    in: ``PROMETHEUS_MULTIPROC_DIR`` if set, else a new one."""
    if not env.get(PORT):
        return None
    path = env.get(MULTIPROC)
    if not path:
        path = tempfile.mkdtemp(prefix="backfill-metrics-")
        # Every process importing ``workers`` gets here (a `celery inspect`, a `backfill` command
        # in the worker's container): the one that made the directory removes it at its exit
        # (not its forked children, whose exit skips atexit or is not the creator's pid).
        atexit.register(_remove, path, os.getpid())
    os.makedirs(path, exist_ok=True)
    env[MULTIPROC] = path
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # Imported already (celery loads its command plugins, Flower's among them, before
        # ``-A workers``): choose the mode again; our metrics are built after this.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def _remove(path: str, creator: int) -> None:
    if os.getpid() == creator:
        shutil.rmtree(path, ignore_errors=True)


def reset(env: MutableMapping[str, str]) -> None:
    """A worker starting (before its pool forks): forget an earlier worker's values in the
    directory, which would otherwise add up with this one's. Not done in ``prepare``: a
    ``celery -A workers inspect`` run beside a worker (same environment) must not wipe them."""
    path = env.get(MULTIPROC)
    if env.get(PORT) and path and os.path.isdir(path):
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))


def serve(env: MutableMapping[str, str]) -> int | None:
    """Serve the sum of the processes' values on ``BACKFILL_METRICS_PORT`` (all interfaces, or
    ``BACKFILL_METRICS_ADDR``), from a thread of the calling process. Returns the port."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from backfill.errors import InputError

    if not env.get(PORT):
        return None
    try:
        port = int(env[PORT])
    except ValueError:
        raise InputError(f"{PORT}: expected a port number, got {env[PORT]!r}") from None
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=env.get("BACKFILL_METRICS_ADDR", "0.0.0.0"), registry=registry)
    logging.getLogger("backfill").info("metrics on :%d/metrics", port)
    return port
