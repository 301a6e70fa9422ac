"""Run the benchmarks: ``python -m bench`` (or ``make bench``). Exits 1 when a target is missed.

    python -m bench                      # B1..B4, results in bench/results.md
    python -m bench b1 b2 --rounds 5     # some of them
    python -m bench --write-docs         # also put the table in docs/performance.md

Every benchmark starts its own processes (redis-server, ``airflow standalone`` for B1/B2, the
B4 stand-in server, ``celery worker``) under ``.stack/bench`` and stops them by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.common import REPO, TABLE_HEAD, Figure, bench_stack

DOCS = REPO / "docs" / "performance.md"
BENCHES = ("b1", "b2", "b3", "b4", "b5")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    # No argparse `choices` here: with nargs="*" it rejects an empty list (Python issue 9625).
    ap.add_argument("which", nargs="*", metavar="{b1,b2,b3,b4,b5}", help="which benchmarks (default: all)")
    ap.add_argument("--rounds", type=int, default=7, help="B1 rounds (native and ours alternate)")
    ap.add_argument("--write-docs", action="store_true", help="put the table in docs/performance.md")
    ap.add_argument("--group", choices=list(GROUPS), help=argparse.SUPPRESS)  # internal: one group, in-process
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [w for w in args.which if w not in BENCHES]
    if unknown:
        ap.error(f"argument which: invalid choice: {unknown[0]!r} (choose from {', '.join(BENCHES)})")
    args.which = args.which or list(BENCHES)
    return args


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so every started process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)

    root = REPO / ".stack" / "bench"
    started = time.time()
    figures: list[Figure] = []
    if args.group:
        figures = run_group(args.group, root, rounds=args.rounds, which=args.which)
        Path(args.json).write_text(json.dumps([asdict(f) for f in figures]))
        return 0
    shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {machine()}", flush=True)
    # Each group in a process of its own: the orchestrator's modules read their settings (which
    # Redis, which Airflow) once, at import.
    for group in [g for g, members in GROUPS.items() if set(members) & set(args.which)]:
        out = root / f"{group}.json"
        root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench", *args.which, "--rounds", str(args.rounds), "--group", group]
        proc = subprocess.run([*cmd, "--json", str(out)], cwd=REPO)
        if proc.returncode != 0:
            print(f"benchmark group {group} failed (exit {proc.returncode})", file=sys.stderr)
            return 2
        figures += [Figure(**f) for f in json.loads(out.read_text())]

    table = render(figures, started=started, argv=sys.argv[1:] if argv is None else argv)
    print(table)
    (REPO / "bench" / "results.md").write_text(table + "\n")
    if args.write_docs:
        text = DOCS.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOCS.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    missed = [f for f in figures if not f.ok]
    for f in missed:
        print(f"MISSED: {f.bench} {f.name}: median {f.median:.3g} {f.unit}, target {f.target:.3g}", file=sys.stderr)
    return 1 if missed else 0


GROUPS = {"airflow": ("b1", "b2"), "b3": ("b3",), "b4": ("b4",), "b5": ("b5",)}


def run_group(group: str, root: Path, *, rounds: int, which: list[str]) -> list[Figure]:
    figures: list[Figure] = []
    if group == "airflow":
        from bench import airflow_benches

        with bench_stack(root / "airflow") as b:
            print("starting postgres, airflow standalone (bench DAGs), redis-server and a worker ...", flush=True)
            b.stack.start_redis()
            airflow = b.start_airflow()
            b.start_worker()
            tasks = b.orchestrator()
            if "b1" in which:
                figures += airflow_benches.b1(airflow, tasks, rounds=rounds)
            if "b2" in which:
                figures += airflow_benches.b2(airflow, tasks)
            tasks.app.close()
    elif group == "b3":
        from bench import longrange

        figures += longrange.b3(root / "b3")
    elif group == "b4":
        from bench import many

        figures += many.b4(root / "b4")
    elif group == "b5":
        from bench import many

        figures += many.b5(root / "b5")
    return figures


def machine() -> str:
    """The machine the figures come from: they are compared within one run, never across machines."""
    info = {}
    for path in ("/proc/cpuinfo", "/proc/meminfo"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    model = info.get("model name") or platform.processor() or "unknown CPU"
    memory = f", {int(info['MemTotal'].split()[0]) / 2**20:.0f} GiB" if "MemTotal" in info else ""
    return (
        f"{platform.machine()}, {model}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, "
        f"{platform.system()}"
    )


def render(figures: list[Figure], *, started: float, argv: list[str]) -> str:
    cmd = "python -m bench" + (" " + " ".join(argv) if argv else "")
    when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Command: `{cmd}` · run {when} · {machine()} · took {time.time() - started:.0f} s", "", TABLE_HEAD]
    lines += [f.row() for f in figures]
    notes = [f"- {f.bench} {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", *notes] if notes else []))


if __name__ == "__main__":
    raise SystemExit(main())
