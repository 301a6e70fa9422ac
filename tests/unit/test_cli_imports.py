"""Commands that only read the record do not load the worker: no Celery app, none of the
worker's process-wide patches (kombu's transport, the retry traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from click.testing import CliRunner
from backfill.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"exit": result.exit_code, "out": result.output,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "workers"))}))
"""


def run(redis_url: str, *args: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "BACKFILL_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_read_only_commands_do_not_load_celery_or_the_worker(redis_url: str, scratch_redis) -> None:
    for args in (["status", "bf-nope"], ["report", "bf-nope"], ["list"], ["throttle"]):
        got = run(redis_url, *args)
        assert got["loaded"] == [], (args, got)
    got = run(redis_url, "status", "bf-nope")
    assert got["exit"] == 2 and "no such backfill" in got["out"], got
