"""What identify-queue costs in Redis memory: per queued record, and per user for the hourly budget.

    python -m bench.memory        # writes bench/results/memory.md

Measured as the change of Redis's ``used_memory`` (INFO memory) on a private redis-server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import redis

from bench.report import publish
from bench.run import ROOT, make_records
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from producers.record import validate
from worker.devtools.local_redis import LocalRedis
from worker.drain.budget import SLOTS


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def queue_bytes_per_record(url: str, records: int) -> tuple[float, float]:
    """Redis bytes per queued record, and the records' own JSON size, on average."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    rows = make_records(records, records // 10)
    json_size = sum(len(validate(r).data) for r in rows) / records
    before = used(client)
    with IdentifyProducer(QueueConfig(redis_url=url, namespace="memory")) as producer:
        producer.identify_many(rows)
    per_record = (used(client) - before) / records
    client.flushdb()
    return per_record, json_size


def budget_bytes_per_user(url: str, users: int) -> float:
    """Redis bytes per user per budget slot in which the user was sent an update."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    slot = Keys("memory").shard(0).budget(1)
    before = used(client)
    pipe = client.pipeline(transaction=False)
    for u in range(users):
        pipe.hincrby(slot, f"u:bench-user-{u:06d}", 3)
        if u % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    per_user = (used(client) - before) / users
    client.flushdb()
    return per_user


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.md")
    args = parser.parse_args(argv)
    with LocalRedis() as local:
        per_record, json_size = queue_bytes_per_record(local.url, args.records)
        per_user = budget_bytes_per_user(local.url, args.users)
    command = "python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"Command: `{command.strip()}` (private redis-server, `used_memory` before and after)",
        "",
        "| what | Redis memory |",
        "|---|---:|",
        f"| a queued record ({json_size:.0f}-byte identification, 21-character user id) | {per_record:.0f} bytes |",
        f"| hourly budget, per user per ten-minute slot with an update | {per_user:.0f} bytes |",
        f"| hourly budget, a user updated in every slot of the last hour ({SLOTS + 1} slots) | "
        f"{per_user * (SLOTS + 1):.0f} bytes |",
    ])  # fmt: skip
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
