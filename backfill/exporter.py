"""Prometheus metrics of the backfills, read from their records in Redis (``backfill metrics``).

A separate process from the workers, so that a scrape costs Redis reads and nothing else: no
Airflow request, no work in a worker. The workers export what only they see (Airflow requests,
Redis errors: ``backfill.metrics``).

Exported per backfill that is running or ended within ``keep`` seconds (label ``backfill``)
and per DAG of it (``dag``); no label is ever a window, so a 10-year daily backfill of 20 DAGs
makes at most 20 x (states + wait reasons) series:

- ``backfill_windows{backfill,dag,state}``: windows by state (planned, waiting, triggered,
  running, success, failed, skipped, not_run, cancelled);
- ``backfill_windows_planned`` / ``backfill_windows_done``: progress of a backfill;
- ``backfill_running``: 1 while a backfill runs; ``backfill_dag_failed{backfill,dag}``: 1 for a
  DAG whose part ended failed (stopped by ``on_failure=stop``, or with failed windows);
- ``backfill_window_waiting{backfill,dag,reason}``: 1 for a DAG whose current window waits, by
  why (``WAIT_REASONS``);
- ``backfill_expected_end_timestamp_seconds``: when the backfill should end, from each DAG's
  pace so far (or its learnt run time) and ``max_parallel_dags``;
- ``backfill_last_progress_timestamp_seconds``: the last state change of any of its windows;
  ``backfill_expected_window_seconds``: how long one window of its slowest running DAG should
  take (an hour when nothing is learnt yet), for the no-progress alert;

and, from the windows' events read as they are written (since this process started):

- ``backfill_handoff_seconds``: a histogram of the time from a run's end (Airflow's end date,
  placed on our clock) to the trigger of its DAG's next window;
- ``backfill_waits_total{reason}``: windows that started waiting, by why (the first reason of
  a wait: a wait whose reason changes counts once);

and ``backfill_exporter_errors_total``: backfill records a scrape could not read (logged; the
scrape shows the others).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from backfill.errors import BackfillNotFound, describe
from backfill.model import BackfillParams
from backfill.record import DagRecord, Record, WindowRecord
from backfill.runner import WAIT_OUTAGE
from backfill.states import TERMINAL, DagState, WindowState

log = logging.getLogger("backfill")

KEEP = 86_400.0  # seconds an ended backfill stays exported
NOTHING_LEARNT = 3600.0  # backfill_expected_window_seconds before any run of its DAGs is known
HANDOFF_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)

# Why a window waits, from the reason its record gives (prefix or phrase -> label).
WAIT_REASONS: tuple[tuple[str, str], ...] = (
    ("DAG busy:", "dag_busy"),  # a run of the DAG the orchestrator did not trigger (or another window's)
    ("DAG locked by", "lock"),  # another backfill holds the DAG
    ("DAG next for", "lock"),  # or is first in line for it
    ("max_parallel_dags=", "max_parallel_dags"),
    ("global limit reached", "global_limit"),
    (WAIT_OUTAGE, "airflow_unavailable"),
    ("is paused in Airflow", "dag_paused"),
    ("quiet hours ", "quiet_hours"),
    ("max_starts_per_hour=", "max_starts_per_hour"),
    ("): retrying at ", "retry"),  # an attempt failed: the next waits for retry_delay
    ("waiting for ", "upstream"),  # after=: the same window of an upstream DAG has not succeeded yet
)


def wait_reason(reason: str | None) -> str:
    """The bounded label of a waiting window's reason ("other" for the rare ones)."""
    for phrase, label in WAIT_REASONS:
        if reason and (reason.startswith(phrase) or phrase in reason):
            return label
    return "other"


@dataclass
class _Tail:
    """Where this process is in one backfill's event stream."""

    after: str
    done: bool = False


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(HANDOFF_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(HANDOFF_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
        self.buckets[-1] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        bounds = [*(str(b) for b in HANDOFF_BUCKETS), "+Inf"]
        return HistogramMetricFamily(
            name, doc, buckets=list(zip(bounds, self.buckets, strict=True)), sum_value=self.total
        )


class RecordCollector(Collector):
    """Collects on every scrape; keeps only the event streams' read positions and the counters."""

    def __init__(self, record: Record, *, keep: float = KEEP, limit: int = 10_000) -> None:
        self.record = record
        self.keep = keep
        self.limit = limit
        self.started = record.clock.now()
        self._tails: dict[str, _Tail] = {}
        self._handoffs = _Histogram()
        self._waits: dict[str, int] = {}
        self._waiting: set[tuple[str, str, int]] = set()  # windows waiting now (bf, dag, idx)
        self._errors = 0
        # The HTTP server collects in a thread per scrape: two scrapes must not read the same
        # events twice (each would count them).
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            return iter(self._collect())

    def _collect(self) -> list[Metric]:
        out: list[Metric] = []
        g = _Families()
        now = self.record.clock.now()
        shown: set[str] = set()
        for bf in self.record.recent(self.limit):
            try:
                meta = self.record.meta(bf)
                if not meta.get("params"):
                    continue
                finished = float(meta["finished_at"]) if meta.get("finished_at") else None
                if finished is not None and now - finished > self.keep:
                    continue
                shown.add(bf)
                params = self.record.params(bf)
                self._read_events(bf, params, float(meta.get("created_at") or 0), finished)
                self._backfill(g, bf, params, meta, now)
            except BackfillNotFound:  # expired: the index is pruned only at the next submit
                continue
            except Exception as exc:  # one unreadable record (or a Redis blip) must not blank the scrape
                self._errors += 1
                log.warning("backfill metrics: could not read backfill %s (%s)", bf, describe(exc))
        # What is no longer shown is forgotten: the exporter's memory follows what it exports.
        self._tails = {bf: tail for bf, tail in self._tails.items() if bf in shown}
        self._waiting = {key for key in self._waiting if key[0] in shown}
        self.record.forget(keep=shown)
        out += g.all()
        out.append(self._handoffs.family(
            "backfill_handoff_seconds", "From a run's end (Airflow's end date) to the trigger of its DAG's next window"
        ))  # fmt: skip
        waits = CounterMetricFamily("backfill_waits", "Windows that started waiting, by why", labels=["reason"])
        for reason, n in sorted(self._waits.items()):
            waits.add_metric([reason], n)
        out.append(waits)
        errors = CounterMetricFamily("backfill_exporter_errors", "Backfill records a scrape could not read")
        errors.add_metric([], self._errors)
        out.append(errors)
        return out

    # -- gauges from the record ---------------------------------------------------------------

    def _backfill(self, g: _Families, bf: str, params: BackfillParams, meta: dict[str, str], now: float) -> None:
        pipe = self.record.redis.pipeline(transaction=False)
        for dag in params.dags:
            pipe.hgetall(self.record.k_dag(bf, dag))
        dags = {
            dag: DagRecord.from_hash({k.decode(): v.decode() for k, v in raw.items()})
            for dag, raw in zip(params.dags, pipe.execute(), strict=True)
        }
        done = planned = 0
        remaining: list[float] = []
        slowest = 0.0
        for dag, info in dags.items():
            total = params.count(dag)
            planned += total
            done += info.done
            current = info.current_state if info.current_state not in (None, *TERMINAL) else None
            for state in WindowState:
                if state in TERMINAL:
                    n = info.counts.get(state, 0)
                elif state == WindowState.PLANNED:
                    n = total - info.done - (1 if current else 0)
                else:
                    n = 1 if current == state else 0
                g.windows.add_metric([bf, dag, state.value], n)
            for label in (*(label for _, label in WAIT_REASONS), "other"):
                g.waiting.add_metric([bf, dag, label], 1 if current == WindowState.WAITING and
                                     wait_reason(info.reason) == label else 0)  # fmt: skip
            g.dag_failed.add_metric([bf, dag], 1 if info.state == DagState.FAILED else 0)
            if info.state not in (DagState.SUCCEEDED, DagState.FAILED, DagState.CANCELLED):
                per_window = _per_window(info, now)
                if per_window is not None:
                    remaining.append((total - info.done) * per_window)
                pace = info.pace
                if pace.total:
                    slowest = max(slowest, pace.total + 3 * (pace.total_dev or 0.0))
        running = meta.get("state") == DagState.RUNNING
        g.planned.add_metric([bf], planned)
        g.done.add_metric([bf], done)
        g.running.add_metric([bf], 1 if running else 0)
        if running:
            g.window_seconds.add_metric([bf], slowest or NOTHING_LEARNT)
            if remaining:
                lanes = min(len(remaining), params.max_parallel_dags or len(remaining))
                g.expected_end.add_metric([bf], now + max(max(remaining), sum(remaining) / lanes))
        last = self._last_event(bf)
        if last is not None:
            event_id, fields = last
            ts = fields.get(b"t")
            g.progress.add_metric([bf], float(ts) if ts else int(event_id.split(b"-")[0]) / 1000)

    # -- counters from the event stream ---------------------------------------------------------

    def _read_events(self, bf: str, params: BackfillParams, created: float, finished: float | None) -> None:
        tail = self._tails.get(bf)
        if tail is None:
            # A backfill older than this process: its past events were counted by an earlier
            # one (or by nobody); counting them now would replay old waits and handoffs.
            after = "-"
            if created < self.started:
                last = self._last_event(bf)
                after = last[0].decode() if last else "-"
            tail = self._tails[bf] = _Tail(after)
        if tail.done:
            return
        while True:
            events = self.record.events(bf, after=tail.after, count=1000)
            for event_id, event in events:
                tail.after = event_id
                if event.get("kind") != "window":
                    continue
                key = (bf, event["dag"], int(event["idx"]))
                if event["state"] != WindowState.WAITING:
                    self._waiting.discard(key)
                elif key not in self._waiting:
                    # A wait's reason changes as it goes on (busy, then locked...): one wait.
                    self._waiting.add(key)
                    label = wait_reason(event.get("reason"))
                    self._waits[label] = self._waits.get(label, 0) + 1
                if event["state"] == WindowState.TRIGGERED:
                    gap = self._handoff(bf, params, event)
                    if gap is not None:
                        self._handoffs.observe(gap)
            if len(events) < 1000:
                break
        tail.done = finished is not None
        if tail.done:
            self._waiting = {key for key in self._waiting if key[0] != bf}

    def _last_event(self, bf: str) -> tuple[bytes, dict[bytes, bytes]] | None:
        found = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self.record.redis.xrevrange(self.record.k_events(bf), "+", "-", count=1),
        )
        return found[0] if found else None

    def _handoff(self, bf: str, params: BackfillParams, event: dict[str, Any]) -> float | None:
        dag, idx = event["dag"], event["idx"]
        seq = params.seq_of(idx, dag)
        if seq == 0:
            return None
        prev = self.record.window(bf, dag, params.index_at(seq - 1, dag))
        return _gap(prev, float(event["ts"]))


def _gap(prev: WindowRecord, triggered: float) -> float | None:
    """Seconds from the previous window's run end (Airflow's clock + the measured skew) to ``triggered``."""
    if not prev.ended or prev.state not in TERMINAL:
        return None
    return max(0.0, triggered - (datetime.fromisoformat(prev.ended).timestamp() + prev.skew))


def _per_window(info: DagRecord, now: float) -> float | None:
    """Seconds one more window of the DAG should take: its pace so far, else its learnt run time."""
    if info.done and info.started_at:
        return (now - info.started_at) / info.done
    return info.pace.total


class _Families:
    def __init__(self) -> None:
        bd = ["backfill", "dag"]
        self.windows = GaugeMetricFamily("backfill_windows", "Windows by state", labels=[*bd, "state"])
        self.waiting = GaugeMetricFamily(
            "backfill_window_waiting", "1 for a DAG whose current window waits, by why", labels=[*bd, "reason"]
        )
        self.dag_failed = GaugeMetricFamily("backfill_dag_failed", "1 for a DAG whose part ended failed", labels=bd)
        self.planned = GaugeMetricFamily("backfill_windows_planned", "Windows of the backfill", labels=["backfill"])
        self.done = GaugeMetricFamily(
            "backfill_windows_done", "Windows of the backfill that ended", labels=["backfill"]
        )
        self.running = GaugeMetricFamily("backfill_running", "1 while the backfill runs", labels=["backfill"])
        self.expected_end = GaugeMetricFamily(
            "backfill_expected_end_timestamp_seconds", "When the backfill should end (Unix time)", labels=["backfill"]
        )
        self.progress = GaugeMetricFamily(
            "backfill_last_progress_timestamp_seconds", "The last state change of a window (Unix time)",
            labels=["backfill"],
        )  # fmt: skip
        self.window_seconds = GaugeMetricFamily(
            "backfill_expected_window_seconds", "How long a window of the slowest running DAG should take",
            labels=["backfill"],
        )  # fmt: skip

    def all(self) -> list[Metric]:
        return [v for v in vars(self).values() if isinstance(v, Metric)]


def render(record: Record, *, keep: float = KEEP) -> str:
    """The exposition text of one scrape (``backfill metrics --once``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(RecordCollector(record, keep=keep))
    return generate_latest(registry).decode()


def serve(record: Record, *, port: int, addr: str = "0.0.0.0", keep: float = KEEP) -> None:
    """Serve ``/metrics`` on ``port`` until the process is stopped."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(RecordCollector(record, keep=keep))
    start_http_server(port, addr=addr, registry=registry)
    while True:
        time.sleep(3600)
