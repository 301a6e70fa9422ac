"""The Celery application, configured from ``celeryconfig.py``."""

from celery import Celery

app = Celery("backfill", include=["workers.tasks"])
app.config_from_object("celeryconfig")
