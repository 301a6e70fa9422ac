"""Time, as the orchestrator reads it: injectable, so the fault-injection harness can run a
backfill's hours in milliseconds and put a worker's clock ahead of the others.

Two readings, kept apart on purpose:

- ``now()``: this process's wall clock, for what is written down (event times, a window's
  trigger time) and for durations within one process;
- ``script_now()``: "now" for the Redis scripts that decide expiries (locks, throttle slots).
  The workers pass ``""``: the scripts then read Redis's own clock (``TIME``), so a worker
  whose clock is ahead or behind cannot expire another's lock or slot early.
"""

from __future__ import annotations

import time

import redis


class Clock:
    """The real clocks: this process's for records, Redis's for expiries."""

    def now(self) -> float:
        return time.time()

    def script_now(self) -> str:
        return ""  # the scripts read Redis's TIME

    def redis_ms(self, client: redis.Redis) -> int:
        """Redis's "now" in milliseconds (one round trip), to read an expiry stored by a script."""
        seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000


SYSTEM = Clock()
