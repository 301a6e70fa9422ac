"""The chain segments a backfill is sent as (``workers.tasks.segment``): a segment that does not
reach the DAG's end ends with the link that continues it; the DAG's last window closes the DAG
itself (no link more: a message and a task execution per DAG, bench B4). Messages carry their
``argsrepr``/``kwargsrepr`` made with ``repr`` (what Flower shows and searches)."""

from __future__ import annotations

from backfill.request import Request, validate
from workers import tasks


def _params(days: int):  # type: ignore[no-untyped-def]
    return validate(Request(dags=["a"], start="2024-01-01", end=f"2024-01-{days:02d}", batch="daily"), max_windows=50)


def test_a_segment_short_of_the_end_continues_and_the_last_one_does_not() -> None:
    params = _params(3)
    first = tasks.segment(params, "a", 0, size=2)
    assert [s.task for s in first.tasks] == ["backfill.run_window", "backfill.run_window", "backfill.continue_dag"]
    assert first.tasks[-1].kwargs["seq"] == 2
    last = tasks.segment(params, "a", 2, size=2)
    assert [s.task for s in last.tasks] == ["backfill.run_window"]
    whole = tasks.segment(params, "a", 0, size=20)
    assert [s.task for s in whole.tasks] == ["backfill.run_window"] * 3


def test_the_first_link_carries_its_reprs_and_every_link_its_stamp() -> None:
    params = _params(2)
    canvas = tasks.segment(params, "a", 0, size=20)
    head = canvas.tasks[0]
    assert head.options["argsrepr"] == "()"
    assert head.options["kwargsrepr"] == repr(head.kwargs)
    assert "backfill_id" in head.options["kwargsrepr"] and "'dag_id': 'a'" in head.options["kwargsrepr"]
    assert all(s.options.get("backfill_id") == params.backfill_id for s in canvas.tasks)


def test_a_retried_submit_shows_its_webhook_redacted_and_long_kwargs_cut() -> None:
    """``reprs`` is what a retry (``_again``) shows too: a submit retried after a transient error
    must not put its webhook URL (a secret) in the message Flower and the logs read."""
    shown = tasks.reprs({"dags": ["d"], "notify": "https://hooks.slack.com/services/T0/B0/secret"})
    assert "secret" not in shown["kwargsrepr"] and "hooks.slack.com" in shown["kwargsrepr"]
    long = tasks.reprs({"conf": {"x": "y" * 5000}})["kwargsrepr"]
    assert len(long) == tasks.REPR_MAX and long.endswith("...")
