"""Run the core integration tests against each Airflow 3 minor version and write the table.

    .venv/bin/python scripts/compat.py                 # 3.0, 3.1, 3.2 and 3.3 (make compat)
    .venv/bin/python scripts/compat.py --versions 3.1  # one of them

Each version gets its own virtualenv (``.venv-airflow-3.X``, the newest patch from PyPI, with
PostgreSQL drivers; 3.3 uses the stack's own ``.venv-airflow``), then the tests below run with
``BACKFILL_AIRFLOW_BIN`` pointing at it: a private PostgreSQL, a real Airflow (docker-compose.yaml's
services as processes), Redis and a Celery worker, one version at a time. The table goes to docs/compatibility.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "compatibility.md"
VERSIONS = ["3.0", "3.1", "3.2", "3.3"]
CORE = [
    "tests/integration/test_core.py",
    "tests/integration/test_history.py",
    "tests/integration/test_airflow_client.py",
]
# What differs in the REST API v2 between the versions, and how the client copes (one path for all).
DIFFERS = {
    "3.0": "installed from PyPI without Airflow's constraints every task fails (fastapi/cadwyn too new: "
    "`scripts/compat.py` pins the versions 3.1.8 uses); `/auth/token` fails (500, PyJWT >= 2.10 "
    "refuses its default issuer) unless `[api_auth] jwt_issuer` "
    "is set (the test stack sets it); no `run_id_pattern` (ignored: our runs are picked by prefix "
    "client-side), `order_by` takes one value, no `_gt`/`_lt` filters (only `_gte`/`_lte` are used), "
    "`conf: null` refused (always an object)",
    "3.1": "`run_id_pattern` and list `order_by` arrive; list pages capped at 100 (we ask for 100)",
    "3.2": "installed from PyPI without Airflow's constraints it does not start (fastapi/cadwyn too new: "
    "`scripts/compat.py` pins the versions 3.3.2 uses); cursor pages (`total_entries` may be null: "
    "paging goes on to an empty page); `run_id_prefix_pattern`",
    "3.3": "`timetable_periodic` on DAGs (not relied on); the version `make test` runs",
}


# Airflow pins its dependencies in constraints files (on GitHub, out of reach here). Installed
# from PyPI alone, 3.2.2 gets a fastapi/cadwyn pair it cannot start with (pydantic refuses the
# execution API's models: "needs a discriminator field"), and 3.0.6 one whose execution API
# refuses every task's state update (422 "Input should be a valid dictionary"): every run fails.
# These are the versions 3.3.2 and 3.1.8 resolve.
PINS = {
    "3.0": ["fastapi==0.117.1", "cadwyn==5.4.6", "starlette==0.48.0"],
    "3.2": ["fastapi==0.136.3", "cadwyn==7.0.0"],
}


def venv_for(minor: str) -> Path:
    if minor == "3.3":
        return REPO / ".venv-airflow"
    venv = REPO / f".venv-airflow-{minor}"
    if not (venv / "bin" / "airflow").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, f"apache-airflow=={minor}.*", "psycopg2-binary", "asyncpg"], check=True)
    if PINS.get(minor):
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *PINS[minor]], check=True)
    return venv


def installed(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import airflow; print(airflow.__version__)"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def run(minor: str, tests: list[str]) -> dict[str, str]:
    venv = venv_for(minor)
    version = installed(venv)
    env = {**os.environ, "BACKFILL_AIRFLOW_BIN": str(venv / "bin" / "airflow")}
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M) + re.findall(r"^ERROR (\S+)", done.stdout, re.M)
    print(f"Airflow {version}: {tail}", flush=True)
    for name in failed:
        print(f"  {name}", flush=True)
    names = ", ".join(f"`{f.split('::')[-1]}`" for f in failed[:3]) + (
        f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    )
    return {"minor": minor, "version": version, "result": tail.strip("= "), "ok": str(done.returncode == 0),
            "failed": names, "seconds": f"{time.monotonic() - started:.0f}"}  # fmt: skip


def write(rows: list[dict[str, str]], tests: list[str]) -> None:
    old = {}
    if DOC.exists():
        for line in DOC.read_text().splitlines():
            m = re.match(r"^\| (3\.\d) \|", line)
            if m:
                old[m.group(1)] = line
    when = time.strftime("%Y-%m-%d", time.gmtime())
    for r in rows:
        verdict = "passed" if r["ok"] == "True" else f"**failed**: {r['failed'] or r['result']}"
        old[r["minor"]] = (f"| {r['minor']} | {r['version']} | {verdict} ({r['result']}) | {when} | "
                           f"{DIFFERS.get(r['minor'], '')} |")  # fmt: skip
    lines = [
        "# Airflow versions",
        "",
        "The orchestrator drives Airflow 3.0, 3.1, 3.2 and 3.3 through REST API v2 with plain JSON requests,",
        "using only what all four accept. `make test` (and CI) runs the whole suite against the newest",
        "(3.3); this table is written by `scripts/compat.py` (`make compat`), which runs the core",
        f"integration tests ({', '.join(f'`{t}`' for t in tests)})",
        "against the newest patch of each",
        "minor version on this machine, each on a private PostgreSQL with a real worker:",
        "",
        "```sh",
        "make compat",
        ".venv/bin/python scripts/compat.py --versions 3.1   # one version",
        "```",
        "",
        "| minor | Airflow | core integration tests | last run | what differs in the API, and how it is handled |",
        "|---|---|---|---|---|",
        *[old[k] for k in sorted(old)],
        "",
    ]
    DOC.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", nargs="+", default=VERSIONS, choices=VERSIONS)
    ap.add_argument("--tests", nargs="+", default=CORE)
    a = ap.parse_args()
    rows = [run(v, a.tests) for v in a.versions]
    write(rows, a.tests)
    sys.exit(0 if all(r["ok"] == "True" for r in rows) else 1)


if __name__ == "__main__":
    main()
