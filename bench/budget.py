"""What the hourly budget guard costs Redis: the drain's Redis CPU per record, guard off and on.

    python -m bench.budget        # medians of 3, table to bench/results/budget.md

100,000 records of 20,000 users are drained from one shard by the real Drainer (real scripts, a
sink that accepts every request without HTTP, as in bench.backlog), and the private redis-server's
own CPU counters (INFO cpu) are read around the drain.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

import redis

from bench.backlog import AcceptingSink
from bench.report import publish
from bench.run import ROOT, make_records, redis_cpu_seconds
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from worker.devtools.local_redis import LocalRedis
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.loop import Drainer
from worker.drain.store import ShardStore
from worker.settings import Secret, Settings


def drain(url: str, limit: int, count: int, users: int) -> tuple[float, float]:
    """(Redis CPU us per record, records/s) of one drain of ``count`` records; ``limit`` 0: no guard."""
    client = redis.Redis.from_url(url)
    config = QueueConfig(redis_url=url, namespace=f"budget-{secrets.token_hex(3)}", shards=1)
    settings = Settings(queue=config, api_key=Secret("k"), user_updates_per_hour=limit, coalesce=False,
                        drain_slice_s=600)  # fmt: skip
    keys = Keys(config.namespace)
    store = ShardStore(client, keys, settings.lease_ttl_s)
    limiter = RateLimiter(client, keys, requests_per_s=None, records_per_s=None, max_batch=1000)
    budget = BudgetStore(client, limit, 3600) if limit else None
    drainer = Drainer(settings, store, AcceptingSink(), limiter=limiter, budget=budget)  # type: ignore[arg-type]
    IdentifyProducer(config, client=client).identify_many(make_records(count, users))
    before = redis_cpu_seconds([client])
    started = time.perf_counter()
    drainer.drain(0)
    seconds = time.perf_counter() - started
    cpu_us = (redis_cpu_seconds([client]) - before) / count * 1e6
    client.flushdb()
    client.close()
    return cpu_us, count / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "budget.md")
    args = parser.parse_args(argv)
    runs: dict[int, list[tuple[float, float]]] = {0: [], 1800: []}
    with LocalRedis() as local_redis:
        for _ in range(args.repeats):
            for limit, done in runs.items():
                done.append(drain(local_redis.url, limit, args.records, args.users))
    off = statistics.median(r[0] for r in runs[0])
    on = statistics.median(r[0] for r in runs[1800])
    command = "python -m bench.budget " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` ({args.repeats} runs each, alternating, medians; {args.records:,} records of "
        f"{args.users:,} users, one shard, a sink that accepts everything)",
        "",
        "| hourly budget guard | drain's Redis CPU us/record | drained records/s |",
        "|---|---:|---:|",
        f"| off (IDENTIFY_USER_UPDATES_PER_HOUR=0) | {off:.2f} | {statistics.median(r[1] for r in runs[0]):,.0f} |",
        f"| on, 1,800 an hour (the default) | {on:.2f} | {statistics.median(r[1] for r in runs[1800]):,.0f} |",
        f"| the guard's own cost | {on - off:.2f} | |",
    ]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
