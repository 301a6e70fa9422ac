"""The states are defined once (backfill/states.py): the sets partition the window states, and
no module outside it spells a window state that only it should name."""

from __future__ import annotations

import re
from pathlib import Path

from backfill.states import (
    IN_FLIGHT,
    PENDING,
    TERMINAL,
    WINDOW_STATES,
    DagState,
    RunState,
    WindowState,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_sets_partition_the_window_states() -> None:
    assert set(WINDOW_STATES) == PENDING | IN_FLIGHT | TERMINAL
    assert not (PENDING & IN_FLIGHT) and not (PENDING & TERMINAL) and not (IN_FLIGHT & TERMINAL)
    assert WindowState.SUCCESS == "success" and f"{WindowState.NOT_RUN}" == "not_run"  # the stored text


def test_the_lua_scripts_use_only_known_states() -> None:
    known = {*WINDOW_STATES, *DagState, *RunState}
    seen: set[str] = set()
    for script in (REPO / "backfill" / "lua").glob("*.lua"):
        text = script.read_text()
        # prev['state'] == 'x', HGET(..., 'state') == 'x', and a state set in HSET: 'state', 'x'.
        compared = re.findall(r"state'[\])]*\s*[~=]=\s*'([a-z_]+)'", text)
        stored = re.findall(r"'state',\s*'([a-z_]+)'", text) + re.findall(r"\bstate = '([a-z_]+)'", text)
        for word in compared + stored:
            assert word in known, (script.name, word)
            seen.add(word)
    assert {"pending", "waiting", "succeeded", "cancelled"} <= seen  # the patterns still find them


def test_no_module_spells_a_window_state_of_its_own() -> None:
    # The states only windows have; "success"/"failed"/"running" are Airflow's too (display tables keep them).
    only_windows = re.compile(r"""["'](planned|waiting|triggered|not_run)["']""")
    allowed = {"states.py", "report.py", "status.py"}  # colour and label tables keyed by state
    found = [
        (path.name, m.group(0))
        for path in sorted((REPO / "backfill").glob("*.py"))
        if path.name not in allowed
        for m in only_windows.finditer(path.read_text())
    ]
    assert found == []
