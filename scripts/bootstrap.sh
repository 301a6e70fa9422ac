#!/usr/bin/env bash
# Set up everything this repo needs on a fresh machine; safe to run again (it skips what is done).
# - redis-server, postgresql (the tests' Airflow database), chromium (headless, for the HTML
#   report's browser test) and graphviz from the system's packages if they are missing;
# - .venv: the orchestrator with its dev tools (pytest, ruff);
# - .venv-airflow: apache-airflow 3.3 (and its PostgreSQL drivers) for the local stack only
#   (not an orchestrator dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
AIRFLOW_SPEC=${AIRFLOW_SPEC:-apache-airflow==3.3.*}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)   # renders docs/architecture.svg (checked by a test)
# The tests' and the benchmarks' Airflow runs on a private PostgreSQL, as production runs it.
{ [ -d /usr/lib/postgresql ] || command -v initdb >/dev/null 2>&1; } || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
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

if [ ! -x .venv-airflow/bin/airflow ] || [ "$(cat .venv-airflow/.stamp 2>/dev/null)" != "$AIRFLOW_SPEC" ]; then
  echo "bootstrap: creating .venv-airflow ($AIRFLOW_SPEC, for the local stack)"
  "$PY" -m venv .venv-airflow
  .venv-airflow/bin/pip install -q --disable-pip-version-check "$AIRFLOW_SPEC" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$AIRFLOW_SPEC" > .venv-airflow/.stamp
fi

# Airflow's drivers for PostgreSQL (the tests' and the benchmarks' Airflow database).
if ! .venv-airflow/bin/python -c "import psycopg2, asyncpg" 2>/dev/null; then
  echo "bootstrap: installing psycopg2-binary and asyncpg into .venv-airflow"
  .venv-airflow/bin/pip install -q --disable-pip-version-check psycopg2-binary asyncpg 2> >(grep -v "is ignored: it is neither" >&2)
fi
