"""Every error the orchestrator raises on purpose, under one root.

::

    BackfillError
    ├── InputError               bad input: refused before anything is triggered
    ├── AirflowError             talking to Airflow's REST API
    │   ├── AirflowUnavailable   transient: connection refused, timeout, 5xx, 408, 429 (retried)
    │   ├── AirflowAuthError     401/403: wrong credentials or missing permission
    │   ├── AirflowTLSError      the TLS handshake or certificate check failed
    │   ├── AirflowNotFound      404: unknown DAG or run
    │   ├── AirflowConflict      409: the run id or the logical date is taken
    │   └── AirflowRejected      any other 4xx that cannot succeed by retrying
    ├── WindowFailed             a window's run ended failed (stops its DAG by default)
    └── BackfillNotFound         no record for that backfill id

Messages name the input or the object at fault, so that they can be shown to a user as they
are: the CLI prints ``str(error)`` and exits with ``error.exit_code``.
"""

from __future__ import annotations


class BackfillError(Exception):
    """Root of every error raised on purpose by the orchestrator."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    # Celery rebuilds exceptions from their args; keep the message as the only arg.
    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


class InputError(BackfillError):
    """Bad input: an unknown DAG, a date that does not parse, start after end..."""

    exit_code = 2


class AirflowError(BackfillError):
    """A call to Airflow's REST API did not succeed."""

    exit_code = 3
    status: int | None = None


class AirflowUnavailable(AirflowError):
    """Connection refused, timeout or 5xx: worth retrying with backoff."""


class AirflowAuthError(AirflowError):
    """401 or 403: the credentials are wrong or lack a permission."""


class AirflowTLSError(AirflowError):
    """The TLS handshake with Airflow failed (an untrusted certificate, a wrong host name):
    retrying will not help; AIRFLOW_CA_BUNDLE or AIRFLOW_VERIFY_SSL will."""


class AirflowNotFound(AirflowError):
    """404: the DAG or the run does not exist."""


class AirflowConflict(AirflowError):
    """409: a run with that run id or logical date exists already."""


class AirflowRejected(AirflowError):
    """Another 4xx: the request itself is wrong and retrying will not help."""


class WindowFailed(BackfillError):
    """A window's Airflow run ended failed; with ``on_failure="stop"`` its DAG stops."""

    exit_code = 4


class BackfillNotFound(BackfillError):
    """No backfill record under that id in Redis."""

    exit_code = 2


def describe(exc: BaseException) -> str:
    """An exception as a log line or a recorded reason shows it: its type and message
    (``TimeoutError('Timeout reading from socket')``). redis-py 8's errors repr as their category
    and type only (``network:TimeoutError``), which says nothing of what failed."""
    return f"{type(exc).__name__}({str(exc)!r})"
