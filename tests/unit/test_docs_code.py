"""The docs quote the code as it is: the messages they show are messages the code produces, and
what they pass to ``submit_backfill`` are its parameters.

**Which quotes are messages.** In README.md and docs/*.md:

- inline code in the prose (outside fenced blocks) holding at least two plain words (tokens of
  lowercase letters only, such as ``is`` or ``reached``), unless it is a command (``backfill
  CMD``, ``celery``, ``python``, ``make``, ``docker``, ``kubectl``, ...) or starts with an
  environment variable (``VAR=...``); a leading ``Error: `` is click's prefix to a CLI error;
- a double-quoted string in a mermaid diagram (what a window records as it waits);
- in a plain fenced block (printed output), what follows ``waiting: `` (``backfill status``) or
  ``reason=`` (the worker's log).

Text of other software the rule picks up (a Redis setting) is in ``NOT_OURS``.

**What matches.** Every string literal and f-string in backfill/ and workers/ (read with ``ast``,
docstrings aside) is a template whose ``{...}`` stand for any value. A quote matches when a text
the template renders contains it, the quote's ``...``, ``…`` and ``<...>`` standing for any part
of the message (the docs' ``R``, ``N``, ``'x'`` are values: a ``{...}`` takes them). A ``{...}``
stands for a value (an id, a date, a list), so the text it takes from the quote may not hold two
plain words in a row, unless that text is itself a message (``DAG locked by {...}`` takes
``backfill B (window starting W)``, which ``backfill {bf} (window starting {start})`` renders);
and at least ``MIN_LITERAL`` of the quote's characters must be the code's own text, a message
within the message counting (the characters of words holding a digit, such as dates, ids and
numbers, are not counted).
"""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from pathlib import Path

import click

from backfill.cli import cli
from backfill.history import ON_CONFLICT
from backfill.request import ON_FAILURE, REPROCESS
from backfill.windows import BATCHES

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = sorted([*(REPO / "backfill").rglob("*.py"), *(REPO / "workers").rglob("*.py")])

NOT_OURS = {
    "appendonly yes",  # a Redis setting (docs/setup.md)
}
MIN_LITERAL = 0.4
_COMMAND = re.compile(
    r"(?:celery|python3?|make|docker|kubectl|pip|dot|airflow|astro|gcloud|kustomize|check-jsonschema"
    r"|kubernetes-validate|cd|cp|export|\.venv/\S+)(?:\s|$)|[A-Z_]+=\S"
)
_WILDCARD = re.compile(r"(\.\.\.|…|<[^<>\n]+>)")

STAR = None  # any text, in a template or a quote
Pattern = tuple[str | None, ...]


def _plain_words(text: str) -> list[bool]:
    return [bool(re.fullmatch(r"[a-z]+", word)) for word in text.split()]


# -- the code's messages --------------------------------------------------------------------


@cache
def templates() -> tuple[tuple[Pattern, frozenset[str]], ...]:
    """Every string literal and f-string of the code, as a pattern, with its 5-grams."""
    found: set[Pattern] = set()
    for path in CODE:
        tree = ast.parse(path.read_text())
        skip = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # docstrings
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                skip.update(id(value) for value in node.values)
                pattern: list[str | None] = []
                for value in node.values:
                    if isinstance(value, ast.Constant):
                        pattern += value.value
                    elif not pattern or pattern[-1] is not STAR:
                        pattern.append(STAR)
                found.add(tuple(pattern))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                found.add(tuple(node.value))
    return tuple((p, _grams(p)) for p in sorted(found, key=_text))


def _text(pattern: Pattern) -> str:
    return "".join("\0" if c is STAR else c for c in pattern)


def _grams(pattern: Pattern, k: int = 5) -> frozenset[str]:
    text = _text(pattern)
    return frozenset(g for g in (text[i : i + k] for i in range(len(text) - k + 1)) if "\0" not in g)


# -- matching ---------------------------------------------------------------------------------

_NO = -(10**9)


def _align(template: Pattern, quote: Pattern) -> tuple[int, list[str]]:
    """The alignment of ``template`` and ``quote`` that matches most characters literally: that
    count (negative: none), and the texts the template's ``{...}`` take from the quote. A quote's
    wildcard may take any part of the template, placeholders included; a ``{...}`` takes only
    characters of the quote, and not across a wildcard of the quote."""
    n, m = len(template), len(quote)
    # free[i][j]: the best score from template[i:], quote[j:]; taking[i][j]: the same when
    # template[i] is a {...} that has taken quote[j - 1] (it may not then skip a wildcard).
    free = [[_NO] * (m + 2) for _ in range(n + 2)]
    taking = [[_NO] * (m + 2) for _ in range(n + 2)]
    free[n][m] = 0
    for i in range(n, -1, -1):
        t = template[i] if i < n else ""
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            q = quote[j] if j < m else ""
            both = _NO
            if t is not STAR and q is not STAR and i < n and j < m and t == q and free[i + 1][j + 1] >= 0:
                both = free[i + 1][j + 1] + 1
            if t is STAR and i < n:
                both = max(both, free[i + 1][j])  # the {...} ends
                if q is not STAR and j < m:
                    both = max(both, taking[i][j + 1])  # the {...} takes quote[j]
            only_taking = both
            if q is STAR and j < m:
                if i < n:
                    both = max(both, free[i + 1][j])  # the wildcard takes template[i]
                    only_taking = max(only_taking, free[i + 1][j])
                both = max(both, free[i][j + 1])  # the wildcard ends
            free[i][j], taking[i][j] = both, only_taking
    if free[0][0] < 0:
        return _NO, []
    # Walk the best alignment back to collect what each {...} took.
    taken: list[str] = []
    i = j = 0
    table = free
    while (i, j) != (n, m):
        t = template[i] if i < n else ""
        q = quote[j] if j < m else ""
        here = table[i][j]
        if t is not STAR and q is not STAR and i < n and j < m and t == q and free[i + 1][j + 1] + 1 == here:
            i, j, table = i + 1, j + 1, free
        elif t is STAR and i < n and q is not STAR and j < m and taking[i][j + 1] == here:
            if table is taking:
                taken[-1] += str(q)
            else:
                taken.append(str(q))
            j, table = j + 1, taking
        elif i < n and (t is STAR or q is STAR) and free[i + 1][j] == here:
            i, table = i + 1, free  # the {...} ends, or the wildcard takes template[i]
        else:
            j, table = j + 1, free
    return free[0][0], taken


def _pattern(quote: str, *, part: bool) -> Pattern:
    """A quote as a pattern; ``part``: it may be any part of a message."""
    pattern: list[str | None] = [STAR] if part else []
    for piece in _WILDCARD.split(quote):
        if _WILDCARD.fullmatch(piece):
            if not pattern or pattern[-1] is not STAR:
                pattern.append(STAR)
        else:
            pattern += piece
    if part and pattern[-1] is not STAR:
        pattern.append(STAR)
    return tuple(pattern)


def _wording(text: str) -> bool:
    """Two plain words in a row: wording, not a value."""
    plain = _plain_words(text)
    return any(a and b for a, b in pairwise(plain))


@cache
def produced(quote: str, part: bool = True, depth: int = 1) -> bool:
    """Some template of the code renders a text that holds ``quote`` (the whole of it, if not
    ``part``), as the module's doc says; a value may be a message itself, ``depth`` levels deep."""
    message = quote.removeprefix("Error: ")
    pattern = _pattern(message, part=part)
    counted = " ".join(w for w in _WILDCARD.sub(" ", message).split() if not re.search(r"\d", w))
    needed = max(1.0, MIN_LITERAL * len(counted))
    grams = _grams(pattern)
    shared = {t: len(grams & t_grams) for t, t_grams in templates() if not grams or grams & t_grams}
    for template in sorted(shared, key=shared.__getitem__, reverse=True):  # likeliest first
        score, taken = _align(template, pattern)
        if score < 0:
            continue
        for value in taken:
            if depth > 0 and len(value.strip()) >= 8 and produced(value.strip(), False, depth - 1):
                score += len(value.strip())  # a message within the message
            elif _wording(value):
                break
        else:
            if score >= needed:
                return True
    return False


# -- the docs' quotes ------------------------------------------------------------------------


def _blocks(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The prose of a Markdown text, and its fenced blocks as (language, body)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.strip() == "```":
            blocks.append((fence, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def _is_command(text: str) -> bool:
    words = text.split()
    return bool(_COMMAND.match(text)) or (words[0] == "backfill" and len(words) > 1 and words[1] in cli.commands)


def quoted_messages() -> Iterator[tuple[str, str]]:
    """(doc, quote) for every quote the docs show as a message (see the module's doc)."""
    for doc in DOCS:
        prose, blocks = _blocks(doc.read_text())
        for span in re.findall(r"`([^`]+)`", prose):
            quote = " ".join(span.split())
            if sum(_plain_words(quote)) >= 2 and not _is_command(quote):
                yield doc.name, quote
        for language, body in blocks:
            if language == "mermaid":
                yield from ((doc.name, q) for q in re.findall(r'"([^"\n]+)"', body))
            elif language == "":
                yield from ((doc.name, q.strip()) for q in re.findall(r"(?:waiting: |reason=)(.+)", body))


def test_every_message_quoted_in_the_docs_is_one_the_code_produces() -> None:
    quotes = [(doc, quote) for doc, quote in quoted_messages() if quote not in NOT_OURS]
    assert [(doc, quote) for doc, quote in quotes if not produced(quote)] == []
    assert len({q for _, q in quotes}) >= 50, "the rule no longer finds the docs' messages"


def test_the_rule_picks_messages_only() -> None:
    quotes = {quote for _, quote in quoted_messages()}
    # What the docs quote as messages, in each form the rule reads...
    assert {
        "DAG busy: run R is running",  # prose, and a mermaid string
        "Error: Redis at ... is unreachable",  # a CLI error
        "max_parallel_dags=N reached",  # a mermaid string
        "DAG busy: run scheduled__2024-02-05T00:00:00+00:00 is running",  # backfill status
        "DAG locked by backfill bf-20261121-100152-6b06eb (window starting 2005-01-02T00:00:00+00:00)",  # the log
    } <= quotes
    # ...and no command, option, setting or JSON.
    assert not [q for q in quotes if re.match(r"(backfill [a-z]+ |celery |make |--|\{|\[)", q)]
    assert quotes >= NOT_OURS, "NOT_OURS lists text the docs no longer quote"


def test_the_check_fails_on_a_message_the_code_does_not_produce() -> None:
    assert produced("DAG busy: run R is running")
    assert produced("start: cannot read 'next week' as a date")
    assert produced("DAG locked by backfill B (window starting W)")  # a value that is a message
    assert not produced("DAG is busy: run R is running")
    assert not produced("start: could not read 'next week' as a date")
    assert not produced("must be at least three times the longest wait (1000.0 s)")  # a {...} would take words
    assert not produced("DAG locked by backfill B (window beginning W)")


def test_click_prefixes_cli_errors_with_error() -> None:
    out = io.StringIO()
    click.ClickException("Redis at h:1 is unreachable").show(file=out)
    assert out.getvalue() == "Error: Redis at h:1 is unreachable\n"


# -- submit_backfill's parameters -------------------------------------------------------------


@cache
def task_parameters() -> tuple[str, ...]:
    """``submit_backfill``'s parameters (``self`` aside), read from workers/tasks.py with ``ast``:
    importing it builds the Celery app and reads the worker's settings."""
    tree = ast.parse((REPO / "workers" / "tasks.py").read_text())
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "submit_backfill"]
    assert fn.args.kwarg is None and fn.args.vararg is None, "submit_backfill takes any argument"
    names = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]]
    assert names[0] == "self"
    return tuple(names[1:])


def _calls(text: str) -> Iterator[ast.Call]:
    """Every ``submit_backfill(...)``, ``.delay(...)`` or ``.apply_async(...)`` call in ``text``."""
    for found in re.finditer(r"submit_backfill(?:\.delay|\.apply_async|\.s|\.si)?\(", text):
        depth, end = 0, found.end() - 1
        for end in range(found.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        call = ast.parse(text[found.start() : end + 1], mode="eval").body
        assert isinstance(call, ast.Call)
        yield call


def documented_arguments() -> Iterator[tuple[str, str, str]]:
    """(doc, where, argument) for every argument the docs pass to ``submit_backfill``: in calls
    (keywords; positional names must sit at their place), in ``--kwargs '{...}'`` of the celery
    CLI and in the ``kwargs `{...}``` rows of the bad-input table."""
    params = task_parameters()
    for doc in DOCS:
        text = doc.read_text()
        for call in _calls(text):
            where = ast.unparse(call)
            for keyword in call.keywords:
                if keyword.arg == "kwargs" and isinstance(keyword.value, ast.Dict):  # apply_async(kwargs={...})
                    yield from ((doc.name, where, ast.literal_eval(k)) for k in keyword.value.keys if k is not None)
                elif keyword.arg is not None:
                    yield doc.name, where, keyword.arg
            for place, arg in enumerate(call.args):
                if isinstance(arg, ast.Name):  # submit_backfill(dags, start, ...): the parameters in order
                    ok = place < len(params) and params[place] == arg.id
                    yield doc.name, where, arg.id if ok else f"{arg.id} (not in its place)"
        for blob in re.findall(r"--kwargs '(\{.*?\})'", text) + re.findall(r"kwargs `(\{[^`]*\})`", text):
            yield from ((doc.name, blob, key) for key in json.loads(blob))


def test_every_argument_the_docs_pass_to_submit_backfill_is_a_parameter() -> None:
    arguments = list(documented_arguments())
    assert [a for a in arguments if a[2] not in task_parameters()] == []
    assert len(arguments) >= 30, "the docs' calls are no longer found"


def _readme_options() -> tuple[list[str], list[str], str]:
    """README's list of submit options: those shared with ``backfill submit``, those of
    ``submit_backfill`` only, and the sentence that says where the CLI has the latter."""
    text = " ".join((REPO / "README.md").read_text().split())
    shared = re.search(r"Options of `submit_backfill` \(and `backfill submit`\): (.*?) `submit_backfill` also", text)
    only = re.search(r"`submit_backfill` also takes (.*?); (the CLI has [^.]*)\.", text)
    assert shared and only, "README.md: the options of submit_backfill are not where this test looks"

    def names(part: str) -> list[str]:
        return re.findall(r"`([a-z_]+)(?:=[^`]*)?`", part)

    return names(shared.group(1)), names(only.group(1)), only.group(2)


def test_the_readme_lists_every_parameter_of_submit_backfill_and_only_those() -> None:
    shared, only, _ = _readme_options()
    (example,) = [c for c in _calls((REPO / "README.md").read_text()) if len(c.keywords) >= 4]
    in_example = [k.arg for k in example.keywords]
    assert sorted([*in_example, *shared, *only]) == sorted(task_parameters())


def test_the_options_the_readme_shares_with_backfill_submit_are_the_clis() -> None:
    shared, only, cli_has = _readme_options()
    submit = cli.commands["submit"]
    cli_names = {p.name for p in submit.params} - {"timeout", "as_json"}  # the command's own
    # Every option of `backfill submit` is one of the task's, and the README's shared ones are them all.
    assert cli_names <= set(task_parameters())
    assert set(shared) == cli_names - {"dags", "start", "end", "batch"}
    # The task's own options are not the CLI's submit; the commands the README names for them exist.
    assert not set(only) & cli_names
    for command in re.findall(r"`backfill ([a-z]+)", cli_has):
        assert command in cli.commands, cli_has


def test_the_values_the_readme_lists_are_the_ones_accepted() -> None:
    text = " ".join((REPO / "README.md").read_text().split())
    choices = {"on_failure": ON_FAILURE, "reprocess": REPROCESS, "on_conflict": ON_CONFLICT}
    for name, accepted in choices.items():
        (listed,) = re.findall(rf'`{name}=("[a-z]+"(?: \| "[a-z]+")*)`', text)
        assert tuple(re.findall(r'"([a-z]+)"', listed)) == accepted, name
    (batches,) = re.findall(r"batch=\"[a-z]+\",\s*# ([a-z |]+)", (REPO / "README.md").read_text())
    assert tuple(batches.replace(" ", "").split("|")) == BATCHES
