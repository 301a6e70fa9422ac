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
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from backfill.clock import SYSTEM, Clock
from backfill.errors import BackfillNotFound
from backfill.lua import queue, source
from backfill.model import BackfillParams
from backfill.pacing import FIELDS as PACE_FIELDS
from backfill.pacing import Pace
from backfill.states import IN_FLIGHT, TERMINAL, WINDOW_STATES, DagState, WindowState
from backfill.windows import Window


@dataclass(slots=True, kw_only=True)
class WindowRecord:
    """One window's entry (``P:bf:ID:win:DAG``, field: its index), as every reader sees it.

    Written only through the Lua scripts (a transition sets ``state``, ``reason``, ``at`` and
    the facts given with it; a note sets facts alone); fields stored as null read as absent.
    An entry that does not exist is a planned window."""

    state: WindowState = WindowState.PLANNED
    reason: str | None = None
    at: float | None = None  # when the state was recorded (the worker's clock)
    run: str | None = None  # the Airflow run the window follows: triggered by it, or re-run
    run_id: str | None = None  # a run claimed for a re-run, set before the clear is sent
    prev_end: str | None = None  # that run's end before the clear: tells a cleared run from one not yet
    clear_at: float | None = None  # when the clear was claimed
    triggered_at: float | None = None
    skew: float = 0.0  # our clock minus Airflow's, measured at the trigger
    started: str | None = None  # the run's start and end, as Airflow recorded them (ISO)
    ended: str | None = None
    duration: float | None = None  # seconds, start to end in Airflow
    api_calls: int | None = None  # Airflow requests the window made, recorded at its end
    steps: int | None = None  # task executions the window took, recorded at its end (bench B4)
    unavailable_since: float | None = None  # Airflow unreachable since (an outage in progress)
    outage_attempts: int = 0
    stalled_since: float | None = None  # its run cannot end by itself since (a paused DAG)
    conflicts_unexplained: int = 0  # 409s with no run at the window's date so far
    attempt: int = 1  # which attempt the window's run is on (retries: 2 after the first re-run)
    retry_at: float | None = None  # its run failed: re-run it from then (the worker's clock)

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> WindowRecord:
        if not raw:
            return cls()
        data = {k: v for k, v in json.loads(raw).items() if k in _WINDOW_FIELDS and v is not None}
        data["state"] = WindowState(data.get("state", WindowState.PLANNED))
        rec = cls(**data)
        rec.reason = rec.reason or None  # "" in records written before 2026-11-30
        return rec

    @property
    def in_flight(self) -> bool:
        """Whether the window follows a run of its own in Airflow (triggered, or re-run)."""
        return self.state in IN_FLIGHT and bool(self.run)


_WINDOW_FIELDS = frozenset(WindowRecord.__dataclass_fields__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DagRecord:
    """A DAG's part of a backfill (``P:bf:ID:dag:DAG``): its state, the window that changed
    last, a counter per outcome and the durations learnt from its runs (``backfill.pacing``)."""

    state: str = DagState.PENDING
    total: int = 0  # windows this DAG runs in the backfill
    current: int | None = None  # index of the window whose state changed last
    current_state: str | None = None
    reason: str | None = None  # that change's reason (a waiting window's: why it waits)
    started_at: float | None = None
    finished_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)  # per terminal window state, every one present
    pace: Pace = field(default_factory=Pace)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> DagRecord:
        def num(name: str) -> float | None:
            value = raw.get(name)
            return float(value) if value not in (None, "") else None

        current = raw.get("current")
        return cls(
            state=raw.get("state", DagState.PENDING),
            total=int(raw.get("total") or 0),
            current=int(current) if current not in (None, "") else None,
            current_state=raw.get("current_state") or None,
            reason=raw.get("reason") or None,
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            counts={s: int(raw.get(s) or 0) for s in sorted(TERMINAL)},
            pace=Pace.from_record([raw.get(f) for f in PACE_FIELDS]),
        )

    @property
    def done(self) -> int:
        return sum(self.counts.values())


class Record:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl: int, clock: Clock = SYSTEM) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl = ttl
        self.clock = clock
        self._lua_transition = client.register_script(source("window_transition"))
        self._lua_finish_dag = client.register_script(source("dag_finish"))
        self._lua_note = client.register_script(source("window_note"))
        self._lua_create = client.register_script(source("backfill_create"))
        self._lua_snapshot = client.register_script(source("window_snapshot"))
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
        return bool(self._lua_create(keys=keys, args=args))

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

    def dag(self, bf: str, dag: str) -> DagRecord:
        return DagRecord.from_hash({text(k): text(v) for k, v in self.redis.hgetall(self.k_dag(bf, dag)).items()})

    def window(self, bf: str, dag: str, idx: int) -> WindowRecord:
        return WindowRecord.from_json(cast(bytes | None, self.redis.hget(self.k_windows(bf, dag), str(idx))))

    def snapshot(
        self, bf: str, dag: str, idx: int, *, lock_key: str, also: tuple[str, str] | None = None
    ) -> tuple[WindowRecord, bool, Pace, tuple[str, int], bytes | None]:
        """What one poll needs, in one command (``window_snapshot.lua``): the window, the cancel
        flag, the DAG's learnt durations (``backfill.pacing.FIELDS``), its lock's holder and
        milliseconds to live (on Redis's clock, read by the script), and ``also``'s field of a
        hash, taken (the run the watcher woke the window for, ``backfill.watch.Parking.k_ended``)."""
        keys = [self.k_windows(bf, dag), self.k_meta(bf), self.k_dag(bf, dag), lock_key, also[0] if also else lock_key]
        args = [str(idx), self.clock.script_now(), also[1] if also else "", *PACE_FIELDS]
        raw, cancelled, pace, holder, ttl_ms, woken = self._lua_snapshot(keys=keys, args=args)
        lock = (text(holder) if holder and ttl_ms > 0 else "", int(ttl_ms))
        return WindowRecord.from_json(raw), cancelled == b"1", Pace.from_record(pace), lock, woken or None

    def windows(self, bf: str, dag: str) -> dict[int, WindowRecord]:
        """The windows that left ``planned``, by index (a window absent here is planned)."""
        found = cast(dict[bytes, bytes], self.redis.hgetall(self.k_windows(bf, dag)))
        return {int(k): WindowRecord.from_json(v) for k, v in found.items()}

    def events(self, bf: str, *, after: str = "-", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        start = after if after == "-" else f"({after}"
        found = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(self.k_events(bf), start, "+", count=count)
        )
        windows: dict[int, Window] = {}
        out = []
        for i, f in found:
            if b"e" in f:  # the backfill's and the DAGs' events (and windows' before 2026-11-30), JSON
                out.append((text(i), json.loads(f[b"e"])))
                continue
            params = self.params(bf)  # a window's, as transition_code stores it
            idx = int(f[b"i"])
            window = windows.get(idx) or windows.setdefault(idx, params.spec.window(idx))
            event: dict[str, Any] = {
                "ts": float(f[b"t"]), "kind": "window", "dag": params.dags[int(f[b"d"])], "idx": idx,
                "start": window.start.isoformat(), "end": window.end.isoformat(), "state": text(f[b"s"]),
                "reason": text(f[b"r"]) if b"r" in f else None,
            }  # fmt: skip
            if b"o" in f or b"run" in f:
                event["run"] = params.run_id(window) if b"o" in f else text(f[b"run"])
            if b"dur" in f:
                event["duration"] = float(f[b"dur"])
            out.append((text(i), event))
        return out

    def forget(self, *, keep: set[str]) -> None:
        """Drop the cached parameters of every backfill but ``keep`` (a long-lived reader's memory)."""
        self._params = {bf: p for bf, p in self._params.items() if bf in keep}

    def recent(self, limit: int = 20) -> list[str]:
        return [text(b) for b in cast(list[bytes], self.redis.zrevrange(f"{self.prefix}:index", 0, limit - 1))]

    def is_cancelled(self, bf: str) -> bool:
        return self.redis.hget(self.k_meta(bf), "cancelled") == b"1"

    def is_cancelled_on(self, pipe: redis.client.Pipeline, bf: str) -> None:
        """``is_cancelled`` queued on a pipeline: its answer is ``b"1"`` if cancelled."""
        pipe.hget(self.k_meta(bf), "cancelled")

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

    def transition(self, params: BackfillParams, dag: str, idx: int, state: str, **kw: Any) -> bool:
        """Move a window to ``state`` (``transition_code``'s keywords: ``reason``, ``force``, the
        facts to record). True when that is a change worth an event (and a log line).

        Terminal states are final: once a window is success/failed/skipped/not_run/cancelled,
        later transitions are ignored. A window in flight goes back to waiting only if ``force``.
        """
        return self.transition_code(params, dag, idx, state, **kw) == 2

    def transition_code(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        state: str,
        *,
        reason: str | None = None,
        force: bool = False,
        erase: tuple[str, ...] = (),
        expect: tuple[str, Any] | None = None,
        **extra: Any,
    ) -> int:
        """``transition``, returning the script's answer: 0 nothing changed (final already, in
        flight and not forced, or ``expect``'s field not holding its value: None, absent), 1
        same state and reason, 2 a change. ``erase``: facts forgotten with the change."""
        keys, args = self._transition_call(params, dag, idx, state, reason, force, erase, expect, extra)
        return self.transitioned(params, dag, idx, state, self._lua_transition(keys=keys, args=args))

    def queue_transition(
        self, pipe: redis.client.Pipeline, params: BackfillParams, dag: str, idx: int, state: str, *,
        reason: str | None = None, force: bool = False, erase: tuple[str, ...] = (),
        expect: tuple[str, Any] | None = None, **extra: Any,
    ) -> None:  # fmt: skip
        """``transition_code`` queued on a pipeline, with what must follow it in the same round
        trip; its answer, the pipeline's, goes through ``transitioned``."""
        keys, args = self._transition_call(params, dag, idx, state, reason, force, erase, expect, extra)
        queue(self._lua_transition, pipe, keys, args)

    def transitioned(self, params: BackfillParams, dag: str, idx: int, state: str, result: Any) -> int:
        """The transition script's answer as ``transition_code`` returns it."""
        return int(result)

    def _transition_call(
        self, params: BackfillParams, dag: str, idx: int, state: str, reason: str | None, force: bool,
        erase: tuple[str, ...], expect: tuple[str, Any] | None, extra: dict[str, Any],
    ) -> tuple[list[str], list[str]]:  # fmt: skip
        assert state in WINDOW_STATES, state
        now = round(self.clock.now(), 3)
        # "" rather than null: Lua sees JSON null as a truthy userdata.
        data = {"state": state, "reason": reason or "", "at": now, **extra}
        # The window's hash keeps every fact; the event only what its readers show (status
        # --events, the demo), and nothing that the window's index gives back (its bounds, its
        # own run id): ``events`` puts them back. Stored as the stream entry's own fields, in
        # the same order each time, so Redis keeps their names once per block of entries with
        # the same fields: a 73,000-window record stays small (bench B3). Strings: Lua would
        # round numbers; "t" first: the script reads it as the DAG's start.
        event = ["t", f"{now:.3f}", "d", str(params.dags.index(dag)), "i", str(idx), "s", state]
        if reason:
            event += ["r", reason]
        run, duration = extra.get("run"), extra.get("duration")
        if run:
            event += ["o", "1"] if run == params.run_id(params.spec.window(idx)) else ["run", str(run)]
        if duration is not None:
            event += ["dur", repr(float(duration))]
        bf = params.backfill_id
        keys = [self.k_windows(bf, dag), self.k_dag(bf, dag), self.k_events(bf)]
        args = [str(idx), json.dumps(data), json.dumps(event), "force" if force else ""]
        if erase or expect:
            field, value = expect or ("", None)
            args += [json.dumps(list(erase)) if erase else "", field, json.dumps(value)]
        return keys, args

    def note(self, params: BackfillParams, dag: str, idx: int, **fields: Any) -> bool:
        """Remember facts about a window without changing its state (no event); a terminal
        window is left as it is. In one script: a cancel landing meanwhile is not undone."""
        return self._run_note(params, dag, idx, fields, "", None) == 1

    def claim(self, params: BackfillParams, dag: str, idx: int, field: str, expect: Any, **fields: Any) -> bool:
        """``note(**fields)`` only if the window's ``field`` is ``expect`` (None: absent). Of two
        deliveries racing to do the same thing (clear a run), one wins the claim."""
        return self._run_note(params, dag, idx, fields, field, expect) == 1

    def claim_all(self, params: BackfillParams, dag: str, idx: int, expect: dict[str, Any], **fields: Any) -> bool:
        """``claim`` on several fields at once: each of ``expect``'s fields must hold its value."""
        return self._run_note(params, dag, idx, fields, "*", expect) == 1

    def _run_note(
        self, params: BackfillParams, dag: str, idx: int, fields: dict[str, Any], field: str, expect: Any
    ) -> int:
        keys = [self.k_windows(params.backfill_id, dag)]
        return int(self._lua_note(keys=keys, args=[str(idx), json.dumps(fields), field, json.dumps(expect)]))

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
        left = int(self._lua_finish_dag(keys=keys, args=[state, now, json.dumps(event)]))
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
