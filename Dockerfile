# The orchestrator's image: Celery worker (default command) and Flower.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py requirements.lock ./
COPY backfill ./backfill
COPY workers ./workers
# requirements.lock: the versions the tests passed with (workers/ relies on celery's internals).
RUN pip install --no-cache-dir -c requirements.lock . && useradd --system --uid 10001 backfill
USER backfill
CMD ["celery", "-A", "workers", "worker", "-l", "info"]
