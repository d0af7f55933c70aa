"""The Celery app: one task that drains a shard, and the dispatcher that sends it.

Celery carries only wake-ups here (``drain(shard)``, JSON, no result written); the records
themselves stay in the shard lists, so a lost task message loses nothing: the dispatcher's sweep
sends another.  That is why tasks are acknowledged early and results are ignored.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init, worker_process_shutdown
from kombu.connection import Connection

from producers.contract.connection import celery_broker, connect
from producers.contract.keys import Keys
from producers.contract.logs import use_format
from worker import metrics
from worker.dispatcher import Dispatcher
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.loop import Drainer
from worker.drain.sink import HttpSink
from worker.drain.store import ShardStore
from worker.metrics import Metrics
from worker.settings import Settings

log = logging.getLogger("identify_queue.worker")

TASK_NAME = "identify_queue.drain"

# One drainer per pool process, or per thread with `--pool threads`, made where it runs: a Redis
# client and an HTTP session must not be shared between processes, and a drainer's state (its
# claim, its HTTP session, its run of refused records) must not be shared between threads.  The
# metrics are per process (prometheus_client registers each name once).
_local = threading.local()
_process: dict[str, Metrics] = {}
_process_lock = threading.Lock()
#: Set when a pool process is asked to stop: it finishes the request in flight, settles it, and
#: drains no further.
_stopping = threading.Event()
_process_is_pool_child = threading.Event()


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    vars(_local).clear()
    _process.clear()
    _stopping.clear()
    _process_is_pool_child.set()


def _finish_batch_on_sigterm() -> None:
    # systemd (KillMode=control-group) and `kill -TERM -PGID` signal the pool processes as well as
    # the main one.  Celery's default would end a pool process mid-request, and its batch would be
    # sent twice.  Instead it finishes its batch and drains no further; the main process's warm
    # shutdown ends it afterwards.  Installed at the first task, because billiard resets a pool
    # process's handlers after worker_process_init; and only in pool processes, where the main
    # process's own warm-shutdown handler is not at stake.
    signal.signal(signal.SIGTERM, lambda *_: _stopping.set())


@worker_process_shutdown.connect
def _forget_pool_process(pid: int | None = None, **_: Any) -> None:
    if pid is not None:
        metrics.process_exited(pid)


@after_setup_logger.connect
def _quiet_per_task_lines(**_: Any) -> None:
    # Celery logs every task received and succeeded at INFO; with a task per shard drain that is
    # noise.  Failures are still logged at ERROR.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def process_drainer(settings: Settings) -> Drainer:
    """This process's (or, with `--pool threads`, this thread's) drainer, made on first use."""
    drainer: Drainer | None = getattr(_local, "drainer", None)
    if drainer is None:
        with _process_lock:
            first = "metrics" not in _process
            if first:
                _process["metrics"] = Metrics()
                if _process_is_pool_child.is_set():
                    _finish_batch_on_sigterm()
        # every drain script runs at most once per call: a lost answer is the drain's to handle
        client = connect(settings.queue.redis_url, resend=False)
        sink = HttpSink(
            settings.identify_url,
            settings.require_api_key(),
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )
        keys = Keys(settings.queue.namespace)
        store = ShardStore(client, keys, settings.lease_ttl_s)
        limiter = RateLimiter(
            client, keys, requests_per_s=settings.rate_limit_rps, records_per_s=settings.rate_limit_records_per_s,
            max_batch=settings.effective_batch_size,
        )  # fmt: skip
        budget = (
            BudgetStore(client, settings.user_updates_per_hour, settings.budget_window_s)
            if settings.user_updates_per_hour
            else None
        )
        drainer = _local.drainer = Drainer(
            settings, store, sink, limiter=limiter, budget=budget, metrics=_process["metrics"],
            should_stop=_stopping.is_set,
        )  # fmt: skip
        if first:
            # Celery, kombu and our setup are long-lived; every drain allocates thousands of short-lived
            # objects, and each older-generation collection would scan them all again.  Freezing what
            # exists now cut the worker's CPU per record by a fifth (bench/results/throughput.md).
            gc.freeze()
    return drainer


class QuickReconnect(Connection):
    """kombu's connection, retrying every second (not 2, 4, 6 ... up to 30 s) once it is lost.

    Celery's consumer reconnects with kombu's default intervals, so after a Redis outage of half a
    minute the worker took 11-12 s more to consume again.  Records wait in Redis either way (the
    broker carries only wake-ups); this only brings the drain back sooner.
    """

    def ensure_connection(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("interval_start", 0.2)
        kwargs.setdefault("interval_step", 0.4)
        kwargs.setdefault("interval_max", 1.0)
        return super().ensure_connection(*args, **kwargs)  # type: ignore[no-untyped-call]


#: Held by the dispatcher thread while it publishes, and by the main thread across each fork.
_publishing = threading.Lock()
# The pool forks its processes from the main process while the dispatcher thread may be publishing
# through kombu's Redis connection pool.  A fork taken while that thread held one of the pool's locks
# gave the child a lock nobody would release, and kombu's after-fork cleanup in the child waits on it:
# the pool process never started, never read its stop sentinel, and a warm shutdown waited for it
# forever.  So no fork happens in the middle of a publish.
os.register_at_fork(before=_publishing.acquire, after_in_parent=_publishing.release,
                    after_in_child=_publishing.release)  # fmt: skip


def send_drain(app: Celery, shard: int) -> None:
    """Publish a drain task for ``shard``: what the dispatcher thread does with the broker."""
    with _publishing:
        app.tasks[TASK_NAME].apply_async((shard,), queue=app.conf.task_default_queue)


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery's broker settings: IDENTIFY_BROKER_URL (by default REDIS_URL) in any form of it."""
    keys = Keys(settings.queue.namespace)
    url = settings.broker_url
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return {"broker_url": url, "broker_transport_options": {}}
    broker, options, use_ssl = celery_broker(url)
    config: dict[str, Any] = {"broker_url": broker, "broker_transport_options": {"global_keyprefix": keys.kombu_prefix,
                                                                                  **options}}  # fmt: skip
    if use_ssl is not None:
        config["broker_use_ssl"] = use_ssl
    return config


def create_app(settings: Settings) -> Celery:
    keys = Keys(settings.queue.namespace)
    app = Celery("identify_queue", set_as_current=False)
    app.amqp.Connection = QuickReconnect
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # never pickle: a message must not be able to run code
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=keys.celery_queue,
        task_acks_late=False,
        # What it switches on only touches tasks acknowledged late, which ours never are; set, Celery
        # stops warning of its coming default (CPendingDeprecationWarning) at every broker reconnect
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=True,
        broker_connection_retry_on_startup=True,
        # a worker waits out a Redis outage (its dispatcher does too) rather than exiting after 100 tries
        broker_connection_max_retries=None,
        worker_send_task_events=False,
        task_send_sent_event=False,
        # the control channel (celery inspect, Flower): off when the Redis user may not use channels
        worker_enable_remote_control=settings.remote_control,
        **broker_config(settings),
    )

    def log_format(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            use_format(logger, settings.log_format)

    after_setup_logger.connect(log_format, weak=False)
    after_setup_task_logger.connect(log_format, weak=False)

    # shared=False: the task belongs to this app alone (Celery would otherwise hand it to every app made
    # later in the process, and a second app, in tests, would find the name taken)
    @app.task(name=TASK_NAME, ignore_result=True, shared=False)
    def drain(shard: int) -> None:
        process_drainer(settings).drain(int(shard))

    class DispatcherStep(bootsteps.StartStopStep):  # type: ignore[misc]
        """Runs the dispatcher thread in the worker's main process, beside the pool."""

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.dispatcher: Dispatcher | None = None

        def start(self, parent: Any) -> None:
            self.dispatcher = Dispatcher(
                # a call whose answer is lost fails (and is handled) rather than runs again
                connect(settings.queue.redis_url, resend=False),
                keys,
                settings.queue.shards,
                lambda shard: send_drain(app, shard),
                sweep_interval_s=min(5.0, settings.lease_ttl_s / 2),
                task_grace_s=settings.lease_ttl_s,
                node=getattr(parent, "hostname", None),
            )
            self.dispatcher.start()
            if settings.metrics_port:
                metrics.serve(connect(settings.queue.redis_url), keys, settings.queue.shards,
                              host=settings.metrics_host, port=settings.metrics_port)  # fmt: skip
            log.info(
                "dispatching %d shards of namespace %r to %s",
                settings.queue.shards, settings.queue.namespace, settings.identify_url,
            )  # fmt: skip

        def stop(self, parent: Any) -> None:
            if self.dispatcher is not None:
                self.dispatcher.stop()

    app.steps["worker"].add(DispatcherStep)
    return app
