"""Airflow DAGs. Decks shaped as users write them: every kind of schedule, with history made by
their own scheduler (catchup over the last three days), and max_active_runs above 1.

The tests backfill over that history and check that each window finds its own run (or a
conflict) as ``backfill.history`` says. Airflow 3's defaults apply: a cron string is a
``CronTriggerTimetable`` and a timedelta a ``DeltaTriggerTimetable`` (runs without a data
interval); ``CronDataIntervalTimetable`` is the Airflow 2 style (runs cover their period).
"""

from datetime import UTC, datetime, timedelta

from _etl import make_etl_dag
from airflow.sdk import Asset, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

# Midnight three days ago: the scheduler makes the history on its own, and the DAG file
# parses to the same start date all day.
START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
HISTORY = {"start_date": START, "catchup": True, "max_active_runs": 2, "default_sleep": 0.5}

cron_trigger = make_etl_dag("user_cron_daily", schedule="@daily", **HISTORY)
cron_interval = make_etl_dag(
    "user_cron_interval_daily", schedule=CronDataIntervalTimetable("@daily", timezone="UTC"), **HISTORY
)
delta = make_etl_dag("user_delta_daily", schedule=timedelta(days=1), **HISTORY)
once = make_etl_dag("user_once", schedule="@once", **HISTORY)
manual = make_etl_dag("user_manual", schedule=None, start_date=START, max_active_runs=3, default_sleep=1)
# The start gates' test re-runs this one's history (kept apart from the history tests' DAGs).
gates = make_etl_dag("user_cron_gates", schedule="@daily", **HISTORY)

ORDERS = Asset("warehouse://orders")


@dag(dag_id="user_orders_producer", schedule=None, start_date=START, catchup=False, tags=["backfill-example"])
def producer() -> None:
    @task(outlets=[ORDERS])
    def publish() -> None:
        print("orders published")

    publish()


producer()
asset_consumer = make_etl_dag("user_asset_consumer", schedule=[ORDERS], **HISTORY)


@dag(dag_id="user_two_step", schedule=None, start_date=START, catchup=False, max_active_runs=3,
     tags=["backfill-example"])  # fmt: skip
def two_step() -> None:
    """Extract then load; ``load`` fails on its first try for the windows in the run's
    ``conf["fail_once_windows"]`` and on every try for those in ``conf["fail_windows"]``: a
    retry that clears only the failed tasks re-runs ``load`` and leaves ``extract`` done."""
    from airflow.sdk import get_current_context

    @task
    def extract() -> None:
        print("extracted")

    @task
    def load() -> None:
        ctx = get_current_context()
        conf, start = ctx["dag_run"].conf or {}, ctx["dag_run"].logical_date.isoformat()
        if start in conf.get("fail_windows", []):
            raise RuntimeError(f"window {start} told to fail")
        if ctx["ti"].try_number <= 1 and start in conf.get("fail_once_windows", []):
            raise RuntimeError(f"window {start} told to fail on its first try")

    extract() >> load()


two_step()
