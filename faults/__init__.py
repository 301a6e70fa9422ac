"""The fault-injection harness: a backfill's whole life under crashes, errors and races.

Random schedules of several backfills over shared DAGs run against a real redis-server (the
orchestrator's own scripts and keys) and an in-process Airflow stand-in that keeps Airflow's
rules (``faults.airflow``), on a simulated clock and a simulated Celery broker
(``faults.world``): late acks, a visibility timeout, duplicated, delayed and reordered
deliveries, revokes. Any Redis or Airflow call of any step can crash its worker or fail,
before or after it took effect; Airflow calls can be slow. After each schedule the promises
are checked from the stand-in's records and Redis (``faults.invariants``). A failing schedule
prints the seed that replays it::

    python -m faults --schedules 10000          # the long run (docs/reliability.md)
    python -m faults --seed 1234 --verbose      # replay one schedule

``faults.cases`` holds the named regression cases, each a seeded schedule with the fault that
exposed one hole; ``tests/unit/test_faults.py`` runs them and a short random run.
"""
