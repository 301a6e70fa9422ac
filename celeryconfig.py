"""Celery and orchestrator configuration, read from environment variables.

Every variable, with its default (docs/setup.md has the full reference):

=============================  ===========================  =========================================
variable                       default                      meaning
=============================  ===========================  =========================================
BACKFILL_REDIS_URL             redis://localhost:6379/0     broker, results, locks and records
BACKFILL_REDIS_URL_FILE        (none)                       file holding that URL (a mounted secret)
AIRFLOW_API_URL                http://localhost:8080        Airflow's API server (no /api/v2)
AIRFLOW_USERNAME               (none)                       user for POST /auth/token; none = no auth
AIRFLOW_PASSWORD               (none)                       its password (or AIRFLOW_PASSWORD_FILE)
AIRFLOW_PASSWORD_FILE          (none)                       file holding the password
AIRFLOW_TIMEOUT                10                           seconds per Airflow request
AIRFLOW_READ_ATTEMPTS          3                            tries of a read on a transient error, in the call
AIRFLOW_TOKEN                  (none)                       a static bearer token (instead of a user)
AIRFLOW_TOKEN_FILE             (none)                       file holding a bearer token, re-read when it changes
AIRFLOW_CA_BUNDLE              (none)                       PEM file of the CAs to trust for Airflow's TLS
AIRFLOW_VERIFY_SSL             true                         false: no TLS certificate check (tests only)
AIRFLOW_EXTRA_HEADERS          (none)                       JSON object of headers sent with every request
BACKFILL_MAX_WINDOWS           100000                       cap on windows per backfill (all DAGs)
BACKFILL_SEGMENT_SIZE          20                           windows per chain message
BACKFILL_LOCK_TTL              300                          seconds a per-DAG lock outlives its holder
BACKFILL_LATE_MARGIN           60                           how late a countdown may run (lock_ttl counts it)
BACKFILL_POLL_MIN              0.05                         shortest wait between looks at a run
BACKFILL_POLL_MAX              60                           longest wait between looks at a run
BACKFILL_BUSY_POLL             3                            wait between looks at a busy/locked DAG
BACKFILL_WATCH_EVERY           1                            longest between two rounds of the watcher (0: off)
BACKFILL_WATCH_FALLBACK        100                          a parked window's own look, should the watcher miss its run
BACKFILL_RETRY_MAX             60                           longest backoff after a transient error
BACKFILL_GIVE_UP_AFTER         3600                         a window fails after an outage (or a stall) this long
BACKFILL_VISIBILITY_TIMEOUT    1800                         Redis redelivers unacked messages after it
BACKFILL_RECORD_TTL            2592000                      seconds a finished backfill's record stays
BACKFILL_KEY_PREFIX            backfill                     prefix of every Redis key we write
BACKFILL_MAX_PARALLEL_DAGS     0                            DAGs of a backfill running at once (0: all)
BACKFILL_GLOBAL_MAX_RUNS       0                            windows in flight, all backfills (0: no cap)
BACKFILL_LOG_FORMAT            text                         json: one JSON object per log line
BACKFILL_REDIS_SOCKET_TIMEOUT  10                           seconds a Redis command may take
BACKFILL_SLOT_STALE            0                            a throttle waiter unseen this long loses its place (0: auto)
BACKFILL_NOTIFY_URL            (none)                       webhook of backfills without their own notify (a secret)
BACKFILL_NOTIFY_URL_FILE       (none)                       file holding that URL (a mounted secret)
BACKFILL_METRICS_PORT          (none)                       the worker serves Prometheus /metrics on this port
=============================  ===========================  =========================================
"""

from backfill.settings import Settings

backfill_settings = Settings.from_env()

broker_url = backfill_settings.redis_url
result_backend = backfill_settings.redis_url
# A waiting window is a countdown message held unacked by a worker: it must come back only
# if that worker died, never while it still waits. Settings checks the waits stay below this.
# Redis hands a dead worker's messages back from live workers' periodic sweeps; kombu's
# default sweep runs only every ~100 s (10 s x throttle 10). Sweep every tenth of the timeout
# instead (1..60 s, a cheap ZRANGE), so windows resume about 1.1 x the timeout after a crash.
broker_transport_options = {
    "visibility_timeout": backfill_settings.visibility_timeout,
    "unacked_restore_interval": max(1, min(60, backfill_settings.visibility_timeout // 10)),
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"visibility_timeout": backfill_settings.visibility_timeout}
visibility_timeout = backfill_settings.visibility_timeout
broker_connection_retry_on_startup = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 7 * 86400
result_extended = True

# A broker restart must not drop a window: every publish (a poll's retry, a chain's next link,
# a new segment) retries for about two minutes before giving up (the default is ~2 s), and
# result writes retry too. run_window requeues rather than drops a retry it cannot publish.
task_publish_retry_policy = {"max_retries": 40, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 3}
result_backend_always_retry = True
result_backend_max_retries = 40
result_backend_max_sleep_between_retries_ms = 3000

# A task whose worker dies is redelivered, not lost; every task is safe to repeat.
task_acks_late = True
task_reject_on_worker_lost = True
# Each process gets its next message as soon as it is free: with 1, a process waited for the
# main process's ack and fetch of the next message after each task, idle 40 % of a burst of a
# thousand runs ending at once (bench B4: longest handoff 2.4-3.3 s with 1, 1.8 s with 4). The
# cost: a worker holds up to 4 x concurrency messages. Most steps take milliseconds (waits are
# countdowns or parked), but a webhook POST or a slow Airflow holds a process for seconds, and
# what that worker fetched waits for its other processes, not for an idle replica. Fetched
# messages are unacknowledged (acks_late): a warm stop hands them back at once, a hard kill
# after the visibility timeout (docs/setup.md), and a step is safe to repeat.
worker_prefetch_multiplier = 4
task_track_started = True

# Task events (received, started, retried, succeeded, failed) are what Flower and `celery
# events` show. Workers start with them off: with hundreds of windows in flight, publishing four
# events per look at a run was a third of a worker's CPU (bench B4). Flower turns them on in every
# worker when it starts (its --enable_events, on by default) and keeps them on while it runs;
# `celery -A workers control enable_events` does it by hand. No "task-sent" events either.
worker_send_task_events = False
task_send_sent_event = False

timezone = "UTC"
enable_utc = True
