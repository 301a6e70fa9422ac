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
# The worker's liveness (Flower, run from the same image, overrides it in docker-compose.yaml).
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
  CMD celery -A workers inspect ping -d "celery@$HOSTNAME" --timeout 10 || exit 1
CMD ["celery", "-A", "workers", "worker", "-l", "info"]
