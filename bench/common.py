"""What the benchmarks share: a private stack, the orchestrator's modules, figures and targets."""

from __future__ import annotations

import importlib
import itertools
import os
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from backfill.airflow import AirflowClient, AirflowConfig, RunInfo
from devstack import Proc, Stack

REPO = Path(__file__).resolve().parent.parent
BENCH_DAGS = REPO / "bench" / "dags"
SCRAPE_EVERY = 15.0  # Prometheus's default scrape interval


@dataclass
class Figure:
    """One measured figure against its target: ``values`` are the samples (or the one value)."""

    bench: str
    name: str
    values: list[float]
    target: float
    unit: str
    higher_is_worse: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ok(self) -> bool:
        return self.median <= self.target if self.higher_is_worse else self.median >= self.target

    def _median_spread(self) -> str:
        spread = f"{_fmt(min(self.values))} to {_fmt(max(self.values))}" if len(self.values) > 1 else "-"
        return f"{_fmt(self.median)} {self.unit} | {spread}"

    def row(self) -> str:
        if self.target == float("inf"):  # a reference figure, shown for comparison
            return f"| {self.bench} | {self.name} | (reference) | {self._median_spread()} | {len(self.values)} | |"
        op = "≤" if self.higher_is_worse else "≥"
        verdict = "met" if self.ok else "**MISSED**"
        return (
            f"| {self.bench} | {self.name} | {op} {_fmt(self.target)} {self.unit} | {self._median_spread()} "
            f"| {len(self.values)} | {verdict} |"
        )


def _fmt(x: float) -> str:
    if x == int(x) and abs(x) >= 10:
        return f"{int(x):,}"
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


TABLE_HEAD = "| bench | figure | target | median | min-max | samples | verdict |\n|---|---|---|---|---|---|---|"


@dataclass
class BenchStack:
    """A private redis-server, optionally a real Airflow (bench DAGs), and orchestrator workers."""

    root: Path
    stack: Stack = field(init=False)
    scrapes: int = 0

    def __post_init__(self) -> None:
        self.stack = Stack(self.root)

    def start_airflow(self) -> AirflowClient:
        """Airflow on a private PostgreSQL: on SQLite, Airflow answers concurrent writes (a trigger
        while its scheduler commits) with 5 s stalls and 500s, and backfill creation with 503."""
        database = self.stack.start_postgres()
        self.stack.start_airflow(dags_folder=BENCH_DAGS, expect_dags=5, database_url=database)
        return self.client()

    def client(self) -> AirflowClient:
        s = self.stack
        return AirflowClient(AirflowConfig(url=s.airflow_url, username=s.airflow_user, password=s.airflow_password))

    def start_worker(self, *, app: str = "workers", **env: str) -> Proc:
        """The benchmarks' worker (2 processes), as production runs it: serving its Prometheus
        metrics (``BACKFILL_METRICS_PORT``), scraped every ``SCRAPE_EVERY`` s as Prometheus would,
        so that the figures include what metrics cost."""
        from devstack import free_port

        port = free_port()
        env = {"BACKFILL_METRICS_PORT": str(port), "BACKFILL_METRICS_ADDR": "127.0.0.1", **env}
        worker = self.stack.start_worker("bench", concurrency=2, app=app, **env)
        scraper = threading.Thread(target=self._scrape, args=(port, worker), daemon=True)
        scraper.start()
        return worker

    def _scrape(self, port: int, worker: Proc) -> None:
        while worker.alive():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                    resp.read()
                self.scrapes += 1
            except OSError:
                pass
            time.sleep(SCRAPE_EVERY)

    def orchestrator(self, **env: str) -> ModuleType:
        """Point this process's orchestrator at the stack and return ``workers.tasks``."""
        os.environ.update({k: v for k, v in self.stack.env(**env).items() if k != "PATH"})
        return importlib.import_module("workers.tasks")

    def stop(self) -> None:
        self.stack.stop_all()


@contextmanager
def bench_stack(root: Path) -> Iterator[BenchStack]:
    b = BenchStack(root)
    try:
        yield b
    finally:
        b.stop()


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_backfill(tasks: ModuleType, bf: str, timeout: float) -> dict[str, str]:
    record = tasks.context().record
    return wait_until(
        lambda: (m := record.meta(bf)).get("state") in ("succeeded", "failed", "cancelled") and m,
        timeout,
        f"backfill {bf}",
    )


def by_dag(runs: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """The runs of each DAG, in start order."""
    out: dict[str, list[RunInfo]] = {}
    for r in sorted(runs, key=lambda r: r.start_date):
        out.setdefault(r.dag_id, []).append(r)
    return out


def gaps(runs: list[RunInfo]) -> list[float]:
    """Seconds between one run's end and the next run's start, per DAG, in start order."""
    return [
        (b.start_date - a.end_date).total_seconds()
        for dag_runs in by_dag(runs).values()
        for a, b in itertools.pairwise(dag_runs)
    ]


def process_cpu(pids: list[int], *, descendants: bool = True) -> float:
    """User + system CPU seconds of these processes and (``descendants``) every descendant
    still alive."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _with_descendants(pids) if descendants else set(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _with_descendants(pids: list[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = set(pids)
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found
