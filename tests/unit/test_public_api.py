"""The package's public API: every exported name resolves, importing the package loads nothing
else, and the package says it is typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import backfill

REPO = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves() -> None:
    for name in backfill.__all__:
        assert getattr(backfill, name) is not None, name
    assert backfill.window_spec("2024-01-01", "2024-01-03", "daily").count == 3


def test_importing_the_package_imports_none_of_its_modules() -> None:
    code = "import sys, backfill; print(sorted(m for m in sys.modules if m.startswith('backfill.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_the_packages_ship_a_py_typed_marker() -> None:
    assert (REPO / "backfill" / "py.typed").exists() and (REPO / "workers" / "py.typed").exists()
    assert '"backfill" = ["py.typed"]' in (REPO / "pyproject.toml").read_text()


def test_all_lists_exactly_the_exports() -> None:
    assert sorted(backfill.__all__) == sorted(backfill._EXPORTS)
