"""Demo: a local stack and a backfill of 3 example DAGs over a month in weekly windows, one of
them ordered after another (etl_payments' window waits for the same window of etl_orders).

Starts redis-server, ``airflow standalone`` with the example DAGs, a Celery worker and Flower
(:5555), submits the backfill through the ``backfill.submit_backfill`` task, prints the order
of execution as it happens (from the backfill's record), then the final status and the
timeline (text, and an HTML page in .stack/demo/report.html), and stops every process it
started. ``--keep`` leaves the stack running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import REPO, Stack, free_port, tcp_open

DAGS = ["etl_orders", "etl_users", "etl_payments"]
AFTER = {"etl_payments": ["etl_orders"]}  # ordering across DAGs: payments after orders, window by window


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--end", default="2024-01-31")
    ap.add_argument("--batch", default="weekly")
    ap.add_argument("--keep", action="store_true", help="leave the stack running until Ctrl-C")
    args = ap.parse_args()

    root = REPO / ".stack" / "demo"
    shutil.rmtree(root, ignore_errors=True)  # a fresh Airflow: no runs left from an earlier demo
    stack = Stack(root)
    try:
        print("starting redis-server ...", flush=True)
        stack.start_redis()
        print("starting airflow standalone (about 30-60 s) ...", flush=True)
        stack.start_airflow(8080 if not tcp_open(8080) else free_port(), expect_dags=len(DAGS))
        os.environ.update(stack.env())
        print("starting a celery worker (2 processes) and flower ...", flush=True)
        stack.start_worker("demo", concurrency=2)
        flower_port = 5555 if not tcp_open(5555) else free_port()
        stack.start_flower(flower_port)
        print(f"  Airflow UI  {stack.airflow_url}  (user {stack.airflow_user}, password {stack.airflow_password})")
        print(f"  Flower      http://127.0.0.1:{flower_port}")
        print(f"  Redis       {stack.redis_url}")
        print(f"  logs        {stack.root}/*.log")
        if not args.keep:
            print("  (these stay up while the demo runs, about a minute; `make demo ARGS=--keep` keeps them up after)")
        print()

        from workers.tasks import context, submit_backfill

        summary = submit_backfill.delay(dags=DAGS, start=args.start, end=args.end, batch=args.batch,
                                        after=AFTER).get(timeout=120)  # fmt: skip
        bf = summary["backfill_id"]
        print(f"backfill {bf}: {summary['batches']} ({summary['batch']}, {summary['order']})")
        print("  etl_payments runs each window after etl_orders has run it (after=); etl_users runs on its own\n")
        print("execution order, as it happens:")
        record = context().record
        last = "-"
        while True:
            for event_id, e in record.events(bf, after=last):
                last = event_id
                if e["kind"] == "window" and e["state"] in ("triggered", "success", "failed", "waiting", "skipped"):
                    clock = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
                    why = f"  ({e['reason']})" if e.get("reason") else ""
                    print(f"  {clock}  {e['dag']:<13} {e['start'][:10]} .. {e['end'][:10]}  {e['state']}{why}")
                elif e["kind"] == "dag":
                    print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))}  {e['dag']:<13} done: {e['state']}")
            if record.meta(bf)["state"] != "running":
                break
            time.sleep(0.5)
        from backfill import report
        from backfill.status import render, status

        print()
        print(render(status(record, bf)))
        timeline = report.collect(record, bf)
        print("\n" + report.text(timeline, max_rows=0))
        page = stack.root / "report.html"
        page.write_text(report.to_html(timeline))
        print(f"\ntimeline page: {page}")
        if args.keep:
            print(f"same views any time: backfill status {bf} / backfill report {bf} [--html FILE]")
            print(f"  (with BACKFILL_REDIS_URL={stack.redis_url})")
        else:
            print("the stack stops now; with `make demo ARGS=--keep` it stays up to explore (backfill status,")
            print("backfill report, Flower, the Airflow UI) until Ctrl-C")
        if args.keep:
            print("\nstack left running; Ctrl-C stops it")
            while True:
                time.sleep(3600)
        return 0 if record.meta(bf)["state"] == "succeeded" else 1
    except KeyboardInterrupt:
        return 130
    finally:
        print("stopping the stack ...", flush=True)
        stack.stop_all()


if __name__ == "__main__":
    sys.exit(main())
