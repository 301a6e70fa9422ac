"""`make demo` runs scripts/demo.py: run it for real, as a new user would, on its own stack."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_demo_backfills_three_dags_and_prints_the_order(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--start", "2024-01-01", "--end", "2024-01-14"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    order = re.findall(r"\d\d:\d\d:\d\d  (etl_\w+)\s+(\S+) \.\. (\S+)\s+(\w+)", out.stdout)
    for dag in ("etl_orders", "etl_users", "etl_payments"):
        mine = [(s, e, state) for d, s, e, state in order if d == dag]
        assert [s for s, _, state in mine if state == "success"] == ["2024-01-01", "2024-01-08"]
    assert re.search(r"backfill bf-\S+\s+SUCCEEDED", out.stdout)
    assert "stopping the stack" in out.stdout and "make demo ARGS=--keep" in out.stdout
    # The timeline: one lane per DAG with its two windows, and the page.
    # after={"etl_payments": ["etl_orders"]}: each payments window triggered after orders' succeeded.
    for start in ("2024-01-01", "2024-01-08"):
        done = order.index(next(o for o in order if o[0] == "etl_orders" and o[1] == start and o[3] == "success"))
        began = order.index(next(o for o in order if o[0] == "etl_payments" and o[1] == start and o[3] == "triggered"))
        assert done < began, (start, order)
    assert "waiting for etl_orders [2024-01-01" in out.stdout
    for dag, after in (("etl_orders", ""), ("etl_users", ""), ("etl_payments", r" \(after etl_orders\)")):
        assert re.search(rf"^  {dag}\s+\|[# ]+\| 2 success{after}$", out.stdout, flags=re.M), dag
    page = REPO / ".stack" / "demo" / "report.html"
    assert page.exists() and page.read_text().count('class="bar"') == 6
