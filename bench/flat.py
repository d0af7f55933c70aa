"""Flat cost over a long backlog: records/s and worker memory over its first and its last 10%.

    python -m bench.flat                          # 1,000,000 records: what `make bench` runs
    python -m bench.flat --records 10000000       # the long run (about 2 GB in Redis), run by hand

The whole backlog is enqueued first (the records of bench.run, 20,000 users by default), then one
worker (``--workers`` processes, every default on) drains it into the local Amplitude-compatible
server while this samples, ten times a second, the records delivered (``status``'s counter) and the
resident memory of the worker's processes (/proc).  A cost that grew with the backlog or with what
was already delivered would show as a slower last tenth, or a bigger worker, than the first.
Redis runs without persistence here: the figure is the worker's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench.report import publish
from bench.run import API_KEY, ROOT, make_records, wait_for
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import LocalAmplitudeProcess, WorkerProcess, _children
from worker.status import gather

SAMPLE_S = 0.1


def records(count: int, users: int) -> Iterator[dict[str, Any]]:
    """bench.run's records, made a block at a time so that ten million need not sit in memory."""
    block = 100_000
    for start in range(0, count, block):
        for i, record in enumerate(make_records(min(block, count - start), users)):
            record["user_properties"]["$set"]["seq"] = (start + i) // users
            yield record


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (Linux /proc)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flat.md")
    args = parser.parse_args(argv)

    logs = Path(tempfile.mkdtemp(prefix="identify-queue-bench-flat-"))
    samples: list[tuple[float, int, int]] = []  # (seconds, delivered, worker RSS bytes)
    with LocalRedis(appendonly=False) as local_redis:
        server = LocalAmplitudeProcess(api_key=API_KEY, log_path=logs / "server.log").start()
        config = QueueConfig(redis_url=local_redis.url, namespace="flat", max_queued=max(10_000_000, args.records))
        keys = Keys(config.namespace)
        client = redis.Redis.from_url(local_redis.url)
        try:
            started = time.perf_counter()
            with IdentifyProducer(config) as producer:
                producer.identify_many(records(args.records, args.users))
            enqueue_s = time.perf_counter() - started
            env = {"REDIS_URL": local_redis.url, "IDENTIFY_NAMESPACE": config.namespace, "AMPLITUDE_API_KEY": API_KEY,
                   "AMPLITUDE_IDENTIFY_URL": server.identify_url, "IDENTIFY_LOG_LEVEL": "warning",
                   "IDENTIFY_MAX_QUEUED": str(config.max_queued)}  # fmt: skip
            worker = WorkerProcess(env, name="flat", concurrency=args.workers, log_path=logs / "worker.log").start()
            try:
                wait_for(lambda: client.zcard(keys.workers) > 0, 60, "the worker")
                began = time.perf_counter()
                delivered = 0
                while delivered < args.records:
                    delivered = gather(client, keys, config.shards)["delivered"]
                    samples.append((time.perf_counter() - began, delivered, rss_bytes(worker.pid)))
                    time.sleep(SAMPLE_S)  # a sampling period, not a synchronisation
            finally:
                worker.stop()
        finally:
            server.stop()
            client.close()

    tenth = args.records // 10
    first = _window(samples, 0, tenth)
    last = _window(samples, args.records - tenth, args.records)
    command = "python -m bench.flat " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` ({args.records:,} records of {args.users:,} users enqueued first, in "
        f"{enqueue_s:.0f} s; {args.workers} worker processes, every default on; {os.cpu_count()} CPUs)",
        "",
        "| part of the backlog | records/s | worker RSS (median of samples) |",
        "|---|---:|---:|",
        f"| first 10% | {first[0]:,.0f} | {first[1] / 2**20:,.0f} MiB |",
        f"| last 10% | {last[0]:,.0f} | {last[1] / 2**20:,.0f} MiB |",
        f"| last / first | {last[0] / first[0]:.2f}x | {last[1] / first[1]:.2f}x |",
    ]
    publish("\n".join(lines), args.out)
    return 0


def _window(samples: list[tuple[float, int, int]], low: int, high: int) -> tuple[float, float]:
    """Records/s while ``delivered`` went from ``low`` to ``high``, and the median RSS meanwhile.

    When ``delivered`` passed ``low`` and ``high`` is interpolated between the samples around each:
    a tenth of a million records takes well under a second here, and timing it from sample to
    sample (the last tenth then ended at the first sample after the drain had finished) made the
    rate up to twice as wrong as the effect it looks for.
    """
    low = max(low, samples[0][1])  # what was delivered before the first sample has no time
    start, end = _crossing(samples, low), _crossing(samples, high)
    inside = [s[2] for s in samples[start[0] : end[0] + 2]]
    return (high - low) / max(end[1] - start[1], 1e-9), statistics.median(inside)


def _crossing(samples: list[tuple[float, int, int]], count: int) -> tuple[int, float]:
    """(index of the last sample before, seconds) when ``delivered`` reached ``count``."""
    for i, ((t0, d0, _), (t1, d1, _)) in enumerate(itertools.pairwise(samples)):
        if d0 <= count <= d1 and d1 > d0:
            return i, t0 + (t1 - t0) * (count - d0) / (d1 - d0)
    return len(samples) - 1, samples[-1][0]


if __name__ == "__main__":
    sys.exit(main())
