#!/usr/bin/env bash
# Set up everything this repo needs on a fresh machine; safe to run again (it skips what is done).
#   scripts/bootstrap.sh            what `make demo` needs
#   scripts/bootstrap.sh --tests    and what only the tests need (chromium, graphviz, prometheus)
# - redis-server and postgresql (the local Airflow's database) from the system's packages, and
#   with --tests chromium (headless, for the HTML report's browser test), graphviz and prometheus
#   (promtool, and the monitoring profile's Prometheus), if missing;
# - a Python 3.11 or later: $PYTHON if set, else the first of python3.13, python3.12, python3.11
#   and python3 that is recent enough (with its venv module, installed if missing);
# - .venv: the orchestrator with its dev tools (pytest, ruff), at the versions in requirements.lock;
# - .venv-airflow: apache-airflow 3.3 (and its PostgreSQL drivers) for the local stack only
#   (not an orchestrator dependency), under the constraints in requirements-airflow.lock
#   (AIRFLOW_CONSTRAINTS= names another file or URL, for example Airflow's own:
#   https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
AIRFLOW_SPEC=${AIRFLOW_SPEC:-apache-airflow==3.3.*}
AIRFLOW_CONSTRAINTS=${AIRFLOW_CONSTRAINTS:-requirements-airflow.lock}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

recent() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && recent "$candidate"; then PY=$candidate; break; fi
  done
fi
if [ -z "$PY" ] || ! recent "$PY"; then
  echo "bootstrap: needs Python 3.11 or later (found: $(python3 --version 2>&1 || echo none))." >&2
  echo "  On Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv, then run this again" >&2
  echo "  (or point PYTHON= at a Python 3.11+: PYTHON=/usr/bin/python3.11 make demo)." >&2
  exit 1
fi

missing=()
bare=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The local Airflow (demo, tests, benchmarks) runs on a private PostgreSQL, as production runs it.
{ [ -d /usr/lib/postgresql ] || command -v initdb >/dev/null 2>&1; } || missing+=(postgresql)
if [ "${1:-}" = "--tests" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v dot >/dev/null 2>&1 || missing+=(graphviz)   # renders docs/architecture.svg (checked by a test)
  # promtool checks deploy/monitoring's rules; the integration tests run the prometheus service.
  # Without its recommends (node-exporter, which nothing here uses).
  command -v promtool >/dev/null 2>&1 || bare+=(prometheus)
fi
# Debian's Python splits venv (and ensurepip) into pythonX.Y-venv.
"$PY" -c "import ensurepip, venv" 2>/dev/null || missing+=("python$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv")
if [ ${#missing[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} ${bare[*]}"
  $SUDO apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ${#bare[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
  fi
fi

stamp=$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "bootstrap: creating .venv (orchestrator + dev tools)"
  "$PY" -m venv .venv
  # requirements.lock: the versions the tests passed with (celery, kombu and billiard above all:
  # workers/ relies on their internals, and tests/unit/test_pins.py guards each reliance).
  .venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev]" \
    2> >(grep -v "is ignored: it is neither" >&2)
  echo "$stamp" > .venv/.stamp
fi

airflow_stamp="$AIRFLOW_SPEC $( { [ -f "$AIRFLOW_CONSTRAINTS" ] && cat "$AIRFLOW_CONSTRAINTS" || echo "$AIRFLOW_CONSTRAINTS"; } | sha256sum | cut -c1-16)"
if [ ! -x .venv-airflow/bin/airflow ] || [ "$(cat .venv-airflow/.stamp 2>/dev/null)" != "$airflow_stamp" ]; then
  echo "bootstrap: creating .venv-airflow ($AIRFLOW_SPEC under $AIRFLOW_CONSTRAINTS, for the local stack)"
  "$PY" -m venv --clear .venv-airflow
  if [ "$AIRFLOW_CONSTRAINTS" = requirements-airflow.lock ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "bootstrap: note: requirements-airflow.lock was made on Python 3.11; if pip cannot meet it on $("$PY" --version)," >&2
    echo "  set AIRFLOW_CONSTRAINTS to Airflow's constraints file for your Python (see docs/setup.md)" >&2
  fi
  # With Airflow, its drivers for PostgreSQL (the tests' and the benchmarks' Airflow database).
  .venv-airflow/bin/pip install -q --disable-pip-version-check -c "$AIRFLOW_CONSTRAINTS" "$AIRFLOW_SPEC" \
    psycopg2-binary asyncpg 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$airflow_stamp" > .venv-airflow/.stamp
fi
