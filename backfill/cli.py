"""The ``backfill`` command.

Errors the user can fix (``BackfillError``) become one line on stderr and a non-zero exit code
in one place (``_Group.invoke``); no traceback for a user mistake.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from backfill.errors import BackfillError
from backfill.planning import check_conf
from backfill.status import render, status
from backfill.windows import BATCHES


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BackfillError as exc:
            raise _UserError(str(exc), exc.exit_code) from None


def _context() -> Any:
    # Imported here so `backfill --help` works without Redis or a config.
    from workers.tasks import context

    return context()


@click.group(cls=_Group)
def cli() -> None:
    """Backfill Airflow DAGs over a date range: one serial chain per DAG, DAGs in parallel."""


@cli.command()
@click.argument("dags", nargs=-1, required=True)
@click.option("--start", required=True, help="First day (YYYY-MM-DD, included) or ISO datetime.")
@click.option("--end", required=True, help="Last day (YYYY-MM-DD, included) or ISO datetime (excluded).")
@click.option("--batch", default="daily", show_default=True, help=f"Window size: {', '.join(BATCHES)}.")
@click.option("--tz", default=None, help="IANA time zone the windows align to (default UTC).")
@click.option("--reverse", is_flag=True, help="Newest window first.")
@click.option("--conf", default=None, help="JSON object added to every run's conf.")
@click.option("--on-failure", type=click.Choice(["stop", "continue"]), default="stop", show_default=True)
@click.option("--reprocess", type=click.Choice(["none", "failed", "completed"]), default="none", show_default=True)
@click.option("--unpause", is_flag=True, help="Unpause paused DAGs instead of refusing them.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for a worker to accept.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def submit(
    dags: tuple[str, ...],
    start: str,
    end: str,
    batch: str,
    tz: str | None,
    reverse: bool,
    conf: str | None,
    on_failure: str,
    reprocess: str,
    unpause: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Start a backfill of DAGS; prints its id and how to watch it."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from workers.tasks import submit_backfill

    conf_obj = check_conf(conf, name="--conf") if conf is not None else None
    result = submit_backfill.apply_async(
        kwargs=dict(
            dags=list(dags), start=start, end=end, batch=batch, tz=tz, reverse=reverse, conf=conf_obj,
            on_failure=on_failure, reprocess=reprocess, unpause=unpause,
        )
    )  # fmt: skip
    try:
        summary = result.get(timeout=timeout)
    except CeleryTimeout:
        result.revoke()
        raise BackfillError(
            f"no worker accepted the backfill within {timeout:.0f} s: is one running? "
            "(celery -A workers worker -l info)"
        ) from None
    finally:
        del result  # unsubscribe now, not at interpreter exit when Redis clients are gone
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    bf = summary["backfill_id"]
    click.echo(f"backfill {bf} submitted: {summary['windows']} windows ({summary['batch']}), {summary['order']}")
    for dag, n in summary["batches"].items():
        click.echo(f"  {dag}: {n} windows")
    click.echo(f"watch it:   backfill status {bf}")


@cli.command("status")
@click.argument("backfill_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--events", is_flag=True, help="Also print the ordered event log.")
@click.option("--watch", is_flag=True, help="Refresh until the backfill ends.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes with --watch.")
def status_cmd(backfill_id: str, as_json: bool, events: bool, watch: bool, interval: float) -> None:
    """Show a backfill: progress per DAG, the current window, why a DAG waits, failures."""
    record = _context().record
    while True:
        data = status(record, backfill_id, events=events)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            if watch:
                click.clear()
            click.echo(render(data))
        if not watch or data["state"] not in ("running", "cancelling"):
            return
        time.sleep(interval)


@cli.command("list")
@click.option("--limit", default=20, show_default=True)
def list_cmd(limit: int) -> None:
    """Recent backfills, newest first."""
    record = _context().record
    for bf in record.recent(limit):
        try:
            data = status(record, bf)
        except BackfillError:
            continue
        done = sum(d["done"] for d in data["dags"])
        total = sum(d["total"] for d in data["dags"])
        dags = ",".join(data["params"]["dags"])
        click.echo(f"{bf}  {data['state']:<10} {done:>6}/{total:<6} {data['params']['batch']:<8} {dags}")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="backfill")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
