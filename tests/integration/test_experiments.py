"""The experiments behind docs/concurrency.md, run against the session's real Airflow: every
"no" in that table is a finding observed here, so the verdicts cannot drift from Airflow."""

from __future__ import annotations

import pytest

from experiments.airflow_features import Experiment, report, run_all

pytestmark = pytest.mark.integration


def findings(e: Experiment) -> dict[str, bool]:
    return {f.requirement: f.met for f in e.findings}


def test_airflow_features_against_the_requirements(orch):
    mar, pools, sensors, native, shared, modes, cancel, past, consecutive = run_all(orch.airflow)

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

    assert findings(shared) == {"other DAGs are never blocked": False}, shared.facts
    assert shared.facts["b_waited_s"] >= 3 and shared.facts["b_started_after_a_ended"], shared.facts

    assert findings(modes) == {
        "a waiting sensor frees its worker slot (reschedule)": True,
        "a waiting sensor frees its worker slot (deferrable)": True,
        "one run of the DAG at a time": False,
        "the first window runs": False,
    }, modes.facts
    assert modes.facts["exp_sensor_reschedule_max_runs_at_once"] >= 2, modes.facts
    assert modes.facts["exp_sensor_deferrable_max_runs_at_once"] >= 2, modes.facts

    assert findings(cancel) == {
        "a cancel stops the run in flight": False,
        "a cancel leaves the rest not run": True,
    }, cancel.facts
    assert cancel.facts["running_run_ended_s_after_cancel"] is not None, cancel.facts
    assert list(cancel.facts["runs_at_cancel"].values()).count("running") == 1, cancel.facts

    assert findings(past) == {
        "nothing runs after a failed window": True,
        "the DAG is free again after a failure": False,
        "windows queued newest first run": False,
    }, past.facts
    assert past.facts["states"] == ["success", "failed", "running", "queued"], past.facts
    assert past.facts["newest_first_states"] == ["queued", "running"], past.facts

    assert findings(consecutive) == {"nothing runs after a failed window": False}, consecutive.facts
    assert consecutive.facts["paused"] is False, consecutive.facts

    text = report([mar, pools, sensors, native, shared, modes, cancel, past, consecutive])
    assert text.count("| **no** |") >= 15
