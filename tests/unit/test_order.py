"""Ordering across DAGs: the order's validation at submit (unknown DAGs, cycles) and what the
upstream windows' states mean for a dependent window. The runner's waits under crashes are
the fault harness's invariant 13; the real Airflow's side is tests/integration/test_order.py."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from backfill.errors import InputError
from backfill.order import blocked, check_after, find_cycle, levels
from backfill.states import WindowState as S

DAGS = ["raw", "staging", "marts", "exports"]


def test_a_valid_order_is_kept_and_an_empty_one_is_none() -> None:
    after = {"marts": ["staging"], "exports": ["marts", "staging", "marts"], "staging": "raw"}
    assert check_after(after, DAGS) == {"marts": ["staging"], "exports": ["marts", "staging"], "staging": ["raw"]}
    assert check_after('{"marts": ["staging"]}', DAGS) == {"marts": ["staging"]}
    assert check_after(None, DAGS) is None and check_after({}, DAGS) is None
    assert check_after({"marts": []}, DAGS) is None


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ({"marts": ["staging"], "staging": ["exports"], "exports": ["marts"]},
         "after: the order has a cycle: exports -> marts -> staging -> exports (each waits for the next)"),
        ({"marts": ["marts"]}, "after: 'marts' cannot wait for itself"),
        ({"marts": ["nope"]}, "after: 'nope' is not one of this backfill's DAGs (raw, staging, marts, exports)"),
        ({"nope": ["raw"]}, "after: 'nope' is not one of this backfill's DAGs"),
        (["marts", "staging"], "after: expected a dict of DAG -> list of upstream DAGs"),
        ({"marts": [1]}, "after: 'marts' must map to a list of DAG ids, got [1]"),
        ("{nope", "after: not valid JSON"),
    ],
)  # fmt: skip
def test_a_bad_order_is_refused_naming_it(after: object, message: str) -> None:
    with pytest.raises(InputError) as err:
        check_after(after, DAGS)
    assert str(err.value).startswith(message), str(err.value)


def test_cycles_and_levels() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"]}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert levels(DAGS, {"staging": ["raw"], "marts": ["staging"], "exports": ["raw"]}) == {
        "raw": 0, "staging": 1, "marts": 2, "exports": 1,
    }  # fmt: skip


def test_what_upstream_windows_mean_for_the_dependent_window() -> None:
    assert blocked({"a": S.SUCCESS, "b": S.SKIPPED, "c": None}) is None  # None: not run by this backfill
    assert blocked({"a": S.SUCCESS, "b": S.RUNNING}) == ("wait", "b")
    assert blocked({"a": S.PLANNED, "b": S.WAITING}) == ("wait", "a")
    assert blocked({"a": S.RUNNING, "b": S.FAILED}) == ("ended", "b")  # an end wins over a wait
    for ended in (S.FAILED, S.NOT_RUN, S.CANCELLED):
        assert blocked({"a": ended}) == ("ended", "a")


def test_the_cli_reads_repeated_after_options_and_refuses_a_malformed_one() -> None:
    from backfill.cli import _after

    assert _after(("marts=staging,raw", "exports=marts")) == {"marts": ["staging", "raw"], "exports": ["marts"]}
    assert _after(()) is None
    result = CliRunner().invoke(cli, ["plan", "a", "b", "--start", "2024-01-01", "--end", "2024-01-02",
                                      "--after", "b"])  # fmt: skip
    assert result.exit_code == 2 and "--after: expected DAG=UPSTREAM[,UPSTREAM...], got 'b'" in result.output


def test_the_plan_estimate_follows_the_critical_path_through_the_order() -> None:
    from backfill.preview import _overall

    def dag(name: str, each: float, after: list[str] | None = None) -> dict:
        windows = [[f"2024-01-0{i}", f"2024-01-0{i + 1}"] for i in (1, 2, 3)]
        return {"dag_id": name, "windows": windows, "median_run_seconds": each, "estimated_seconds": 3 * each,
                "after": after or []}  # fmt: skip

    dags = [dag("staging", 10), dag("marts", 20, ["staging"])]
    assert _overall(dags, 0, 0) == 60  # side by side: the longest DAG
    # marts' window k waits for staging's window k: 10 + 3 x 20.
    assert _overall(dags, 0, 0, {"marts": ["staging"]}) == 70
    slow_up = [dag("staging", 20), dag("marts", 10, ["staging"])]
    assert _overall(slow_up, 0, 0, {"marts": ["staging"]}) == 70  # 3 x 20, then marts' last window
