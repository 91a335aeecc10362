"""Gunicorn settings for the API (``gunicorn -c gunicorn.conf.py``).

Threaded workers: a client waiting with ``?wait=N`` holds one thread (blocked on a
Redis pub/sub socket), not a whole process.
https://docs.gunicorn.org/en/stable/settings.html
"""

import os

bind = os.environ.get("API_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("API_PROCESSES", "2"))
# gthread, with a deadline on reading each request: slow clients cannot hold every thread.
worker_class = "recognition_api.gunicorn_worker.DeadlineThreadWorker"
threads = int(os.environ.get("API_THREADS", "32"))
# Above the longest allowed wait (MAX_WAIT_SECONDS, 30 by default) plus upload time.
timeout = int(os.environ.get("API_TIMEOUT", "75"))
graceful_timeout = int(os.environ.get("API_GRACEFUL_TIMEOUT", "35"))
keepalive = 5
# Reject absurd request lines/headers early; bodies are bounded by the view.
limit_request_line = 8190
limit_request_fields = 100
accesslog = "-" if os.environ.get("API_ACCESS_LOG", "1") == "1" else None
# One JSON object per request, escaped by json.dumps whatever the path holds.
logger_class = "recognition_api.gunicorn_worker.JsonAccessLogger"
errorlog = "-"
wsgi_app = "recognition_api.wsgi:application"
# The control socket (a per-user path) would clash between API instances on one host.
control_socket_disable = True
# Gunicorn's own messages as JSON lines too, like the application's. (Gunicorn merges
# this over its defaults one key deep, so every handler and logger is spelled out.)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "plain": {"format": "%(message)s"},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        "access": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"},
    },
    "root": {"handlers": ["stdout"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}
