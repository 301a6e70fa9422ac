"""The ``backfill`` command.

Errors the user can fix (``BackfillError``) become one line on stderr and a non-zero exit code
in one place (``_Group.invoke``); no traceback for a user mistake.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, cast
from urllib.parse import urlsplit

import click
import redis

from backfill.context import Context
from backfill.errors import BackfillError, InputError
from backfill.gates import check_quiet_hours
from backfill.notify import check_notify
from backfill.request import check_conf
from backfill.settings import DEFAULT_REDIS_URL, Settings
from backfill.status import render, status
from backfill.windows import BATCHES

EXIT_FAILED = 4  # status --wait: the backfill ended failed (a window failed or was not run)
EXIT_CANCELLED = 5  # status --wait: the backfill was cancelled


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BackfillError as exc:
            raise _UserError(str(exc), exc.exit_code) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            where = urlsplit(os.environ.get("BACKFILL_REDIS_URL", DEFAULT_REDIS_URL))
            message = (
                f"Redis at {where.hostname}:{where.port or 6379} is unreachable ({exc}): "
                "is it running? (BACKFILL_REDIS_URL)"
            )
            raise _UserError(message, 3) from None


def _services() -> Context:
    """Redis and Airflow clients from the environment, as the workers build them. Not through
    ``workers``: commands that only read or write the record need no Celery app (and none of
    the worker's process-wide patches); ``submit``, ``resume`` and ``cancel`` load it when they
    publish or revoke."""
    global _SERVICES
    if _SERVICES is None:
        _SERVICES = Context.build(Settings.from_env())
    return _SERVICES


_SERVICES: Context | None = None


@click.group(cls=_Group)
def cli() -> None:
    """Backfill Airflow DAGs over a date range: one serial chain per DAG, DAGs in parallel."""


def _request_options(fn: Any) -> Any:
    """The options that describe a backfill, shared by ``plan`` and ``submit``."""
    options = [
        click.argument("dags", nargs=-1, required=True),
        click.option("--start", required=True, help="First day (YYYY-MM-DD, included) or ISO datetime."),
        click.option("--end", required=True, help="Last day (YYYY-MM-DD, included) or ISO datetime (excluded)."),
        click.option("--batch", default="daily", show_default=True, help=f"Window size: {', '.join(BATCHES)}."),
        click.option("--tz", default=None, help="IANA time zone the windows align to (default UTC)."),
        click.option("--reverse", is_flag=True, help="Newest window first."),
        click.option("--conf", default=None, help="JSON object added to every run's conf."),
        click.option("--on-failure", type=click.Choice(["stop", "continue"]), default="stop", show_default=True),
        click.option(
            "--reprocess", type=click.Choice(["none", "failed", "completed"]), default="none", show_default=True
        ),
        click.option(
            "--on-conflict",
            type=click.Choice(["refuse", "skip"]),
            default="refuse",
            show_default=True,
            help="A window whose logical date is held by a run covering something else: refuse the backfill, "
            "or skip such windows.",
        ),
        click.option("--unpause", is_flag=True, help="Unpause paused DAGs instead of refusing them."),
        click.option(
            "--max-parallel-dags",
            type=click.IntRange(min=0),
            default=None,
            help="At most this many DAGs run a window at once (0: all; default BACKFILL_MAX_PARALLEL_DAGS).",
        ),
        click.option(
            "--notify",
            default=None,
            metavar="URL|JSON",
            help="Webhook (Slack-compatible) told when the backfill ends or a DAG ends failed (default "
            'BACKFILL_NOTIFY_URL); \'{"url": "...", "failed_windows": true}\' also of each failed window.',
        ),
        click.option(
            "--quiet-hours",
            default=None,
            metavar="HH:MM-HH:MM[,...]",
            help="No window starts in these hours (in --tz; a range may cross midnight); runs in flight go on.",
        ),
        click.option(
            "--max-starts-per-hour",
            type=click.IntRange(min=0),
            default=None,
            help="At most this many windows start in any hour (0: no limit).",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=None,
            help="Re-run a window whose run failed (its failed tasks cleared) up to this many times.",
        ),
        click.option(
            "--retry-delay",
            type=click.FloatRange(min=0),
            default=None,
            metavar="SECONDS",
            help="Wait before the first retry (default 60), doubling for each next one, at most 1 h.",
        ),
        click.option(
            "--after",
            multiple=True,
            metavar="DAG=UPSTREAM[,UPSTREAM]",
            help="Each window of DAG starts once the same window of each UPSTREAM succeeded (repeatable).",
        ),
        click.option(
            "--priority",
            type=click.IntRange(-9, 9),
            default=None,
            help="Under the global cap, a higher priority gets freed slots first, none starving (default 0).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _request(opts: dict[str, Any]) -> dict[str, Any]:
    conf, notify = opts["conf"], opts["notify"]
    if notify and notify.lstrip().startswith("{"):
        try:
            notify = json.loads(notify)
        except ValueError:
            raise BackfillError("--notify: not valid JSON (expected a URL or a JSON object)") from None
    return dict(
        dags=list(opts["dags"]), start=opts["start"], end=opts["end"], batch=opts["batch"], tz=opts["tz"],
        reverse=opts["reverse"], conf=check_conf(conf, name="--conf") if conf is not None else None,
        on_failure=opts["on_failure"], reprocess=opts["reprocess"], unpause=opts["unpause"],
        on_conflict=opts["on_conflict"],
        max_parallel_dags=opts["max_parallel_dags"],
        notify=check_notify(notify),
        quiet_hours=check_quiet_hours(opts["quiet_hours"]), max_starts_per_hour=opts["max_starts_per_hour"],
        retries=opts["retries"], retry_delay=opts["retry_delay"], after=_after(opts["after"]),
        priority=opts["priority"],
    )  # fmt: skip


def _after(given: tuple[str, ...]) -> dict[str, list[str]] | None:
    """``--after marts=staging,raw`` (repeatable) as ``{"marts": ["staging", "raw"]}``."""
    out: dict[str, list[str]] = {}
    for item in given:
        dag, eq, ups = item.partition("=")
        if not eq or not dag.strip() or not ups.strip():
            raise InputError(f"--after: expected DAG=UPSTREAM[,UPSTREAM...], got {item!r}")
        out.setdefault(dag.strip(), []).extend(u.strip() for u in ups.split(",") if u.strip())
    return out or None


def _call_worker(kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``submit_backfill`` on a worker and wait for its answer."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from workers.tasks import submit_backfill

    result = submit_backfill.apply_async(kwargs=kwargs)
    try:
        return cast(dict[str, Any], result.get(timeout=timeout))
    except CeleryTimeout:
        result.revoke()
        raise BackfillError(
            f"no worker accepted the backfill within {timeout:.0f} s: is one running? "
            "(celery -A workers worker -l info)"
        ) from None
    finally:
        del result  # unsubscribe now, not at interpreter exit when Redis clients are gone


def _print_submitted(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    bf = summary["backfill_id"]
    resumes = f", resuming {summary['resumes']}" if summary.get("resumes") else ""
    click.echo(
        f"backfill {bf} submitted: {summary['windows']} windows ({summary['batch']}), {summary['order']}{resumes}"
    )
    for dag, n in summary["batches"].items():
        click.echo(f"  {dag}: {n} windows")
    for warning in summary.get("warnings", []):
        click.echo(f"warning: {warning}")
    click.echo(f"watch it:   backfill status {bf} --watch")
    click.echo(f"cancel it:  backfill cancel {bf}")


@cli.command()
@_request_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--max-rows", default=10, show_default=True, help="Windows listed per DAG (0: all).")
def plan(as_json: bool, max_rows: int, **opts: Any) -> None:
    """Show what a backfill would run, in order, and how long it may take. Triggers nothing.

    Exits with 2 when Airflow would refuse the backfill (unknown or paused DAGs).
    """
    from backfill.preview import preview, render
    from backfill.request import Request, validate

    svc = _services()
    request = _request(opts)
    if request["max_parallel_dags"] is None:
        request["max_parallel_dags"] = svc.settings.max_parallel_dags
    params = validate(Request(**request), max_windows=svc.settings.max_windows)
    data = preview(svc.airflow, params, unpause=request["unpause"], global_limit=svc.settings.global_max_runs)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render(data, max_rows=max_rows))
    if data["problems"]:
        raise _UserError("the backfill would be refused: " + "; ".join(data["problems"]), 2)


@cli.command()
@_request_options
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for a worker to accept.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def submit(timeout: float, as_json: bool, **opts: Any) -> None:
    """Start a backfill of DAGS; prints its id and how to watch it."""
    _print_submitted(_call_worker(_request(opts), timeout), as_json)


@cli.command()
@click.argument("backfill_id")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for a worker to accept.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--on-conflict", type=click.Choice(["refuse", "skip"]), default=None,
              help="Change the rule for windows whose logical date is held by another interval's run.")  # fmt: skip
def resume(backfill_id: str, timeout: float, as_json: bool, on_conflict: str | None) -> None:
    """Start a new backfill of the windows of BACKFILL_ID that did not succeed, with its rules."""
    ask: dict[str, Any] = {"resume": backfill_id}
    if on_conflict is not None:
        ask["on_conflict"] = on_conflict
    _print_submitted(_call_worker(ask, timeout), as_json)


@cli.command()
@click.argument("backfill_id")
@click.option("--fail-running", is_flag=True, help="Also mark the backfill's queued/running Airflow runs failed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cancel(backfill_id: str, fail_running: bool, as_json: bool) -> None:
    """Stop every remaining window of BACKFILL_ID (and nothing of another backfill)."""
    from backfill.commands import cancel as do_cancel
    from workers.app import app
    from workers.tasks import CeleryPublisher

    def revoke(bf: str) -> None:
        app.control.revoke_by_stamped_headers({"backfill_id": bf})

    out = do_cancel(_services(), backfill_id, fail_running=fail_running, revoke=revoke, publisher=CeleryPublisher())
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"backfill {backfill_id} cancelled: {out['cancelled_windows']} window(s) will not run")
    for run in out["failed_runs"]:
        click.echo(f"  marked failed in Airflow: {run}")
    for run in out["left_running"]:
        click.echo(f"  still running in Airflow (not ours to stop without --fail-running): {run}")
    click.echo(f"run the rest later:  backfill resume {backfill_id}")


@cli.command()
@click.argument("backfill_id")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True), help="Write an HTML page here.")
@click.option("--width", default=60, show_default=True, help="Columns of the text timeline.")
@click.option("--max-rows", default=100, show_default=True, help="Windows listed under the timeline (0: all).")
@click.option("--no-verify", is_flag=True, help="Do not check Airflow's records for overlapping runs.")
def report(backfill_id: str, html_file: str | None, width: int, max_rows: int, no_verify: bool) -> None:
    """The timeline of BACKFILL_ID: one lane per DAG, one bar per window, by outcome."""
    from backfill import report as rep

    svc = _services()
    data = rep.collect(svc.record, backfill_id, airflow=None if no_verify else svc.airflow)
    if html_file:
        with open(html_file, "w", encoding="utf-8") as fh:
            fh.write(rep.to_html(data))
        click.echo(f"wrote {html_file}")
        return
    click.echo(rep.text(data, width=width, max_rows=max_rows))


@cli.command()
@click.option("--port", default=9809, show_default=True, help="Serve /metrics on this port.")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Listen on this address.")
@click.option("--keep", default=24.0, show_default=True, help="Hours an ended backfill stays exported.")
@click.option("--once", is_flag=True, help="Print one scrape's metrics and exit.")
def metrics(port: int, addr: str, keep: float, once: bool) -> None:
    """Prometheus metrics of the backfills, from their records (no Airflow request)."""
    from backfill import exporter

    record = _services().record
    if once:
        click.echo(exporter.render(record, keep=keep * 3600), nl=False)
        return
    click.echo(f"serving backfill metrics on http://{addr}:{port}/metrics")
    exporter.serve(record, port=port, addr=addr, keep=keep * 3600)


@cli.command()
@click.option("--global", "global_", default=None, help="Cap on windows in flight across all backfills; 'off' "
              "returns to BACKFILL_GLOBAL_MAX_RUNS; 0 means no cap.")  # fmt: skip
def throttle(global_: str | None) -> None:
    """Show or change the global cap, for every worker at once (kept in Redis)."""
    svc = _services()
    sem = svc.throttle.glob
    if global_ is not None:
        if global_ == "off":
            sem.set_limit(None)
        elif global_.isdigit():
            sem.set_limit(int(global_))
        else:
            raise _UserError(f"--global: expected a whole number >= 0 or 'off', got {global_!r}", 2)
    override = sem.limit_override()
    limit = svc.settings.global_max_runs if override is None else override
    source = "BACKFILL_GLOBAL_MAX_RUNS" if override is None else "set with backfill throttle"
    click.echo(f"global cap: {limit or 'none'} ({source}); runs in flight now: {sem.in_use()}")


@cli.command("status")
@click.argument("backfill_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--events", is_flag=True, help="Also print the ordered event log.")
@click.option("--watch", is_flag=True, help="Refresh until the backfill ends.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes with --watch.")
@click.option("--no-verify", is_flag=True, help="Do not check Airflow's records for overlapping runs.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the end without refreshing, print the final view, and exit non-zero unless it succeeded "
    f"({EXIT_FAILED}: failed, {EXIT_CANCELLED}: cancelled): for scripts and CI jobs.",
)
def status_cmd(
    backfill_id: str, as_json: bool, events: bool, watch: bool, interval: float, no_verify: bool, wait: bool
) -> None:
    """Show a backfill: progress per DAG, the current window, why a DAG waits, failures, and
    whether each DAG's runs were serial, checked from Airflow's records."""
    svc = _services()
    while True:
        # --watch and --wait check Airflow's records once, at the end, not at every refresh.
        later = watch or wait
        data = status(svc.record, backfill_id, events=events, airflow=None if no_verify or later else svc.airflow,
                      locks=svc.locks)  # fmt: skip
        ended = data["state"] not in ("running", "cancelling")
        if later and ended and not no_verify:
            data = status(svc.record, backfill_id, events=events, airflow=svc.airflow, locks=svc.locks)
        if not wait or ended:
            if as_json:
                click.echo(json.dumps(data, indent=2))
            else:
                if watch:
                    click.clear()
                click.echo(render(data))
        if ended or not later:
            break
        time.sleep(interval)
    if wait and data["state"] != "succeeded":
        code = EXIT_CANCELLED if data["state"] == "cancelled" else EXIT_FAILED
        click.echo(f"backfill {backfill_id} {data['state']}", err=True)
        sys.exit(code)


@cli.command("list")
@click.option("--limit", default=20, show_default=True)
def list_cmd(limit: int) -> None:
    """Recent backfills, newest first."""
    record = _services().record
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
