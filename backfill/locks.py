"""Per-DAG locks in Redis: at most one orchestrator window in flight per DAG, across backfills,
workers and machines.

A lock is a hash: its holder's ``token``, ``until`` (milliseconds, on Redis's clock) and, while a
trigger may be on its way, ``armed``. The holder renews it as it goes; a holder that dies stops
renewing and the lock expires ``ttl`` after the last renewal. Every operation compares the token
and the time inside Redis (``backfill/lua/lock_*.lua``), so nobody renews or releases a lock that
expired and was taken by someone else, and one clock (Redis's) judges every expiry.

The token is the window's run id (``<backfill id>__<window start>``): deterministic, so a
redelivered task recognises the lock it held before its worker died, and readable, so a
waiting window can say who holds the DAG.

Before a trigger, ``arm`` checks in one script that the backfill is not cancelled and that the
lock and the window's throttle slots are still held, and renews them all for a full ``ttl``:
the settings keep ``ttl`` above the longest a trigger can take, so no one else can take the DAG
between the check and the trigger.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import redis

from backfill.clock import SYSTEM, Clock
from backfill.lua import queue, source


class WindowKeys(NamedTuple):
    """Where a window's state lives (the scripts check it has not ended, nor been cancelled)."""

    meta: str  # the backfill's hash (its cancel flag)
    windows: str  # the DAG's windows hash
    field: int  # the window's field in it


class DagLocks:
    def __init__(
        self, client: redis.Redis, *, prefix: str, ttl: float, slot_ttl: float | None = None, stale: float = 12.0,
        clock: Clock = SYSTEM,
    ) -> None:  # fmt: skip
        self._redis = client
        self._prefix = prefix
        self._stale_ms = int(stale * 1000)  # a waiter not seen this long leaves the DAG's line
        self._ttl_ms = int(ttl * 1000)
        self._slot_ttl_ms = int((slot_ttl or ttl) * 1000)  # the throttle's: see Settings.slot_ttl
        self.clock = clock
        self._lua_acquire = client.register_script(source("lock_acquire"))
        self._lua_take = client.register_script(source("lock_take"))
        self._lua_hold = client.register_script(source("lock_hold"))
        self._lua_arm = client.register_script(source("lock_arm"))
        self._lua_release = client.register_script(source("lock_release"))
        self._lua_release_idle = client.register_script(source("lock_release_idle"))
        self._lua_disarm = client.register_script(source("lock_disarm"))

    def key(self, dag_id: str) -> str:
        return f"{self._prefix}:lock:{dag_id}"

    def acquire(self, dag_id: str, token: str) -> str | None:
        """Take or renew the DAG's lock. Returns None when ``token`` holds it, else the holder."""
        return _text(self._lua_acquire(keys=[self.key(dag_id)], args=[token, self._ttl_ms, self.clock.script_now()]))

    def line_keys(self, dag_id: str) -> list[str]:
        """The DAG's line of windows that want its lock: tickets, last asks, the ticket counter."""
        base = f"{self._prefix}:lockline:{dag_id}"
        return [base, f"{base}:seen", f"{base}:n"]

    def take(self, dag_id: str, token: str, *, head_start: int = 0) -> tuple[str, bool] | None:
        """``acquire``, first come among the windows that want the DAG (``lock_take.lua``): None
        when ``token`` holds it; else who has it (True) or is first in line for it (False)."""
        args: list[Any] = [token, self._ttl_ms, self.clock.script_now(), self._stale_ms, head_start]
        found = self._lua_take(keys=[self.key(dag_id), *self.line_keys(dag_id)], args=args)
        if not found:
            return None
        return _text(found[0]) or "", _text(found[1]) == "held"

    def queue(self, dag_id: str) -> tuple[str | None, list[str]]:
        """Who holds the DAG's lock (None: nobody) and the windows in line for it, in the order
        they will get it (those still asking)."""
        now = self.clock.redis_ms(self._redis)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self.key(dag_id), ["token", "until"])
        line, seen, _ = self.line_keys(dag_id)
        pipe.zrange(line, 0, -1)
        pipe.zrangebyscore(seen, now - self._stale_ms, "+inf")
        (holder, until), waiting, live = pipe.execute()
        alive = {_text(m) for m in live}
        held = _text(holder) if holder and until and int(until) > now else None
        return held, [t for t in (_text(m) or "" for m in waiting) if t in alive]

    def leave_line_on(self, pipe: redis.client.Pipeline, dag_id: str, token: str) -> None:
        line, seen, _ = self.line_keys(dag_id)
        pipe.zrem(line, token)
        pipe.zrem(seen, token)

    def hold(self, dag_id: str, token: str, *, window: WindowKeys, member: str, slot_keys: list[str]) -> str | None:
        """Renew the lock and the slots of a window whose run is in flight (``lock_hold.lua``).
        Returns "ended" (the window ended or its backfill was cancelled: nothing kept), or
        another live holder of the lock, if the lock expired and was taken meanwhile."""
        keys, args = self._window_call(dag_id, token, window=window, member=member, slot_keys=slot_keys)
        return _text(self._lua_hold(keys=keys, args=args))

    def hold_spec(self, dag_id: str, token: str, *, window: WindowKeys, member: str, slot_keys: list[str]) -> str:
        """``hold``'s keys and arguments, but "now", as JSON: what a parked window leaves for the
        watcher to renew while it sleeps (``Parking.hold_all``)."""
        keys = [self.key(dag_id), window.meta, window.windows, *slot_keys]
        return json.dumps([keys, [token, self._ttl_ms, member, self._slot_ttl_ms, window.field]])

    def arm(self, dag_id: str, token: str, *, window: WindowKeys, member: str, slot_keys: list[str]) -> str:
        """The check just before a trigger (``lock_arm.lua``): "ok", "cancelled", "ended", "lost"
        or "slot"."""
        keys, args = self._window_call(dag_id, token, window=window, member=member, slot_keys=slot_keys)
        return self.armed(self._lua_arm(keys=keys, args=args))

    def arm_on(
        self, pipe: redis.client.Pipeline, dag_id: str, token: str, *, window: WindowKeys, member: str,
        slot_keys: list[str],
    ) -> None:  # fmt: skip
        """``arm``, queued on a pipeline after the slot's grant (its answer: ``armed``)."""
        queue(self._lua_arm, pipe, *self._window_call(dag_id, token, window=window, member=member,
                                                      slot_keys=slot_keys))  # fmt: skip

    def _window_call(
        self, dag_id: str, token: str, *, window: WindowKeys, member: str, slot_keys: list[str]
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``lock_hold.lua`` and ``lock_arm.lua``."""
        keys = [self.key(dag_id), window.meta, window.windows, *slot_keys]
        return keys, [token, self._ttl_ms, self.clock.script_now(), member, self._slot_ttl_ms, window.field]

    @staticmethod
    def armed(reply: Any) -> str:
        return str(_text(reply))

    def disarm(self, dag_id: str, token: str) -> None:
        """The armed trigger is recorded: a cancel may free the lock again."""
        self._lua_disarm(keys=[self.key(dag_id)], args=[token])

    def disarm_on(self, pipe: redis.client.Pipeline, dag_id: str, token: str) -> None:
        """``disarm``, queued on a pipeline after the transition that records the trigger."""
        queue(self._lua_disarm, pipe, [self.key(dag_id)], [token])

    def release(self, dag_id: str, token: str) -> bool:
        """Drop the lock if ``token`` still holds it."""
        return bool(self._lua_release(keys=[self.key(dag_id)], args=[token]))

    def release_on(self, pipe: redis.client.Pipeline, dag_id: str, token: str) -> None:
        """``release``, queued on a pipeline (one round trip with the slots' release)."""
        queue(self._lua_release, pipe, [self.key(dag_id)], [token])

    def release_idle(self, dag_id: str, prefix: str) -> int:
        """Drop the lock if a token starting with ``prefix`` holds it and has no trigger armed and
        unrecorded: 1 dropped, 0 not held by such a token, -1 left (armed; its holder releases it)."""
        return int(self._lua_release_idle(keys=[self.key(dag_id)], args=[prefix, self.clock.script_now()]))

    def holder(self, dag_id: str) -> str | None:
        """The live holder's token, if any."""
        token, until = self._redis.hmget(self.key(dag_id), ["token", "until"])
        if token is None or until is None:
            return None
        return _text(token) if int(until) > self.now_ms() else None

    def now_ms(self) -> int:
        """ "Now" as the scripts see it (Redis's clock, or the harness's)."""
        given = self.clock.script_now()
        return int(given) if given else self.clock.redis_ms(self._redis)

    @property
    def ttl(self) -> float:
        return self._ttl_ms / 1000


def _text(value: object) -> str | None:
    if value is None or value is False:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
