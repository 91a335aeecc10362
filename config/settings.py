"""Settings for the API and the workers, all from the environment.

Both processes read this module (the workers through Celery's ``CELERY_*``
namespace), so a setting has one name and one default everywhere. Nothing here
imports TensorFlow. See ``.env.example`` for every variable.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from common.apikeys import Defaults, parse_api_keys
from common.env import (
    ConfigurationError,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_secret,
    env_str,
)
from common.imageurl import parse_image_url_allowed
from common.queues import queue_for
from common.redisconn import RedisTarget

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("RECOGNITION_VAR_DIR", str(BASE_DIR / "var")))

# Nothing is signed with it (no sessions, no cookies), so a per-process random key is
# safe when none is configured; set one anyway in production to silence checks.
# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
SECRET_KEY = env_secret("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc builds, served by recognition_api/apidocs.py
    "recognition_api",
]
MIDDLEWARE = [
    "recognition_api.middleware.RequestIdMiddleware",
    "recognition_api.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "recognition_api.urls"
WSGI_APPLICATION = "recognition_api.wsgi.application"
# Templates of the installed apps (the web page at /, recognition_api/templates/); no context
# processors: the pages use no request, user or CSRF data.
# https://docs.djangoproject.com/en/5.2/ref/settings/#templates
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": []},
    },
]
# No relational database: jobs live in Redis, API keys in the environment.
DATABASES: dict = {}
USE_TZ = True
TIME_ZONE = "UTC"
APPEND_SLASH = False

# --- Redis ---------------------------------------------------------------------------
# One Redis holds the job records AND the Celery queues: job creation checks a queue's
# depth atomically with routing the job, and the workers move messages between queues,
# so the broker cannot be another Redis (see common/queues.py).
# redis://, or redis+sentinel://SENTINEL[,SENTINEL...]/MASTER_NAME[/DB] to follow failovers
# (common/redisconn.py; Celery's sentinel:// form takes the name from REDIS_SENTINEL_MASTER).
REDIS_URL = env_secret("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "")
_redis = RedisTarget.parse(REDIS_URL, master_name=REDIS_SENTINEL_MASTER)  # a bad URL stops here
# Redis replicates asynchronously: a job acknowledged to its client can be lost if the primary
# fails before a replica has it. With N > 0 the API answers 202/200 only once N replicas hold the
# job and its message (Redis WAIT, at most REDIS_WAIT_TIMEOUT_MS), else 503 + Retry-After.
REDIS_WAIT_REPLICAS = env_int("REDIS_WAIT_REPLICAS", 0, minimum=0)
REDIS_WAIT_TIMEOUT_MS = env_int("REDIS_WAIT_TIMEOUT_MS", 500, minimum=1)
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "recog:")
# Redis calls from request handlers fail fast rather than hang a client.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 5.0, minimum=0.1)
# Job records (with their results) and the uploaded photos are kept apart: a result may be
# read long after its photo is gone. A photo must outlive its job's deadline.
JOB_TTL_SECONDS = env_int("JOB_TTL_SECONDS", 86400, minimum=60)
IMAGE_TTL_SECONDS = env_int("IMAGE_TTL_SECONDS", JOB_TTL_SECONDS, minimum=60)

# --- Upload limits -------------------------------------------------------------------
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024, minimum=1024)
MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 50_000_000, minimum=10_000)
MIN_IMAGE_SIDE = env_int("MIN_IMAGE_SIDE", 32, minimum=1)
# Keep uploads in memory up to the limit: they are validated and stored at once.
# https://docs.djangoproject.com/en/5.2/ref/settings/#file-upload-max-memory-size
FILE_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES + 1
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
FILE_UPLOAD_HANDLERS = ["recognition_api.uploads.LimitedMemoryUploadHandler"]

# Decoded pixels in flight per process (API and worker): a small file can decode to a huge
# bitmap. 0: DECODE_BUDGET_FRACTION of the container's memory limit (or the machine's). Over
# budget, the API waits API_DECODE_WAIT_SECONDS and then answers 503 overloaded + Retry-After;
# a worker waits WORKER_DECODE_WAIT_SECONDS and then gives the job back to the queue.
DECODE_BUDGET_BYTES = env_int("DECODE_BUDGET_BYTES", 0, minimum=0)
DECODE_BUDGET_FRACTION = env_float("DECODE_BUDGET_FRACTION", 0.25, minimum=0.01, maximum=0.9)
API_DECODE_WAIT_SECONDS = env_float("API_DECODE_WAIT_SECONDS", 2.0, minimum=0)
WORKER_DECODE_WAIT_SECONDS = env_float("WORKER_DECODE_WAIT_SECONDS", 30.0, minimum=0)
# A worker gives memory of this size and more back to the system as soon as it is freed (glibc
# M_MMAP_THRESHOLD, fixed; common/membudget.py); 0 leaves glibc's adaptive default.
WORKER_MALLOC_MMAP_THRESHOLD = env_int("WORKER_MALLOC_MMAP_THRESHOLD", 128 * 1024, minimum=0)

IMAGE_STORE_URL = env_str("IMAGE_STORE_URL", (VAR_DIR / "images").as_uri())
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL", "") or None
# POST /recognize {"image_url": "s3://bucket/key"}: the API reads the photo from S3 (S3_ENDPOINT_URL,
# the AWS_* credentials) only under these "s3://bucket/prefix/,..." folders (common/imageurl.py);
# empty: image_url is refused. The API's IAM role needs s3:GetObject on each (k8s/iam/).
IMAGE_URL_ALLOWED = env_list("IMAGE_URL_ALLOWED")
parse_image_url_allowed(IMAGE_URL_ALLOWED)  # a malformed entry stops the process here
# Reading one image_url (a HEAD, then a GET bounded by MAX_UPLOAD_BYTES) is given this long, then
# 503 image_url_unavailable + Retry-After. Each S3 request waits a quarter of it per connect or read
# and is tried twice at most, so an S3 that stops answering holds a request twice this at worst.
IMAGE_URL_TIMEOUT_SECONDS = env_float("IMAGE_URL_TIMEOUT_SECONDS", 5.0, minimum=0.2, maximum=60)

# --- Recognition ---------------------------------------------------------------------
# "name:sha256:<hex>[;scopes=ops][;rate=N][;burst=N][;max_jobs=N][;device_rate=N],..." (hashes
# only; common/apikeys.py). Per key: new jobs per second and burst (token bucket in Redis), its
# unfinished jobs at once (its share of the queue), and, for a shared mobile key, new jobs per
# second per installation named in X-Device-Id. These are the defaults of keys that say nothing.
API_KEYS = env_secret("API_KEYS", "")
MAX_QUEUE_DEPTH = env_int("MAX_QUEUE_DEPTH", 10_000, minimum=0)  # 0 = unbounded: a backstop
API_KEY_RATE = env_float("API_KEY_RATE", 100.0, minimum=0)  # 0: no limit
API_KEY_BURST = env_int("API_KEY_BURST", 0, minimum=0)  # 0: twice the rate
API_KEY_MAX_JOBS = env_int("API_KEY_MAX_JOBS", MAX_QUEUE_DEPTH // 2, minimum=0)  # 0: no limit
API_KEY_DEVICE_RATE = env_float("API_KEY_DEVICE_RATE", 0.0, minimum=0)  # 0: off
API_KEY_DEFAULTS = Defaults(rate=API_KEY_RATE, burst=API_KEY_BURST, max_jobs=API_KEY_MAX_JOBS,
                            device_rate=API_KEY_DEVICE_RATE)
parse_api_keys(API_KEYS, API_KEY_DEFAULTS)  # a malformed entry stops the process here
MAX_WAIT_SECONDS = env_float("MAX_WAIT_SECONDS", 30.0, minimum=0, maximum=120)
# Every job has a deadline: the end of its client's wait plus WAIT_GRACE_SECONDS (the app may
# poll a little longer), or JOB_DEADLINE_SECONDS after it was created when the client does not
# wait. A job is admitted only if the estimated wait for its model version (the version's
# unfinished jobs / its completions per second over ADMISSION_WINDOW_SECONDS) fits in its
# client's wait (or JOB_DEADLINE_SECONDS), else 429 queue_full with the Retry-After that would
# fit; workers skip a job whose deadline passed (failed, deadline_exceeded).
JOB_DEADLINE_SECONDS = env_float("JOB_DEADLINE_SECONDS", 600.0, minimum=1)
WAIT_GRACE_SECONDS = env_float("WAIT_GRACE_SECONDS", 10.0, minimum=0)
if IMAGE_TTL_SECONDS < JOB_DEADLINE_SECONDS:
    raise ConfigurationError(
        f"IMAGE_TTL_SECONDS={IMAGE_TTL_SECONDS} is below JOB_DEADLINE_SECONDS={JOB_DEADLINE_SECONDS:g}: "
        "a photo must last until its job's deadline"
    )
ADMISSION_WINDOW_SECONDS = env_int("ADMISSION_WINDOW_SECONDS", 10, minimum=2, maximum=60)
# The share of a client's wait that the estimate (a mean) may fill: jobs finish around it, the
# slowest about a batch's time later, and the admitted ones should finish within the wait.
ADMISSION_TARGET = env_float("ADMISSION_TARGET", 0.5, minimum=0.1, maximum=1.0)
RETRY_AFTER_SECONDS = env_int("RETRY_AFTER_SECONDS", 2, minimum=1)
# Shadow copies (`python -m models_registry shadow V`) are dropped, not queued, while the shadow
# version's queue holds this many messages: a candidate that falls behind never slows anyone.
SHADOW_MAX_QUEUE_DEPTH = env_int("SHADOW_MAX_QUEUE_DEPTH", 16, minimum=0)

MODEL_ROOT = Path(env_str("MODEL_ROOT", str(VAR_DIR / "models")))
MODEL_NAME = env_str("MODEL_NAME", "reference")
# The version new jobs go to while the registry holds no rollout state in Redis.
DEFAULT_MODEL_VERSION = env_str("DEFAULT_MODEL_VERSION", "1")

# --- Worker --------------------------------------------------------------------------
WORKER_MODEL_VERSION = env_str("WORKER_MODEL_VERSION", DEFAULT_MODEL_VERSION)
WORKER_MAX_DELIVERIES = env_int("WORKER_MAX_DELIVERIES", 3, minimum=1)
WORKER_HEARTBEAT_SECONDS = env_float("WORKER_HEARTBEAT_SECONDS", 2.0, minimum=0.5)
# A claimed job's lease, renewed by its worker's every heartbeat: when a worker dies, the jobs
# it held are sent again within this (plus one reaper interval), not after JOB_LEASE_SECONDS.
WORKER_CLAIM_LEASE_SECONDS = env_float("WORKER_CLAIM_LEASE_SECONDS", WORKER_HEARTBEAT_SECONDS * 3,
                                       minimum=WORKER_HEARTBEAT_SECONDS * 2)
WORKER_READY_FILE = env_str("WORKER_READY_FILE", str(VAR_DIR / "worker-ready"))
BATCH_MAX_SIZE = env_int("BATCH_MAX_SIZE", 16, minimum=1, maximum=1024)
BATCH_MAX_WAIT_MS = env_float("BATCH_MAX_WAIT_MS", 5.0, minimum=0, maximum=1000)
WORKER_THREADS = env_int("WORKER_THREADS", 0, minimum=0)  # 0: derived from batch size
# Decode + prepare (crop, color, OCR) of each photo in this many child processes of the worker, so
# that the per-photo CPU work uses every core past the GIL while this process holds the model
# (workers/preparepool.py); 0: on the task threads. About the worker's cores less one (docs/PERFORMANCE.md).
PREPARE_PROCESSES = env_int("PREPARE_PROCESSES", 0, minimum=0, maximum=256)
# A batch still in the model after this long is taken as hung: the worker withdraws and exits
# non-zero (Kubernetes starts a new one; the jobs go elsewhere). Generous: a GPU batch takes ms.
WORKER_MAX_BATCH_SECONDS = env_float("WORKER_MAX_BATCH_SECONDS", 120.0, minimum=1.0)
# Check every file of the volume (size, sha256) against its manifest while the model loads;
# a worker whose volume fails never becomes ready. Off only to measure what the check costs.
WORKER_CHECK_VOLUME = env_bool("WORKER_CHECK_VOLUME", True)

# --- Celery (read by config.celery_app with namespace="CELERY") -------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
if env_secret("CELERY_BROKER_URL", REDIS_URL) != REDIS_URL:
    raise ConfigurationError(
        "CELERY_BROKER_URL must equal REDIS_URL (or be unset): the queues live in the Redis "
        "database of the job records, which admits and routes each job atomically with "
        "checking its queue's depth"
    )
CELERY_BROKER_URL = _redis.broker_url  # the same Redis, as kombu names it
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]  # never pickle
CELERY_RESULT_BACKEND = None  # results are written to the job record, not Celery's backend
CELERY_TASK_IGNORE_RESULT = True
# At-least-once: ack after the work is done, requeue when the worker is lost.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Never give up reconnecting: a worker that exits on a long Redis outage reloads its model.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# A message a dead worker held comes back after this long; keep it well above the
# slowest batch (or a slow job would run twice) and low enough to recover quickly.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
BROKER_VISIBILITY_TIMEOUT = env_int("BROKER_VISIBILITY_TIMEOUT", 300, minimum=1)
# A job not finished this long after it was queued, or after a worker claimed it, is
# sent again by the workers' reaper: the safety net under the broker's own redelivery
# (a message lost with a Redis primary that did not survive a failover). Below the
# visibility timeout, so the broker's
# redelivery of a message finds the job's lease expired and runs it.
JOB_LEASE_SECONDS = env_float("JOB_LEASE_SECONDS", BROKER_VISIBILITY_TIMEOUT * 0.9, minimum=1)
REAPER_INTERVAL_SECONDS = env_float("REAPER_INTERVAL_SECONDS", 2.0, minimum=0.2)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
    # Look for messages of dead workers every few seconds (kombu's default scans
    # only every 10th 10-second tick); one ZRANGE per scan costs nothing.
    "unacked_restore_interval": env_float("BROKER_RESTORE_INTERVAL", 5.0, minimum=0.5),
    "unacked_restore_throttle": 1,
    # The scan holds a lock in Redis; a worker killed while holding it would block every
    # other worker's scan until the lock expires (kombu's default: 5 minutes).
    "unacked_mutex_expire": env_int("BROKER_RESTORE_LOCK_SECONDS", 30, minimum=1),
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
    # One list per queue (no priority sub-queues: nothing is sent with a priority), so that a
    # worker can take each message with one BLMOVE into its own list (config/broker.py).
    "priority_steps": [0],
    **_redis.broker_transport_options,  # Sentinel: the master's name
}
# The queue a worker consumes (scripts/start-worker passes no --queues).
CELERY_TASK_DEFAULT_QUEUE = queue_for(WORKER_MODEL_VERSION)
# kombu's Redis transport, made to survive a connection lost under a worker (config/broker.py).
CELERY_BROKER_TRANSPORT = "config.broker:SentinelTransport" if _redis.uses_sentinel else "config.broker:Transport"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False

# --- DRF and OpenAPI -----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["recognition_api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["recognition_api.auth.HasApiKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.MultiPartParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "recognition_api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "UNAUTHENTICATED_TOKEN": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Listing-photo recognition API",
    "DESCRIPTION": (
        "Upload a listing photo; get a suggested name, category, brand and color, each "
        "with a confidence score and alternatives. Fields below their confidence "
        "threshold are returned as null.\n\n"
        "This document: [Swagger UI](/docs) (try it: *Authorize* with your API key) · "
        "[Redoc](/redoc) · [OpenAPI JSON](/openapi.json).\n\n"
        "**Authentication**: every endpoint but `/healthz` and `/readyz` needs "
        "`Authorization: Bearer <API key>`.\n\n"
        "**Errors**: every error is `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`. The `code` "
        "is stable, one of `ErrorCodeEnum` (each listed with its HTTP status and meaning); the "
        "message is for people. 429 and 503 carry `Retry-After` (seconds)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Group operations by the path's first part after /v1 (recognize, recognitions, ...), not "v1".
    "SCHEMA_PATH_PREFIX": r"/v1",
    # Every code of the error hierarchy, DRF's and the catch-alls (recognition_api/errors.py).
    "ENUM_NAME_OVERRIDES": {"ErrorCodeEnum": "recognition_api.errors.error_code_choices"},
    # Retry-After / WWW-Authenticate on every operation's 429, 503 and 401 errors.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "recognition_api.schema.error_headers"],
    # /docs and /redoc load Swagger UI and Redoc from the API itself, never from a CDN
    # (https://drf-spectacular.readthedocs.io/en/latest/settings.html; recognition_api/apidocs.py).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No badge from validator.swagger.io; the key given to Authorize lives only in the page.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None, "persistAuthorization": False},
}
# The sidecar's files are answered under it by recognition_api/apidocs.py (no collectstatic).
# https://docs.djangoproject.com/en/5.2/ref/settings/#static-url
STATIC_URL = "static/"

# --- Logging: one JSON object per line, with the request id --------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "common.logs.RequestIdFilter"},
        "throttle": {"()": "common.logs.Throttle", "seconds": 600},
        "quiet_readiness": {"()": "common.logs.QuietReadiness"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        # "Connection refused" from DogStatsD where no agent listens: once, then once per 10 min.
        "datadog.dogstatsd": {"filters": ["throttle"]},
        "django.request": {"filters": ["quiet_readiness"]},
        # Celery's "Task ... received" and "... succeeded in" lines repeat the worker's own "job
        # processed" line (job id, outcome; the timings are in the job record) at a third of the
        # worker's logging CPU per job; warnings and errors still come through.
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
    },
}
