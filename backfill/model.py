"""The model of a backfill: ``BackfillParams``, a validated request, from which every window,
its run id and its place in its DAG's run order are computed (nothing per window is stored).

It is what the record keeps as the backfill's plan (``backfill.record``), what every task
carries by id, and what ``backfill.request`` produces from a user's request.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from backfill.schedule import Schedule
from backfill.windows import Window, WindowSpec, window_spec

# Fields added after the first release, with the value that means "not used".
LATER_FIELDS: dict[str, Any] = {
    "notify": None, "quiet_hours": None, "max_starts_per_hour": 0, "retries": 0, "retry_delay": 60.0,
    "after": None, "priority": 0,
}  # fmt: skip
RETRY_DELAY_MAX = 3600.0  # the longest wait between two attempts of a window (unless retry_delay is longer)


@dataclass(frozen=True, kw_only=True)
class BackfillParams:
    """A validated backfill: everything needed to recompute any of its windows."""

    backfill_id: str
    dags: list[str]
    start: str  # ISO instant, inclusive
    end: str  # ISO instant, exclusive
    batch: str
    tz: str | None = None
    reverse: bool = False
    conf: dict[str, Any] = field(default_factory=dict)
    on_failure: str = "stop"
    reprocess: str = "none"
    created_at: float = 0.0
    max_parallel_dags: int = 0  # 0: no limit; else at most this many DAGs with a run in flight
    # A resumed backfill runs only some windows: per DAG, [start, stop) ranges of chronological
    # window indices. None: every window of the range, for every DAG.
    only: dict[str, list[list[int]]] | None = None
    # Backfills this one resumes (oldest first): their runs at our windows' dates are ours to re-run.
    lineage: list[str] = field(default_factory=list)
    # A window whose logical date is held by a run covering something else: "refuse" (refused at
    # submit; one appearing later fails its window) or "skip" (backfill.history).
    on_conflict: str = "refuse"
    # Per DAG, its schedule as Airflow states it: [timetable_summary, timezone] (backfill.schedule).
    schedules: dict[str, list[str | None]] = field(default_factory=dict)
    # Webhook of this backfill ({"url", "failed_windows"}, backfill.notify); None: BACKFILL_NOTIFY_URL.
    notify: dict[str, Any] | None = None
    # When its windows may start (backfill.gates, backfill.throttle.StartRate): times of day
    # when none starts ("HH:MM-HH:MM", in ``tz``), and at most this many starts an hour (0: any).
    quiet_hours: list[str] | None = None
    max_starts_per_hour: int = 0
    # A window whose run fails is re-run (its failed tasks cleared) up to ``retries`` times, after
    # ``retry_delay`` seconds, doubling each time (``retry_wait``); then ``on_failure`` applies.
    retries: int = 0
    retry_delay: float = 60.0
    # Ordering across DAGs: DAG -> the DAGs whose same window must have succeeded (or been
    # skipped) before its window starts (``backfill.order``). None: no order between DAGs.
    after: dict[str, list[str]] | None = None
    # Under the global cap, windows of a higher-priority backfill get freed slots first, within
    # a bounded head start (``backfill.throttle.PRIORITY_PLACES`` per level): none starves.
    priority: int = 0

    def retry_wait(self, attempt: int) -> float:
        """Seconds between the end of attempt ``attempt`` (1: the first run) and the next."""
        return float(min(self.retry_delay * 2 ** (attempt - 1), max(self.retry_delay, RETRY_DELAY_MAX)))

    @cached_property
    def spec(self) -> WindowSpec:
        return window_spec(self.start, self.end, self.batch, tz=self.tz)

    @cached_property
    def _offsets(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for dag, ranges in (self.only or {}).items():
            acc, offs = 0, []
            for a, b in ranges:
                offs.append(acc)
                acc += b - a
            offs.append(acc)
            out[dag] = offs
        return out

    def count(self, dag: str) -> int:
        """How many windows ``dag`` runs in this backfill."""
        return self.spec.count if self.only is None else self._offsets.get(dag, [0])[-1]

    @property
    def total(self) -> int:
        return sum(self.count(d) for d in self.dags)

    def index_at(self, seq: int, dag: str) -> int:
        """Chronological window index of the ``seq``-th window ``dag`` runs."""
        k = self.count(dag) - 1 - seq if self.reverse else seq
        if self.only is None:
            return k
        offs = self._offsets[dag]
        i = bisect_right(offs, k) - 1
        return self.only[dag][i][0] + k - offs[i]

    def seq_of(self, idx: int, dag: str) -> int:
        """Position in ``dag``'s run order of the window with chronological index ``idx``."""
        k = idx
        if self.only is not None:
            ranges = self.only[dag]
            i = bisect_right([a for a, _ in ranges], idx) - 1
            k = self._offsets[dag][i] + idx - ranges[i][0]
        return self.count(dag) - 1 - k if self.reverse else k

    def runs_window(self, dag: str, idx: int) -> bool:
        """Whether ``dag`` runs the window with chronological index ``idx`` in this backfill."""
        if self.only is None:
            return True
        return any(a <= idx < b for a, b in self.only.get(dag, []))

    def schedule_of(self, dag: str) -> Schedule:
        """``dag``'s schedule as Airflow stated it at submit (an unknown one if not recorded)."""
        summary, zone = (self.schedules.get(dag) or [None, None])[:2]
        return Schedule(summary, zone)

    def window_at(self, seq: int, dag: str) -> Window:
        return self.spec.window(self.index_at(seq, dag))

    def run_id(self, window: Window) -> str:
        return f"{self.backfill_id}__{window.key}"

    def indices(self, dag: str) -> list[int]:
        """``dag``'s chronological window indices in run order."""
        return [self.index_at(s, dag) for s in range(self.count(dag))]

    def outline(self) -> dict[str, Any]:
        """What the backfill covers and by which rules, as the submit's answer and the preview show it."""
        return {
            "windows": self.total,
            "batch": self.batch,
            "range": [self.start, self.end],
            "order": "newest first" if self.reverse else "oldest first",
            "on_failure": self.on_failure,
            "reprocess": self.reprocess,
            "on_conflict": self.on_conflict,
            "max_parallel_dags": self.max_parallel_dags,
            **({"quiet_hours": self.quiet_hours} if self.quiet_hours else {}),
            **({"max_starts_per_hour": self.max_starts_per_hour} if self.max_starts_per_hour else {}),
            **({"retries": self.retries, "retry_delay": self.retry_delay} if self.retries else {}),
            **({"after": self.after} if self.after else {}),
            **({"priority": self.priority} if self.priority else {}),
        }

    def to_json(self) -> str:
        fields = asdict(self)
        for name, default in LATER_FIELDS.items():  # read by workers of a version before them too
            if fields[name] == default:  # (a rolling upgrade), as long as they are not used
                del fields[name]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BackfillParams:
        return cls(**json.loads(text))
