"""Settings and the Celery app: taken by the API and the workers alike, importing neither."""
