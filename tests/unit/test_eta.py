"""Honest ETAs (``backfill.eta``): runs from the learnt pace, the measured handoff, retries,
quiet hours, the hourly cap and the order across DAGs, laid out from now."""

from __future__ import annotations

from backfill.eta import HANDOFF_UNKNOWN, estimate
from backfill.model import BackfillParams
from backfill.pacing import Pace
from backfill.record import DagRecord, WindowRecord
from backfill.states import DagState, WindowState

NOW = 1_704_103_200.0  # 2024-01-01T10:00:00Z


def params(**kw: object) -> BackfillParams:
    base = dict(backfill_id="bf-e", dags=["a", "b"], start="2023-12-01T00:00:00+00:00",
                end="2023-12-05T00:00:00+00:00", batch="daily")  # fmt: skip
    return BackfillParams(**{**base, **kw})  # type: ignore[arg-type]


def dag(run: float | None, state: str = DagState.RUNNING) -> DagRecord:
    return DagRecord(state=state, total=4, pace=Pace(total=run))


def test_nothing_learnt_means_no_eta_and_a_learnt_pace_lays_the_windows_out() -> None:
    p = params()
    etas, end = estimate(p, {"a": dag(None), "b": dag(100)}, {}, NOW)
    assert end is None and etas["a"].end is None and etas["a"].remaining == 4
    etas, end = estimate(p, {"a": dag(100), "b": dag(50)}, {}, NOW)
    # 4 windows of 100 s with 3 handoffs between them (none measured yet).
    assert etas["a"].end == NOW + 4 * 100 + 3 * HANDOFF_UNKNOWN and end == etas["a"].end


def test_the_measured_handoff_and_the_window_in_flight_count() -> None:
    p = params(dags=["a"])
    recs = {
        0: WindowRecord(state=WindowState.SUCCESS, triggered_at=NOW - 300, ended="2024-01-01T09:56:40+00:00"),
        1: WindowRecord(state=WindowState.RUNNING, triggered_at=NOW - 190, run="r1"),  # 10 s after 0 ended
    }
    etas, end = estimate(p, {"a": dag(100)}, {"a": recs}, NOW)
    assert etas["a"].handoff == 10 and etas["a"].remaining == 3
    # Window 1 ends at its trigger + 100 (already late: now), then 2 more windows and handoffs.
    assert end == NOW + 10 + 100 + 10 + 100


def test_quiet_hours_and_the_hourly_cap_move_the_starts() -> None:
    quiet = params(dags=["a"], quiet_hours=["10:00-12:00"])
    _, end = estimate(quiet, {"a": dag(60)}, {}, NOW)  # nothing starts before 12:00
    assert end == NOW + 2 * 3600 + 4 * 60 + 3 * HANDOFF_UNKNOWN
    capped = params(dags=["a"], max_starts_per_hour=2)
    _, end = estimate(capped, {"a": dag(60)}, {}, NOW)  # starts at 0, ~1 min, then an hour after each
    assert NOW + 3600 + 60 < end < NOW + 3600 + 60 + 2 * 60 + 2 * HANDOFF_UNKNOWN + 1


def test_retries_and_the_order_across_dags() -> None:
    p = params(retries=2, retry_delay=60, after={"b": ["a"]})
    done = {0: WindowRecord(state=WindowState.SUCCESS, attempt=2)}  # one retry over one window so far
    etas, end = estimate(p, {"a": dag(100), "b": dag(10)}, {"a": done}, NOW)
    assert etas["a"].retry == 1 * (100 + 60)
    # b's last window waits for a's last window, then runs 10 s.
    assert etas["b"].end == etas["a"].end + 10 and end == etas["b"].end


def test_a_finished_dag_keeps_its_end_and_a_finished_backfill_has_no_eta() -> None:
    p = params(dags=["a"])
    finished = DagRecord(state=DagState.SUCCEEDED, total=4, finished_at=NOW - 5, pace=Pace(total=10))
    etas, end = estimate(p, {"a": finished}, {}, NOW)
    assert etas["a"].end == NOW - 5 and etas["a"].remaining == 0 and end is None


def test_the_plan_estimate_counts_quiet_hours_ahead() -> None:
    from datetime import UTC, datetime, timedelta

    from backfill.preview import _with_gates

    now = datetime.now(UTC)
    quiet = f"{now - timedelta(minutes=1):%H:%M}-{now + timedelta(hours=2):%H:%M}"
    dags = [{"dag_id": "a", "count": 4, "median_run_seconds": 60.0, "actions": [{"action": "new"}] * 3 + [
        {"action": "skip"}]}]  # fmt: skip
    assert _with_gates(params(dags=["a"]), dags, 180.0) == 180.0 + 2 * HANDOFF_UNKNOWN  # 3 runs, 2 handoffs
    gated = _with_gates(params(dags=["a"], quiet_hours=[quiet]), dags, 180.0)
    assert gated is not None and 2 * 3600 - 120 < gated < 2 * 3600 + 300


def test_the_timeline_shades_quiet_hours_and_marks_where_upstream_windows_ended() -> None:
    from backfill.report import Bar, _quiet_bands, to_html

    t0 = NOW  # 10:00 UTC
    assert _quiet_bands(["10:30-11:00"], None, t0, t0 + 7200) == [(t0 + 1800, t0 + 3600)]
    assert _quiet_bands(None, None, t0, t0 + 7200) == []

    def bar(dag: str, a: float, b: float) -> Bar:
        return Bar(dag=dag, seq=1, start="2024-01-01", end="2024-01-02", state="success", run_id="r", t0=a, t1=b,
                   reason=None)  # fmt: skip

    data = {"backfill_id": "bf", "state": "succeeded", "batch": "daily", "range": ["a", "b"], "t0": t0,
            "t1": t0 + 7200, "lanes": {"up": [bar("up", t0, t0 + 600)], "down": [bar("down", t0 + 700, t0 + 900)]},
            "after": {"down": ["up"]}, "quiet": [(t0 + 1800, t0 + 3600)]}  # fmt: skip
    page = to_html(data)
    assert page.count('class="dep"') == 1 and 'data-after="up"' in page and "left:8.3333%" in page
    assert page.count('class="quiet"') == 3 and "quiet hours" in page and "after up" in page  # 2 lanes + legend
