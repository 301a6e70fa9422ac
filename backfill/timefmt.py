"""How instants and durations are written for people (status, report): one place, one style."""

from __future__ import annotations

from datetime import UTC, datetime


def clock(ts: float) -> str:
    """A Unix time as UTC wall time, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def span(seconds: float, *, digits: int = 1) -> str:
    """A duration in the unit a person reads best: seconds below 2 min, minutes below 2 h."""
    if seconds < 120:
        return f"{seconds:.{digits}f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
