"""The Celery app, configured from the environment, for Celery's own tools.

    celery -A worker.app flower          # Flower: run workers with `identify-queue worker --events`
    celery -A worker.app inspect active  # what each worker is draining

The worker itself is started with `identify-queue worker`, which checks Redis first.
"""

from worker.celery_app import create_app
from worker.settings import Settings

app = create_app(Settings.from_env())
