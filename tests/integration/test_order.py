"""Ordering across DAGs against the real Airflow: ``after={"etl_orders": ["etl_users"]}``.
Each window of etl_orders is triggered only after the same window of etl_users ended (from
Airflow's run records), the DAGs still overlap (etl_users runs its next window meanwhile), and
a failed upstream window leaves its dependent window not run while the rest goes on."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from tests.integration.helpers import runs, submit, wait_done

pytestmark = pytest.mark.integration
UP, DOWN = "etl_users", "etl_orders"


def test_dependent_windows_start_after_their_upstream_window_and_the_dags_still_overlap(orch):
    bf = submit(orch, dags=[DOWN, UP], start="2011-05-01", end="2011-05-03", conf={"sleep": 3},
                after={DOWN: [UP]})["backfill_id"]  # fmt: skip
    assert wait_done(orch.record, bf, timeout=240)["state"] == "succeeded"
    up, down = runs(orch.airflow, UP, bf), runs(orch.airflow, DOWN, bf)
    assert len(up) == len(down) == 3 and all(r.state == "success" for r in up + down)
    for u, d in zip(up, down, strict=True):
        assert u.logical_date == d.logical_date
        assert d.queued_at >= u.end_date, f"{d.run_id} triggered at {d.queued_at}, before {u.run_id} ended"
    # Not one DAG after the other: etl_users' window 2 ran while etl_orders ran its window 1.
    assert up[1].start_date < down[0].end_date, (up[1].start_date, down[0].end_date)
    reasons = [e.get("reason") or "" for _, e in orch.record.events(bf) if e.get("dag") == DOWN]
    assert f"waiting for {UP} [2011-05-01T00:00:00+00:00, 2011-05-02T00:00:00+00:00)" in reasons


def test_a_failed_upstream_window_leaves_its_dependent_not_run_and_the_rest_goes_on(orch):
    conf = {"sleep": 0.5, "fail_windows": ["2011-06-02T00:00:00+00:00"], "fail_dags": [UP]}
    result = CliRunner().invoke(cli, [
        "submit", UP, DOWN, "--start", "2011-06-01", "--end", "2011-06-03", "--conf", json.dumps(conf),
        "--after", f"{DOWN}={UP}", "--on-failure", "continue", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    bf = json.loads(result.output)["backfill_id"]
    assert wait_done(orch.record, bf, timeout=240)["state"] == "failed"
    up, down = runs(orch.airflow, UP, bf), runs(orch.airflow, DOWN, bf)
    assert [r.state for r in up] == ["success", "failed", "success"]
    # Airflow never got etl_orders' run for the failed day.
    assert [r.logical_date.day for r in down] == [1, 3] and all(r.state == "success" for r in down)
    w = orch.record.windows(bf, DOWN)[1]
    assert w.state == "not_run" and w.reason == (
        f"not run: {UP} [2011-06-02T00:00:00+00:00, 2011-06-03T00:00:00+00:00) ended failed "
        f"(after={UP}, on_failure=continue)"
    )
    # The ETA given at submit (both DAGs had successes in Airflow by then: the test above), next
    # to the actual end in the report.
    meta = orch.record.meta(bf)
    eta, ended = float(meta["eta_at_submit"]), float(meta["finished_at"])
    assert float(meta["created_at"]) < eta < ended + 120
    report = CliRunner().invoke(cli, ["report", bf])
    assert report.exit_code == 0 and "ETA at submit " in report.output and ", ended " in report.output
    assert f"{DOWN}" in report.output and f"(after {UP})" in report.output


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ({"etl_orders": ["etl_users"], "etl_users": ["etl_orders"]}, "after: the order has a cycle: "),
        ({"etl_orders": ["etl_nope"]}, "after: 'etl_nope' is not one of this backfill's DAGs"),
    ],
)
def test_a_cycle_or_an_unknown_upstream_is_refused_and_nothing_is_triggered(orch, after, message):
    from backfill.errors import InputError

    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        submit(orch, dags=[UP, DOWN], start="2007-11-01", end="2007-11-02", after=after)
    assert not [r for d in (UP, DOWN) for r in orch.airflow.runs_between(d, *_dates())]


def _dates():
    from datetime import UTC, datetime

    return datetime(2007, 11, 1, tzinfo=UTC), datetime(2007, 11, 3, tzinfo=UTC)  # no other test's dates
