"""The record of a backfill, kept in Redis: its plan, each window's state and an ordered event log.

Keys (``P`` is the settings' ``key_prefix``, ``ID`` the backfill id)::

    P:index               sorted set: backfill ids by creation time
    P:bf:ID               hash: the plan (params, JSON) and the backfill's state
    P:bf:ID:dag:DAG       hash: the DAG's state, its current window and counters per outcome
    P:bf:ID:win:DAG       hash: window index -> JSON {state, run_id, reason, ...}; absent = planned
    P:bf:ID:events        stream: every state change, in the order it happened

A window changes state through one Lua script (``backfill/lua/window_transition.lua``) that
updates the window, the DAG's counters and the event log at once, and refuses to leave a
terminal state: a redelivered task cannot count
a window twice. The same script says whether the change is new, and only then is a log line
written, so the worker log and the record tell the same story.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, cast

import redis

from backfill.clock import SYSTEM, Clock
from backfill.errors import BackfillNotFound
from backfill.lua import source
from backfill.pacing import FIELDS as PACE_FIELDS
from backfill.states import WINDOW_STATES, WindowState
from backfill.windows import Window, WindowSpec, window_spec

EVENT_FIELDS = frozenset({"run", "duration"})


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

    def window_at(self, seq: int, dag: str) -> Window:
        return self.spec.window(self.index_at(seq, dag))

    def run_id(self, window: Window) -> str:
        return f"{self.backfill_id}__{window.key}"

    def indices(self, dag: str) -> list[int]:
        """``dag``'s chronological window indices in run order."""
        return [self.index_at(s, dag) for s in range(self.count(dag))]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BackfillParams:
        return cls(**json.loads(text))


class Record:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl: int, clock: Clock = SYSTEM) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl
        self.clock = clock
        self._transition = client.register_script(source("window_transition"))
        self._finish_dag = client.register_script(source("dag_finish"))
        self._note = client.register_script(source("window_note"))
        self._create = client.register_script(source("backfill_create"))
        self._params: dict[str, BackfillParams] = {}

    # -- keys -----------------------------------------------------------------------------

    def k_meta(self, bf: str) -> str:
        return f"{self.prefix}:bf:{bf}"

    def k_dag(self, bf: str, dag: str) -> str:
        return f"{self.prefix}:bf:{bf}:dag:{dag}"

    def k_windows(self, bf: str, dag: str) -> str:
        return f"{self.prefix}:bf:{bf}:win:{dag}"

    def k_events(self, bf: str) -> str:
        return f"{self.prefix}:bf:{bf}:events"

    def keys_of(self, bf: str, dags: list[str]) -> list[str]:
        return [self.k_meta(bf), self.k_events(bf)] + [
            k for d in dags for k in (self.k_dag(bf, d), self.k_windows(bf, d))
        ]

    # -- creating and reading -------------------------------------------------------------

    def create(self, params: BackfillParams) -> bool:
        """Store a new backfill's plan, in one script. False if a backfill with that id exists."""
        bf, now = params.backfill_id, self.clock.now()
        event = {
            "ts": now,
            "kind": "backfill",
            "state": WindowState.PLANNED,
            "dags": params.dags,
            "windows": params.total,
        }
        keys = [self.k_meta(bf), f"{self.prefix}:index", self.k_events(bf), *(self.k_dag(bf, d) for d in params.dags)]
        args: list[Any] = [
            params.to_json(),
            now,
            self.ttl,
            json.dumps(event),
            len(params.dags),
            *(params.count(d) for d in params.dags),
        ]
        return bool(self._create(keys=keys, args=args))

    def params(self, bf: str) -> BackfillParams:
        cached = self._params.get(bf)
        if cached is None:
            raw = self.redis.hget(self.k_meta(bf), "params")
            if raw is None:
                raise BackfillNotFound(f"backfill {bf!r}: no such backfill in Redis (expired or never submitted)")
            cached = self._params[bf] = BackfillParams.from_json(raw)
        return cached

    def meta(self, bf: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.k_meta(bf))
        if not raw:
            raise BackfillNotFound(f"backfill {bf!r}: no such backfill in Redis (expired or never submitted)")
        return {text(k): text(v) for k, v in raw.items()}

    def dag(self, bf: str, dag: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.redis.hgetall(self.k_dag(bf, dag)).items()}

    def window(self, bf: str, dag: str, idx: int) -> dict[str, Any]:
        raw = self.redis.hget(self.k_windows(bf, dag), str(idx))
        return json.loads(raw) if raw else {"state": WindowState.PLANNED}

    def snapshot(
        self, bf: str, dag: str, idx: int, *, lock_key: str
    ) -> tuple[dict[str, Any], bool, list[Any], tuple[str, int]]:
        """What one poll needs, in one round trip: the window, the cancel flag, the DAG's learnt
        durations (``backfill.pacing.FIELDS``), and its lock's holder and milliseconds to live
        (on Redis's clock: its ``TIME`` is read in the same round trip)."""
        given = self.clock.script_now()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.k_windows(bf, dag), str(idx))
        pipe.hget(self.k_meta(bf), "cancelled")
        pipe.hmget(self.k_dag(bf, dag), list(PACE_FIELDS))
        pipe.hmget(lock_key, ["token", "until"])
        if not given:
            pipe.time()
        raw, cancelled, pace, (holder, until), *clock = pipe.execute()
        now = int(given) if given else int(clock[0][0]) * 1000 + int(clock[0][1]) // 1000
        rec = json.loads(raw) if raw else {"state": WindowState.PLANNED}
        ttl_ms = int(until) - now if holder and until else -2
        return rec, cancelled == b"1", pace, (text(holder or b"") if ttl_ms > 0 else "", ttl_ms)

    def windows(self, bf: str, dag: str) -> dict[int, dict[str, Any]]:
        found = cast(dict[bytes, bytes], self.redis.hgetall(self.k_windows(bf, dag)))
        return {int(k): json.loads(v) for k, v in found.items()}

    def events(self, bf: str, *, after: str = "-", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        start = after if after == "-" else f"({after}"
        found = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(self.k_events(bf), start, "+", count=count)
        )
        return [(text(i), json.loads(f[b"e"])) for i, f in found]

    def recent(self, limit: int = 20) -> list[str]:
        return [text(b) for b in cast(list[bytes], self.redis.zrevrange(f"{self.prefix}:index", 0, limit - 1))]

    def is_cancelled(self, bf: str) -> bool:
        return self.redis.hget(self.k_meta(bf), "cancelled") == b"1"

    def request_cancel(self, bf: str, *, fail_running: bool = False) -> bool:
        """Flag the backfill cancelled (every worker checks it before each step). True if new."""
        meta = self.k_meta(bf)
        if fail_running:
            self.redis.hset(meta, "fail_running", "1")
        new = bool(self.redis.hsetnx(meta, "cancelled", "1"))
        if new:
            now = self.clock.now()
            self.redis.hset(meta, "cancel_requested_at", now)
            self.redis.xadd(
                self.k_events(bf), {"e": json.dumps({"ts": now, "kind": "backfill", "state": "cancelling"})}
            )
        return new

    # -- changing -------------------------------------------------------------------------

    def transition(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        state: str,
        *,
        reason: str | None = None,
        force: bool = False,
        **extra: Any,
    ) -> bool:
        """Move a window to ``state``. True when that is a change worth an event (and a log line).

        Terminal states are final: once a window is success/failed/skipped/not_run/cancelled,
        later transitions are ignored. A window in flight goes back to waiting only if ``force``.
        """
        return self.transition_code(params, dag, idx, state, reason=reason, force=force, **extra) == 2

    def transition_code(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        state: str,
        *,
        reason: str | None = None,
        force: bool = False,
        **extra: Any,
    ) -> int:
        """``transition``, returning the script's answer: 0 nothing changed (final already, or in
        flight and not forced), 1 same state and reason, 2 a change."""
        assert state in WINDOW_STATES, state
        now = self.clock.now()
        window = params.spec.window(idx)
        # "" rather than null: Lua sees JSON null as a truthy userdata.
        data = {"state": state, "reason": reason or "", "at": now, **extra}
        event = {
            "ts": now,
            "kind": "window",
            "dag": dag,
            "idx": idx,
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "state": state,
            "reason": reason,
            # The window's hash keeps every fact; the event only what its readers show (status
            # --events, report, demo): a 73,000-window record stays under 100 MB (bench B3).
            **{k: v for k, v in extra.items() if k in EVENT_FIELDS},
        }
        bf = params.backfill_id
        keys = [self.k_windows(bf, dag), self.k_dag(bf, dag), self.k_events(bf)]
        result = self._transition(
            keys=keys, args=[str(idx), json.dumps(data), json.dumps(event), "force" if force else ""]
        )
        return int(result)

    def note(self, params: BackfillParams, dag: str, idx: int, **fields: Any) -> bool:
        """Remember facts about a window without changing its state (no event); a terminal
        window is left as it is. In one script: a cancel landing meanwhile is not undone."""
        return self._run_note(params, dag, idx, fields, "", None) == 1

    def claim(self, params: BackfillParams, dag: str, idx: int, field: str, expect: Any, **fields: Any) -> bool:
        """``note(**fields)`` only if the window's ``field`` is ``expect`` (None: absent). Of two
        deliveries racing to do the same thing (clear a run), one wins the claim."""
        return self._run_note(params, dag, idx, fields, field, expect) == 1

    def _run_note(
        self, params: BackfillParams, dag: str, idx: int, fields: dict[str, Any], field: str, expect: Any
    ) -> int:
        keys = [self.k_windows(params.backfill_id, dag)]
        return int(self._note(keys=keys, args=[str(idx), json.dumps(fields), field, json.dumps(expect)]))

    def set_dag(self, bf: str, dag: str, *, client: redis.client.Pipeline | None = None, **fields: Any) -> None:
        """Set fields of a DAG's record. ``client``: a pipeline to queue it on."""
        mapping = {k: v for k, v in fields.items() if v is not None}
        if mapping:  # Redis refuses an empty HSET
            (client or self.redis).hset(self.k_dag(bf, dag), mapping=cast(Any, mapping))

    def finish_dag(self, params: BackfillParams, dag: str, state: str, *, reason: str | None = None) -> int:
        """Close a DAG (succeeded, failed, stopped or cancelled). Returns DAGs left, -1 if already closed."""
        now = self.clock.now()
        event = {"ts": now, "kind": "dag", "dag": dag, "state": state, "reason": reason}
        bf = params.backfill_id
        keys = [self.k_dag(bf, dag), self.k_meta(bf), self.k_events(bf)]
        left = int(self._finish_dag(keys=keys, args=[state, now, json.dumps(event)]))
        if left == 0:
            for key in self.keys_of(bf, params.dags):
                self.redis.expire(key, self.ttl)
        return left

    def mark_not_run(self, params: BackfillParams, dag: str, from_seq: int, reason: str) -> int:
        """Record every window of ``dag`` from ``from_seq`` on as not run, with the reason."""
        count = 0
        for seq in range(from_seq, params.count(dag)):
            count += self.transition(params, dag, params.index_at(seq, dag), WindowState.NOT_RUN, reason=reason)
        return count


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients built with or without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value
