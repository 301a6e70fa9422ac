"""Webhook notifications: a JSON POST (Slack-compatible: its ``text`` is the message) when a
backfill ends, when a DAG's part ends failed, and, if asked, on each failed window.

Where to: the backfill's ``notify`` (``submit_backfill(notify="https://...")`` or
``notify={"url": "https://...", "failed_windows": True}``), else ``BACKFILL_NOTIFY_URL`` for
every backfill. A webhook's URL is its secret (Slack's carry the token in the path): it is
never logged or shown, only its scheme and host (``redact``).

Sending is the ``backfill.notify`` task's (``workers.tasks``): the backfill only publishes it,
so a slow or failing webhook never holds a window; the task retries a failed POST with backoff
(``ATTEMPTS`` tries over about two minutes), then logs that it gave up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from backfill.errors import InputError

ATTEMPTS = 6  # tries of one notification: 0, 2, 4, 8, 16, 32 s after the event (with jitter)
TIMEOUT = 10.0  # seconds per POST
EVENTS = ("backfill_ended", "dag_failed", "window_failed")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    failed_windows: bool = False


def redact(url: str) -> str:
    """What may be shown of a webhook URL: its scheme and host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an unparsable URL)"
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{port}' if port else ''}/..."


def notification_id(backfill_id: str, event: str, dag: str | None = None, window: str | None = None) -> str:
    """The notification's stable id (the body's ``id``): the same for every send of it, so
    that the sender, and a receiver, can tell a repeat."""
    return ":".join((backfill_id, event, dag or "", window or ""))


def redacted(notify: Any) -> Any:
    """``notify`` as it may be shown (its URL redacted), whatever shape it was given in."""
    if isinstance(notify, str):
        return redact(notify)
    if isinstance(notify, dict) and isinstance(notify.get("url"), str):
        return {**notify, "url": redact(notify["url"])}
    return notify


def check_notify(value: Any) -> dict[str, Any] | None:
    """``notify`` as given (None, a URL, or ``{"url": ..., "failed_windows": bool}``), checked."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise InputError(
            f'notify: expected a webhook URL or {{"url": ..., "failed_windows": true}}, got {type(value).__name__}'
        )
    unknown = sorted(set(value) - {"url", "failed_windows"})
    if unknown:
        raise InputError(f"notify: unknown key {unknown[0]!r} (known: url, failed_windows)")
    url = value.get("url")
    if not isinstance(url, str) or not check_url(url):
        shown = redact(url) if isinstance(url, str) and "://" in url else f"a {type(url).__name__}"
        raise InputError(f"notify: expected an http:// or https:// URL with a host, got {shown}")
    failed_windows = value.get("failed_windows", False)
    if not isinstance(failed_windows, bool):
        raise InputError(f"notify: failed_windows must be true or false, got {failed_windows!r}")
    return {"url": url, "failed_windows": failed_windows}


def check_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port out of range)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def target(notify: dict[str, Any] | None, default_url: str) -> Target | None:
    """Where a backfill's notifications go: its own webhook, else the global one, else nowhere."""
    if notify:
        return Target(notify["url"], bool(notify.get("failed_windows")))
    return Target(default_url) if default_url else None


def message(event: str, backfill_id: str, *, state: str, dag: str | None = None, window: str | None = None,
            reason: str | None = None, counts: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """The JSON body: ``text`` for a chat, the facts as fields for a program."""
    done = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in (counts or {}).items() if n)
    if event == "backfill_ended":
        text = f"Backfill {backfill_id} ended {state}" + (f": {done}" if done else "")
    elif event == "dag_failed":
        text = f"Backfill {backfill_id}: DAG {dag} ended {state}" + (f" ({reason})" if reason else "")
    else:
        text = f"Backfill {backfill_id}: DAG {dag} window {window} failed" + (f": {reason}" if reason else "")
    body: dict[str, Any] = {"text": text, "event": event, "backfill_id": backfill_id, "state": state}
    body.update({k: v for k, v in (("dag", dag), ("window", window), ("reason", reason), ("counts", counts)) if v})
    return body


class WebhookError(Exception):
    """A POST that did not get a 2xx; ``retry``: whether trying again may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def post(url: str, body: dict[str, Any], *, timeout: float = TIMEOUT, http: Any | None = None) -> int:
    """POST ``body`` as JSON; returns the status. Errors name the host only, never the URL."""
    pool = http or urllib3.PoolManager()
    try:
        resp = pool.request(
            "POST", url, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
            timeout=timeout, retries=False,
        )  # fmt: skip
    except urllib3.exceptions.HTTPError as exc:
        raise WebhookError(f"webhook {redact(url)} unreachable ({type(exc).__name__})", retry=True) from None
    if 200 <= resp.status < 300:
        return int(resp.status)
    transient = resp.status >= 500 or resp.status in (408, 429)
    raise WebhookError(f"webhook {redact(url)} answered HTTP {resp.status}", retry=transient)
