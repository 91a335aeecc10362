"""The Celery app, shared by the API (to send) and the workers (to consume).

Configured from the Django settings module (``CELERY_*``), which imports nothing
heavy; importing this module never imports TensorFlow.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("recognition", amqp="config.broker:AMQP")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The task module is imported by the worker only (``celery -A workers.worker``).
