"""The fault-injection harness (faults/): every regression case, and a short random run.

Each case is a schedule with the fault that exposed one hole; it must show no violation with
the current code, and the violation it names with the hole patched back in (so it would fail
if the fix were undone). The long run (10,000 schedules) is ``make faults``: docs/reliability.md.
"""

from __future__ import annotations

import multiprocessing

import pytest

from faults.__main__ import one
from faults.cases import Case, cases, run_case
from faults.run import Sim, generate

SHORT_RUN = 300  # random schedules in make test (the long run: 10,000)


@pytest.fixture
def harness_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own: each schedule empties it


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_regression_case(case: Case, harness_url: str) -> None:
    fixed, _ = run_case(case, harness_url, hole=False)
    assert fixed == [], f"{case.name} ({case.why}) is back:\n" + "\n".join(fixed)
    holed, sim = run_case(case, harness_url, hole=True)
    assert any(v.startswith(case.expect) for v in holed), (
        f"{case.name}: with the hole patched back in, no violation {case.expect} showed: the case no longer "
        f"exercises it (injected: {sim.world.injected})"
    )


def test_a_short_random_run_finds_no_violation(harness_url: str) -> None:
    # As ``python -m faults`` runs them (its ``one``: two processes, each emptying a database of its
    # own): the schedules are CPU-bound, and a few take minutes alone (docs/reliability.md, seed 219).
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.imap_unordered(one, ((seed, harness_url) for seed in range(1, SHORT_RUN + 1)))
        failed = {seed: problems[:3] for seed, problems, _, _ in results if problems}
    assert not failed, "replay with python -m faults --seed N --verbose:\n" + "\n".join(
        f"seed {s}: {p}" for s, p in failed.items()
    )


def test_a_schedule_replays_exactly(harness_url: str) -> None:
    """A failing seed printed by the long run must replay the same schedule, faults and all."""
    runs = []
    for _ in range(2):
        sim = Sim(generate(4242), harness_url)
        sim.run()
        runs.append((sim.world.injected, sim.airflow.actions, sim.world.points))
    assert runs[0] == runs[1]


def test_the_docs_list_every_case_and_the_long_runs_figure() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    for case in cases():
        assert f"| `{case.name}` | {case.why} | {case.expect} |" in text, f"docs/reliability.md: case {case.name}"
    assert "python -m faults --schedules 10000" in text and "violations: 0" in text


def test_the_cli_runs_schedules_and_replays_a_seed(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from faults.__main__ import main

    assert main(["--schedules", "6", "--first", "11", "--jobs", "1", "--redis", redis_url]) == 0
    out = capsys.readouterr().out
    assert "6 schedules (seeds 11..16)" in out and ": 0 with violations" in out
    assert main(["--seed", "11", "--redis", redis_url]) == 0
