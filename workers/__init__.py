"""The Celery side of the orchestrator: ``celery -A workers worker -l info``."""

from workers.app import app

__all__ = ["app"]
