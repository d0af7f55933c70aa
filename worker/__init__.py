"""The worker side: Celery app and tasks, drain loop, batcher, outcome rules, dead-letter store,
HTTP sink, settings, and the ``identify-queue`` command."""
