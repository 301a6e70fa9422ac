"""The docs name only options that exist: every `backfill CMD ... --option` shown anywhere in
README.md and docs/*.md (in code blocks or inline) is an option of that command, and every
exit code the docs promise is one the code returns."""

from __future__ import annotations

import re
from pathlib import Path

import click

from backfill.cli import EXIT_CANCELLED, EXIT_FAILED, cli
from backfill.errors import AirflowError, InputError

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_backfill_option_in_the_docs_exists() -> None:
    wrong = []
    for doc in DOCS:
        for line in re.findall(r"backfill [a-z]+[^`\n|]*", doc.read_text()):
            name = line.split()[1]
            command = cli.commands.get(name)
            if command is None:
                continue  # prose ("backfill orchestrator ...")
            known = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts}
            options = re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)
            wrong += [(doc.name, name, opt) for opt in options if opt not in known]
    assert wrong == []


def test_the_exit_codes_the_docs_promise_are_the_codes_returned() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    assert InputError("x").exit_code == 2 and "2 bad input" in text
    assert AirflowError("x").exit_code == 3 and "3 Airflow refused or unreachable" in text
    assert f"{EXIT_FAILED} if it\nfailed" in text and f"{EXIT_CANCELLED} if it was cancelled" in text
