"""Ordering across DAGs: ``after={"marts": ["staging"]}`` makes each window of ``marts`` wait
until the same window of ``staging`` has succeeded (or was skipped: its DAG already had the run).

Every DAG of a backfill has the same windows, so "the same window" is the same window index.
The wait is a look at the upstream windows' records in Redis (no Airflow request, no lock, no
slot held), repeated while they are pending or in flight. An upstream window that ended
otherwise (failed, not run, cancelled) means the dependent window is not run: with
``on_failure="stop"`` its DAG stops there, with ``"continue"`` its DAG goes on with its next
window. A window of an upstream DAG that this backfill does not run (a resume runs only the
windows that did not succeed) counts as done.

``check_after`` refuses, before anything is triggered, an order naming a DAG outside the
backfill, a DAG after itself, or a cycle (named, in order).
"""

from __future__ import annotations

import json
from typing import Any

from backfill.errors import InputError
from backfill.states import DONE, PENDING, WindowState


def check_after(after: Any, dags: list[str]) -> dict[str, list[str]] | None:
    """A validated order: ``{dag: [upstream, ...]}`` over ``dags`` without cycles (None: none)."""
    if after in (None, {}, ""):
        return None
    if isinstance(after, str):
        try:
            after = json.loads(after)
        except ValueError:
            raise InputError(f"after: not valid JSON: {after[:80]!r}") from None
    if not isinstance(after, dict):
        raise InputError(f'after: expected a dict of DAG -> list of upstream DAGs (like {{"marts": ["staging"]}}), '
                         f"got {type(after).__name__}")  # fmt: skip
    out: dict[str, list[str]] = {}
    for dag, ups in after.items():
        if isinstance(ups, str):
            ups = [ups]
        if not isinstance(ups, (list, tuple)) or not all(isinstance(u, str) for u in ups):
            raise InputError(f"after: {dag!r} must map to a list of DAG ids, got {ups!r}")
        for name in (dag, *ups):
            if name not in dags:
                raise InputError(f"after: {name!r} is not one of this backfill's DAGs ({', '.join(dags)})")
        if dag in ups:
            raise InputError(f"after: {dag!r} cannot wait for itself")
        if ups:
            out[dag] = list(dict.fromkeys(ups))
    cycle = find_cycle(out)
    if cycle:
        raise InputError(f"after: the order has a cycle: {' -> '.join(cycle)} (each waits for the next)")
    return out or None


def find_cycle(after: dict[str, list[str]]) -> list[str] | None:
    """A cycle of "waits for" edges, as the DAGs along it (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for up in after.get(node, []):
            if state.get(up) == 1:
                return [*path[path.index(up) :], up]
            if up not in state:
                found = visit(up)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(after):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def levels(dags: list[str], after: dict[str, list[str]] | None) -> dict[str, int]:
    """Each DAG's depth in the order (0: waits for nobody), for the plan and the timeline."""
    depth: dict[str, int] = {}

    def of(dag: str) -> int:
        if dag not in depth:
            depth[dag] = 1 + max((of(u) for u in (after or {}).get(dag, [])), default=-1)
        return depth[dag]

    return {d: of(d) for d in dags}


def blocked(upstream: dict[str, WindowState | None]) -> tuple[str, str] | None:
    """What the upstream windows' states (None: not run by this backfill) say: None when all
    are done; ("wait", dag) for the first still pending or in flight; ("ended", dag) for the
    first that ended otherwise (failed, not run, cancelled)."""
    waiting: str | None = None
    for dag, state in upstream.items():
        if state is None or state in DONE:
            continue
        if state in PENDING or state in (WindowState.TRIGGERED, WindowState.RUNNING):
            waiting = waiting or dag
            continue
        return "ended", dag
    return ("wait", waiting) if waiting else None
