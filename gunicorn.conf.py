"""Gunicorn settings for the API (``gunicorn -c gunicorn.conf.py``).

Threaded workers: a client waiting with ``?wait=N`` holds one thread (blocked on a
Redis pub/sub socket), not a whole process.
https://docs.gunicorn.org/en/stable/settings.html
"""

import os

bind = os.environ.get("API_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("API_PROCESSES", "2"))
worker_class = "gthread"
threads = int(os.environ.get("API_THREADS", "32"))
# Above the longest allowed wait (MAX_WAIT_SECONDS, 30 by default) plus upload time.
timeout = int(os.environ.get("API_TIMEOUT", "75"))
graceful_timeout = int(os.environ.get("API_GRACEFUL_TIMEOUT", "35"))
keepalive = 5
# Reject absurd request lines/headers early; bodies are bounded by the view.
limit_request_line = 8190
limit_request_fields = 100
accesslog = "-" if os.environ.get("API_ACCESS_LOG", "1") == "1" else None
access_log_format = (
    '{"time":"%(t)s","logger":"access","method":"%(m)s","path":"%(U)s","status":%(s)s,'
    '"bytes":%(B)s,"duration_ms":%(M)s,"request_id":"%({x-request-id}o)s"}'
)
errorlog = "-"
wsgi_app = "recognition_api.wsgi:application"
