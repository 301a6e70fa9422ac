# The two commands of the README: `make demo` and `make test`. Both set up what they need.
.PHONY: setup demo test bench compat faults lint format

setup:
	@bash scripts/bootstrap.sh --tests

# ARGS=--keep leaves the stack running until Ctrl-C (Flower, the Airflow UI, backfill status ...).
demo:
	@bash scripts/bootstrap.sh
	.venv/bin/python scripts/demo.py $(ARGS)

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/python -m pytest -q

# The benchmarks (bench/, about 35 minutes): exits non-zero when a target is missed and writes
# the table into docs/performance.md.
bench: setup
	@bash scripts/bootstrap.sh
	.venv/bin/python -m bench --write-docs

# The fault-injection harness's long run: 10,000 random schedules (docs/reliability.md); exits
# non-zero on a violation, printing the seed that replays it. make test runs 300 and the cases.
faults: setup
	.venv/bin/python -m faults --schedules 10000

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# The core integration tests against Airflow 3.0, 3.1, 3.2 and 3.3 (about 5 minutes each);
# writes docs/compatibility.md.
compat: setup
	.venv/bin/python scripts/compat.py
