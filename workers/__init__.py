"""The Celery side of the orchestrator: ``celery -A workers worker -l info``."""

import os

from workers.metrics import prepare

prepare(os.environ)  # before prometheus-client is first imported (workers.metrics)

from workers.app import app  # noqa: E402

__all__ = ["app"]
