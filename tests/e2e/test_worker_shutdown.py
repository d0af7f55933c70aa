"""A worker's shutdown: SIGTERM ends it within seconds, and every pool process it forks can stop.

The dispatcher thread publishes drain tasks in the worker's main process, which also forks the pool
processes.  A fork taken while that thread held a lock of the broker client left the pool process
blocked for good in its after-fork cleanup: it never read the pool's stop sentinel, so a warm
shutdown waited for it forever.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import billiard
import pytest
import redis

from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import StartWorker, drained, seq_records, wait_until, worker_env
from worker.celery_app import create_app, send_drain
from worker.devtools.local_stack import WorkerProcess
from worker.settings import Settings

#: Set by every fork of this process, before worker.celery_app's own fork hook runs: hooks run
#: before a fork in the reverse order of their registration, and this module registers later.
_fork_began = threading.Event()
os.register_at_fork(before=_fork_began.set)


def _pool_process_body() -> None:
    """A pool process that gets past its start (kombu's after-fork cleanup) and ends."""


def wait_ready(worker: WorkerProcess) -> None:
    """Until Celery says ready: a SIGTERM before it has its handlers ends the process by the signal."""
    log = worker.log_path
    assert log is not None
    wait_until(lambda: " ready." in log.read_text(errors="replace"), 60, "the worker ready")


@pytest.mark.parametrize("ran_tasks", [False, True], ids=["idle", "after-tasks"])
@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_stops_a_worker_within_seconds(
    producer: IdentifyProducer, queue_config: QueueConfig, start_worker: StartWorker, ran_tasks: bool, group: bool
) -> None:
    worker = start_worker()
    wait_ready(worker)
    if ran_tasks:
        producer.identify_many(seq_records(40, 3))
        wait_until(lambda: drained(queue_config), 30, "everything delivered")
    # When an orchestrator signals the main process, or systemd the whole group
    assert worker.process is not None
    if group:
        os.killpg(worker.pid, signal.SIGTERM)
    else:
        worker.process.send_signal(signal.SIGTERM)
    # Then it is a clean stop, in seconds (about 2 s: a pool process lingers 1 s after its sentinel)
    assert worker.process.wait(15) == 0


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_pool_process_forked_while_the_dispatcher_publishes_starts_and_stops(
    queue_config: QueueConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker's app whose broker connection is open, as in a running worker
    app = create_app(Settings.from_env(worker_env(queue_config, "http://127.0.0.1:9/identify")))
    send_drain(app, 0)
    # and a dispatcher thread in the middle of a publish, holding its Redis connection pool's lock
    # (a publish holds it for microseconds; here for as long as the test needs)
    inside, go_on = threading.Event(), threading.Event()
    get_connection = redis.ConnectionPool.get_connection

    def get_connection_slowly(pool: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "publisher":
            with pool._lock:
                inside.set()
                go_on.wait(10)
        return get_connection(pool, *args, **kwargs)

    monkeypatch.setattr(redis.ConnectionPool, "get_connection", get_connection_slowly)
    publisher = threading.Thread(target=send_drain, args=(app, 1), name="publisher")
    publisher.start()
    children: list[Any] = []
    try:
        assert inside.wait(10), "the publish never took the pool's lock"
        # When the main process forks a pool process meanwhile (the pool starting or replacing one)
        _fork_began.clear()
        forker = threading.Thread(target=lambda: children.append(_start_pool_process()), name="forker")
        forker.start()
        assert _fork_began.wait(10), "the fork never began"
        go_on.set()
        forker.join(10)
        publisher.join(10)
        assert not forker.is_alive() and not publisher.is_alive()
        # Then the pool process gets through its start and can stop: it inherited no held lock
        [child] = children
        child.join(10)
        assert child.exitcode == 0
    finally:
        go_on.set()
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
                child.join(10)
        app.close()


def _start_pool_process() -> Any:
    # billiard's Process, as the pool's: its start runs the after-fork hooks kombu registers
    child = billiard.Process(target=_pool_process_body, daemon=True)
    child.start()
    return child
