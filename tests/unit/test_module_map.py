"""docs/architecture.md's module map is the code's: every module of ``backfill/`` and
``workers/`` is on exactly one line, each concept a newcomer looks for has one, and every
function the window's path names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "architecture.md").read_text()

CONCEPTS = {
    "windows", "request validation", "preview", "model", "record", "lease / lock", "throttle", "pacing",
    "runner", "lifecycle", "Airflow client", "CLI", "views",
}  # fmt: skip


def _section(title: str) -> str:
    return DOC.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in _section("Module map").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("concept", "---"):
            rows[cells[0]] = re.findall(r"`((?:backfill|workers)/[\w/.*]+|celeryconfig\.py)`", cells[1])
    return rows


def test_every_module_is_on_exactly_one_line_of_the_map() -> None:
    rows = _rows()
    named = [path for paths in rows.values() for path in paths]
    modules = sorted(
        str(p.relative_to(REPO)) for pkg in ("backfill", "workers") for p in (REPO / pkg).glob("*.py")
        if p.name != "__init__.py" or pkg == "backfill"
    )  # fmt: skip
    for module in modules:
        assert named.count(module) == 1, f"{module} is on {named.count(module)} lines of the module map"
    for path in named:
        assert list(REPO.glob(path)), f"the module map names {path}, which does not exist"


def test_each_concept_has_one_owner() -> None:
    rows = _rows()
    assert set(rows) >= CONCEPTS, CONCEPTS - set(rows)


def test_the_window_path_names_real_functions() -> None:
    path = _section("One window's path through the modules")
    names = set(re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", path))
    checked = 0
    for name in sorted(names):
        if name.endswith(".lua"):
            assert (REPO / "backfill" / "lua" / name).exists(), name
            continue
        module, *attrs = name.split(".")
        pkg = "workers" if (REPO / "workers" / f"{module}.py").exists() else "backfill"
        obj = importlib.import_module(f"{pkg}.{module}")
        for attr in attrs:
            assert hasattr(obj, attr), f"the window's path names {name}: {obj!r} has no {attr}"
            obj = getattr(obj, attr)
        checked += 1
    assert checked >= 15, checked
