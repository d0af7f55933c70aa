"""Prometheus metrics of the worker, served by its main process (IDENTIFY_METRICS_PORT).

Counters and histograms are observed where the work happens, in the pool processes that drain;
prometheus_client's multiprocess mode keeps one set of files per process in a directory and the
main process serves their sum.  Gauges of the queue (queued, in flight, held, deferred, dead
letters by reason, blocked) are read from Redis when scraped, so any worker shows the whole queue.

    identify_queue_records_delivered_total              records Amplitude accepted
    identify_queue_records_dead_lettered_total{reason}   records given up on, by reason
    identify_queue_records_held_total{reason}            records parked: held (429), deferred (budget)
    identify_queue_requests_total{status}                requests, by HTTP status or error
    identify_queue_request_seconds                       request latency (histogram)
    identify_queue_batch_records                         records per request (histogram)
    identify_queue_records_enqueued_total                producers' records, from Redis
    identify_queue_queued / _in_flight / _held / _deferred / _dead_letter{reason} / _blocked
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import redis

from producers.contract.errors import StoreError
from producers.contract.keys import Keys
from worker.deadletter import REASONS
from worker.drain.settle import Settlement
from worker.status import gather

log = logging.getLogger("identify_queue.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


#: Our own directories of metric files: the owner's pid in the name, so that a later start can
#: tell one left by a worker that was killed (kill -9 runs no clean-up) from a living worker's.
DIR_PREFIX = "identify-queue-metrics-"


def prepare_multiprocess_dir() -> str:
    """A fresh directory for the pool processes' metric files; must precede importing prometheus_client.

    With PROMETHEUS_MULTIPROC_DIR set it is the user's, emptied and kept.  Otherwise it is ours: in
    the temporary directory, removed when this process exits (normally, on an error, on SIGTERM),
    and those of workers that died without removing theirs are removed first.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        return path
    root = tempfile.gettempdir()
    for name in stale_dirs(os.listdir(root), _alive):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    owner = os.getpid()
    path = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{owner}-")
    os.environ[MULTIPROC_ENV] = path

    def remove() -> None:
        # forked pool processes inherit this handler: only the process that made the directory removes it
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def stale_dirs(names: list[str], alive: Callable[[int], bool]) -> list[str]:
    """The metric directories among ``names`` whose worker is gone (its pid is not alive)."""
    out = []
    for name in names:
        pid = name.removeprefix(DIR_PREFIX).split("-", 1)[0]
        if name.startswith(DIR_PREFIX) and pid.isdigit() and not alive(int(pid)):
            out.append(name)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class Metrics:
    """What a drainer observes; one instance per process."""

    def __init__(self, registry: Any = None) -> None:
        """``registry``: where the metrics are registered (by default prometheus_client's own)."""
        from prometheus_client import REGISTRY, Counter, Histogram

        where = registry if registry is not None else REGISTRY
        self.delivered = Counter("identify_queue_records_delivered", "Records Amplitude accepted", registry=where)
        self.dead_lettered = Counter(
            "identify_queue_records_dead_lettered", "Records dead-lettered, by reason", ["reason"], registry=where
        )
        self.held = Counter(
            "identify_queue_records_held", "Records parked: held (429) or deferred (budget)", ["reason"],
            registry=where,
        )  # fmt: skip
        self.requests = Counter(
            "identify_queue_requests", "Requests to /identify, by HTTP status or error", ["status"], registry=where
        )
        self.latency = Histogram(
            "identify_queue_request_seconds", "Request latency to /identify",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=where,
        )  # fmt: skip
        self.batch = Histogram(
            "identify_queue_batch_records", "Identifications per request",
            buckets=(1, 10, 50, 100, 250, 500, 750, 1000, 1500, 2000), registry=where,
        )  # fmt: skip
        # every series of a known label starts at 0: increase() over a series that appears with its
        # first record misses that record
        for reason in REASONS:
            self.dead_lettered.labels(reason)
        for reason in ("held", "deferred"):
            self.held.labels(reason)

    def request(self, status: str, seconds: float, records: int) -> None:
        self.requests.labels(status).inc()
        self.latency.observe(seconds)
        self.batch.observe(records)

    def settled(self, s: Settlement) -> None:
        if s.delivered:
            self.delivered.inc(s.delivered)
        for d in s.dead:
            self.dead_lettered.labels(d.reason).inc()
        for p in s.parked:
            if p.reason:
                self.held.labels(p.reason).inc(len(p.members))


class QueueCollector:
    """Gauges read from Redis at scrape time: the whole queue, whichever worker is scraped."""

    def __init__(self, client: redis.Redis, keys: Keys, shards: int) -> None:
        self._client, self._keys, self._shards = client, keys, shards

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            status = gather(self._client, self._keys, self._shards)
        except StoreError as exc:
            log.warning("metrics: cannot read the queue: %s", exc)
            return
        yield CounterMetricFamily("identify_queue_records_enqueued", "Records producers enqueued",
                                  value=status["enqueued"])  # fmt: skip
        for name in ("queued", "in_flight", "held", "deferred"):
            yield GaugeMetricFamily(f"identify_queue_{name}", f"Records {name.replace('_', ' ')}", value=status[name])
        dead = GaugeMetricFamily("identify_queue_dead_letter", "Records in the dead-letter queue", labels=["reason"])
        for reason, count in dead_letter_series(status["dead_letter_by_reason"]).items():
            dead.add_metric([reason], count)
        yield dead
        yield GaugeMetricFamily("identify_queue_blocked", "1 while a configuration error stops sending",
                                value=1 if status["blocked"] else 0)  # fmt: skip


def dead_letter_series(counts: dict[str, int]) -> dict[str, int]:
    """The dead-letter gauge's series: every reason, 0 when it has no entry (a series that vanished
    when the queue emptied would leave an alert on it with nothing to compare), and any reason
    Redis holds beyond the known ones (written by a newer version)."""
    return {**dict.fromkeys(REASONS, 0), **{reason: n for reason, n in counts.items()}}


def serve(client: redis.Redis, keys: Keys, shards: int, *, host: str, port: int) -> int | None:
    """Serve /metrics from this (main) process; returns the bound port, or None if it cannot bind."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector(client, keys, shards))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("metrics: cannot listen on %s:%d (%s); this worker serves no metrics", host, port, exc)
        return None
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


def process_exited(pid: int) -> None:
    """Drop a finished pool process's live gauges (its counters stay in the sum)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
