"""Group commit: identify() from 32 threads, and from 32 asyncio tasks, with grouping on and off.

    python -m bench.producers                          # what `make bench` runs: medians of 3
    python -m bench.producers --records 5000 --repeats 1   # a quick look

Each run enqueues ``--records`` identifications (distinct users, 16 shards) into a private
redis-server (append-only, fsync every second), one ``identify()`` call per record, from 32
threads sharing one IdentifyProducer, or 32 tasks sharing one AsyncIdentifyProducer.  Grouping
off (IDENTIFY_GROUP_COMMIT=0) is one call per round trip.  Redis CPU per record is read from
INFO cpu (everything the server spent, network included) and per call from INFO commandstats
(the scripts' own time).  A last run makes calls one after another from one thread: the cost of
a call alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from bench.report import publish
from producers.async_producer import AsyncIdentifyProducer
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from worker.devtools.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 32


@dataclass(frozen=True)
class Sample:
    rate: float  # records/s
    redis_us: float  # INFO cpu per record
    script_us: float  # commandstats (EVALSHA) per record
    groups: int


def cpu_seconds(admin: redis.Redis) -> float:
    info: Any = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def script_usec(admin: redis.Redis) -> float:
    stats: Any = admin.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


def script_call_costs(admin: redis.Redis, calls: int = 3000) -> tuple[float, float]:
    """(us per call of a script that does nothing, us per write (INCRBY) inside a script), from INFO
    commandstats: what bounds a lone enqueue, which makes a dozen calls into Redis, most of them writes."""
    inner = 10
    costs = []
    for body in ("return 1", f"for i = 1, {inner} do redis.call('INCRBY', KEYS[1], 1) end return 1"):
        sha = admin.script_load(body)
        admin.config_resetstat()
        for _ in range(calls):
            admin.evalsha(sha, 1, "bench:script-cost")
        stats: Any = admin.info("commandstats")
        costs.append(float(stats["cmdstat_evalsha"]["usec"]) / calls)
    admin.delete("bench:script-cost")
    return costs[0], (costs[1] - costs[0]) / inner


def records_for(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"user_id": f"{tag}-user-{i:07d}", "user_properties": {"$set": {"plan": "pro", "n": i}}} for i in range(n)]


def measure(admin: redis.Redis, run: Callable[[], int], count: int) -> Sample:
    admin.flushall()
    cpu, usec = cpu_seconds(admin), script_usec(admin)
    start = time.perf_counter()
    groups = run()
    elapsed = time.perf_counter() - start
    return Sample(count / elapsed, (cpu_seconds(admin) - cpu) / count * 1e6, (script_usec(admin) - usec) / count,
                  groups)  # fmt: skip


def threads_run(config: QueueConfig, records: list[dict[str, Any]]) -> int:
    with IdentifyProducer(config) as producer:
        producer.identify(user_id="warm-up-user", user_properties={"$set": {"a": 1}})
        parts = [records[i::CONCURRENCY] for i in range(CONCURRENCY)]

        def call_each(part: list[dict[str, Any]]) -> None:
            for record in part:
                producer.identify(record)

        threads = [threading.Thread(target=call_each, args=(part,)) for part in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return producer.groups


def tasks_run(config: QueueConfig, records: list[dict[str, Any]]) -> int:
    async def main() -> int:
        async with AsyncIdentifyProducer(config) as producer:
            await producer.identify(user_id="warm-up-user", user_properties={"$set": {"a": 1}})

            async def call_each(part: list[dict[str, Any]]) -> None:
                for record in part:
                    await producer.identify(record)

            await asyncio.gather(*(call_each(records[i::CONCURRENCY]) for i in range(CONCURRENCY)))
            return producer.groups

    return asyncio.run(main())


def alone_run(config: QueueConfig, records: list[dict[str, Any]]) -> int:
    with IdentifyProducer(config) as producer:
        for record in records:
            producer.identify(record)
        return producer.groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "producers.md")
    args = parser.parse_args(argv)

    records = records_for(args.records, "b")
    alone = records_for(min(args.records, 5000), "a")
    cases: dict[str, tuple[Callable[[QueueConfig, list[dict[str, Any]]], int], bool, list[dict[str, Any]]]] = {
        "threads, grouping off": (threads_run, False, records),
        "threads, grouping on": (threads_run, True, records),
        "asyncio, grouping off": (tasks_run, False, records),
        "asyncio, grouping on": (tasks_run, True, records),
        "one call at a time": (alone_run, True, alone),
    }
    samples: dict[str, list[Sample]] = {name: [] for name in cases}
    with LocalRedis(appendonly=True, extra=["--appendfsync", "everysec"]) as server:
        admin = server.admin()
        empty_us, per_call_us = script_call_costs(admin)
        base = QueueConfig(redis_url=server.url, namespace="bench", shards=16)
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr)
            for name, (run, grouped, rows) in cases.items():
                config = replace(base, group_commit=grouped)
                sample = measure(admin, lambda run=run, config=config, rows=rows: run(config, rows), len(rows))
                samples[name].append(sample)
                print(f"  {name:<24} {sample.rate:>9,.0f}/s  redis {sample.redis_us:5.1f} us/record  "
                      f"scripts {sample.script_us:5.1f} us/record  groups {sample.groups:,}",
                      file=sys.stderr)  # fmt: skip

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[name])

    command = "python -m bench.producers " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` ({args.repeats} runs each, medians; {args.records:,} identify() calls per run, "
        f"one record each, from {CONCURRENCY} threads or {CONCURRENCY} asyncio tasks sharing one producer; "
        f"{os.cpu_count()} CPUs shared by the producer and Redis)",
        "",
        "| producer | records/s | vs grouping off | Redis CPU us/record (INFO cpu) "
        "| scripts us/record (commandstats) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in cases:
        kind = name.split(",")[0]
        off = f"{kind}, grouping off"
        ratio = f"{med(name, 'rate') / med(off, 'rate'):.1f}x" if off in samples and name != off else ""
        lines.append(f"| {name} | {med(name, 'rate'):,.0f} | {ratio} | {med(name, 'redis_us'):.1f} | "
                     f"{med(name, 'script_us'):.1f} |")  # fmt: skip
    lines += [
        "",
        "A call alone (one thread, one call after another) goes at once, in its own round trip: its Redis CPU is the "
        "last row.  With grouping on, calls that arrive while an enqueue is under way share the next one.",
        "",
        f"On this Redis a script that does nothing costs {empty_us:.1f} us a call, and each write inside a script "
        f"(`redis.call('INCRBY', ...)`) {per_call_us:.1f} us (INFO commandstats, 3,000 calls each): the enqueue "
        "script's dozen calls into Redis (layout, totals, clock, sequence, append, minute counts, wake-up) are "
        "most of a lone call's script time.",
    ]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
