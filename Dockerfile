# The orchestrator's image: Celery worker (default command) and Flower.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY backfill ./backfill
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --system --uid 10001 backfill
USER backfill
CMD ["celery", "-A", "workers", "worker", "-l", "info"]
