"""The experiments behind docs/concurrency.md, run against the session's real Airflow: every
"no" in that table is a finding observed here, so the verdicts cannot drift from Airflow."""

from __future__ import annotations

import pytest

from experiments.airflow_features import Experiment, report, run_all

pytestmark = pytest.mark.integration


def findings(e: Experiment) -> dict[str, bool]:
    return {f.requirement: f.met for f in e.findings}


def test_airflow_features_against_the_requirements(orch):
    mar, pools, sensors, native = run_all(orch.airflow)

    assert findings(mar) == {
        "one run of the DAG at a time": True,
        "a run over the limit waits instead of failing": True,
        "windows run in the order asked": False,
        "nothing runs after a failed window": False,
        "windows that are not the DAG's schedule": True,
    }, mar.facts
    assert mar.facts["ran_after_failure"] >= 1 and mar.facts["start_order"] == [3, 2, 1, 0]

    assert findings(pools) == {
        "one run of the DAG at a time": False,
        "one window finishes before the next starts": False,
    }
    assert pools.facts["max_runs_at_once"] >= 2, pools.facts

    assert findings(sensors)["one run of the DAG at a time"] is False and sensors.facts["sensors_at_once"] >= 2
    assert findings(sensors)["the first window runs"] is False

    assert findings(native) == {
        "any DAG": False,
        "windows that are not the DAG's schedule": False,
        "nothing runs after a failed window": False,
        "one run of the DAG at a time, including runs it did not start": False,
        "several backfills of one DAG wait for each other": False,
    }, native.facts
    assert native.facts["non_periodic"].startswith("HTTP 4") and native.facts["second_backfill"].startswith("HTTP 409")

    text = report([mar, pools, sensors, native])
    assert text.count("| **no** |") >= 8
