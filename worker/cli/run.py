"""`identify-queue worker`: drain the queue to Amplitude."""

from __future__ import annotations

import logging
import socket
import sys

import click

from producers.contract.connection import connect
from producers.contract.keys import Keys
from producers.contract.logs import configure
from worker.cli.common import friendly_errors


# -- worker -----------------------------------------------------------------------------------------
@click.command()
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes (default: IDENTIFY_WORKER_CONCURRENCY, else the CPU count).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="Celery pool: processes use every core; threads suit a slow, distant endpoint.",
)
@click.option("-n", "--name", default=None, help="Node name, unique per machine (default: identify@HOSTNAME).")
@click.option("-E", "--events", is_flag=True, help="Send task events, for Flower.")
@friendly_errors
def worker(concurrency: int | None, pool: str, name: str | None, events: bool) -> None:
    """Drain the queue to Amplitude until SIGTERM.

    Runs a Celery worker (JSON messages only) and, in its main process, the dispatcher that sends
    it a drain task whenever a shard has records. No beat process is needed. SIGTERM finishes the
    batch in flight and stops; records claimed and not acknowledged are read again first by the
    next drainer, so nothing is lost.
    """
    from worker.metrics import prepare_multiprocess_dir

    # Before anything imports prometheus_client: the pool processes keep their metrics in files.
    prepare_multiprocess_dir()
    from worker.celery_app import create_app
    from worker.preflight import check_channels, check_redis
    from worker.settings import Settings

    settings = Settings.from_env()
    settings.require_api_key()
    # The start checks log before Celery sets logging up: in the same format (one JSON object a line)
    configure(settings.log_level, settings.log_format)
    if concurrency:
        settings = settings.with_changes(concurrency=concurrency)
    client = connect(settings.queue.redis_url)
    check_redis(client, settings)
    check_channels(client, settings)
    client.close()
    app = create_app(settings)
    node = name or f"identify@{socket.gethostname()}"
    if "@" not in node:
        node = f"{node}@{socket.gethostname()}"
    if settings.log_format == "json":
        # Every line on stderr a JSON object: no banner, and Python's warnings through logging.
        logging.captureWarnings(True)
    argv = [
        *(["--quiet"] if settings.log_format == "json" else []),
        "worker", "--queues", Keys(settings.queue.namespace).celery_queue, "--concurrency", str(settings.concurrency),
        "--pool", pool, "--loglevel", settings.log_level, "--hostname", node,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    if events:
        argv.append("--task-events")
    # Celery's command runs not standalone and returns its exit code (worker_main drops it): a
    # worker ended by an unrecoverable error must exit non-zero, so that a supervisor restarts it.
    code = app.start(argv)
    sys.exit(code if isinstance(code, int) else 0)
