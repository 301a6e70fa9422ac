"""How often a window looks at its run (``backfill.pacing``): the looks a run costs and how late
its end is seen, for short and long runs, learnt or not. B1/B2 in ``bench/`` measure the same
against a real Airflow."""

from __future__ import annotations

import math

import pytest

from backfill.pacing import MIN_DEV, TICK, UNLEARNT, Pace, learn, next_look, seed

FLOOR, CEILING = 0.05, 60.0  # the default poll_min and poll_max


def looks(pace: Pace, *, end: float, start: float | None = None) -> tuple[int, float]:
    """Looks until a run (started ``start`` s and ended ``end`` s after its trigger) is seen
    ended, and how late; from its first look after the start on, the start is known."""
    t, n = 0.0, 0
    while True:
        seen = start if start is not None and t >= start else None
        t += next_look(pace, t, started=seen, floor=FLOOR, ceiling=CEILING)
        n += 1
        if t >= end:
            return n, t - end


@pytest.mark.parametrize(
    ("end", "total", "dev"),
    [(3.0, 3.0, 0.2), (3.0, 2.7, 0.2), (3.0, 3.3, 0.2), (3.4, 3.0, 0.2), (60, 60, 1), (63, 58, 2)],
)
def test_a_learnt_run_costs_few_looks_and_its_end_is_seen_soon(end: float, total: float, dev: float) -> None:
    n, late = looks(Pace(total, dev), end=end)
    assert n <= 10, n
    # Seen within one fine tick: half a deviation (at least MIN_DEV's), at least TICK of the run.
    assert late <= max(FLOOR, max(dev, MIN_DEV) / 2, TICK * total) + 1e-9, late


def test_a_run_ending_as_learnt_costs_three_looks() -> None:
    assert looks(Pace(3.0, 0.2), end=3.0)[0] == 3


def test_once_started_the_end_is_expected_from_the_start() -> None:
    # Trigger-to-end varies with the scheduler's pick-up (here 0.5 to 1.5 s); start-to-end does not.
    pace = Pace(total=3.2, total_dev=0.5, run=2.2, run_dev=0.05)
    for start in (0.5, 1.0, 1.5):
        n, late = looks(pace, end=start + 2.2, start=start)
        assert n <= 6 and late <= TICK * 2.2 + 1e-9, (start, n, late)  # one tick of the run, not of total


@pytest.mark.parametrize("end", [2.0, 5.0, 60.0, 600.0])
def test_with_nothing_learnt_looks_grow_with_the_wait(end: float) -> None:
    n, late = looks(Pace(), end=end)
    # Every second up to 1 / UNLEARNT s, then logarithmic in the run's length, then poll_max apart.
    assert n <= 1 / UNLEARNT + math.log(end) / math.log(1 + UNLEARNT) + end / CEILING, n
    assert late <= max(1.0, UNLEARNT * end), late  # a 20 s first run's end seen within 4 s, not 10


def test_a_first_window_of_20_s_is_seen_ended_within_a_fifth_of_it() -> None:
    # bench B4's shape: 20 s runs (+-10 %) queued 0.5 s, on a DAG with no history to learn from.
    for end in (18.5, 20.5, 22.5):
        n, late = looks(Pace(), end=end)
        assert late <= 3.5 and n <= 15, (end, n, late)


def test_a_run_far_longer_than_learnt_is_not_hammered() -> None:
    n, _ = looks(Pace(10.0, 2.0), end=600.0)
    assert n <= 32, n  # fine ticks until E + 3d, then a quarter of the time waited


def test_waits_stay_within_the_bounds() -> None:
    for pace in (Pace(), Pace(0.5), Pace(3.0, 0.1, 2.0, 0.01), Pace(100.0, 40.0)):
        for elapsed in (0.0, 0.4, 2.9, 50.0, 1000.0):
            for started in (None, 0.3):
                assert 0.3 <= next_look(pace, elapsed, started=started, floor=0.3, ceiling=4.0) <= 4.0


def test_learning_follows_the_runs_and_seeding_skips_queue_time() -> None:
    pace = learn(Pace(), 10.0, 8.0)
    assert (pace.total, pace.run) == (10.0, 8.0)
    pace = learn(pace, 4.0, 3.0)
    assert pace.total == 7.0 and pace.run == 5.5 and pace.total_dev > 2.0
    assert learn(pace, None, None) == pace
    seeded = seed([2.2, 2.3, 2.1, 2.25])
    assert seeded.run == 2.25 and seeded.total == pytest.approx(3.25)
    assert seed([]) == Pace()
    assert Pace.from_record([b"3.5", None, b"2", b""]).to_record() == {"avg_duration": 3.5, "avg_run": 2.0}
