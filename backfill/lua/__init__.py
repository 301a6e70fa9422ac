"""The Redis scripts of the orchestrator, one ``.lua`` file per operation.

Every script that compares times takes "now" (milliseconds) as an argument; an empty one means
Redis's own clock (``TIME``), which is what the workers pass (``backfill.clock``): expiries are
then judged by one clock, whatever the workers' clocks say. The fault-injection harness passes
its simulated time instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any, cast

from redis.client import Pipeline
from redis.commands.core import Script

from backfill.states import TERMINAL

# Prepended to every script: now_ms(arg) is ``arg`` as a number, or Redis's clock; ``terminal``
# the window states that end a window (backfill.states.TERMINAL, defined there only);
# window_gone() what lets a window hold nothing more (a cancel, or its end).
_PRELUDE = (
    "\nlocal terminal = {"
    + ", ".join(f"{state}=1" for state in sorted(TERMINAL))
    + "}\n"
    + """
-- Whether a window may no longer hold anything: "cancelled" (its backfill is), "ended" (it
-- is: a duplicate delivery may have ended it), or false.
local function window_gone(backfill_key, windows_key, index)
  if redis.call('HGET', backfill_key, 'cancelled') == '1' then return 'cancelled' end
  local raw = redis.call('HGET', windows_key, index)
  if raw and terminal[cjson.decode(raw)['state']] then return 'ended' end
  return false
end

local function now_ms(arg)
  local n = tonumber(arg)
  if n then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
)


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua``, with the shared prelude."""
    return _PRELUDE + files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def queue(script: Script, pipe: Pipeline, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue ``script`` on a pipeline, sent with its text (``EVAL``): a pipeline holding a
    registered script (``EVALSHA``) first asks ``SCRIPT EXISTS``, a round trip more on every
    execute, and one that skipped that check would fail half-applied after a Redis restart."""
    pipe.eval(cast(str, script.script), len(keys), *keys, *args)
