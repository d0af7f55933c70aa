"""What the tests share: waiting for a condition, building records, checking what arrived, reading
the queue's status, and the settings of test workers.  Fixtures are in conftest.py; no test module
imports another."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from producers.contract.connection import connect
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from worker.deadletter import DeadLetterQueue, Selection
from worker.devtools.local_stack import WorkerProcess
from worker.status import gather

T = TypeVar("T")

#: The repository's root (the README, the compose file, the package to build).
ROOT = Path(__file__).resolve().parent.parent

#: The API key every test worker uses; tests look for it in logs and Redis and must not find it.
SENTINEL_API_KEY = "SENTINEL-KEY-7f3a9c1e5b"


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``.

    Tests synchronise on conditions (a count reached, a request in progress), never on sleeps;
    the short pause between polls only keeps the loop from spinning.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def seq_records(users: int, per_user: int, prefix: str = "user") -> list[dict[str, Any]]:
    """``per_user`` numbered updates for each user, interleaved across users as services send them."""
    return [
        {"user_id": f"{prefix}-{u:05d}", "user_properties": {"$set": {"seq": i}}}
        for i in range(per_user)
        for u in range(users)
    ]


def by_user(accepted: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for record in accepted:
        out[record["user_id"]].append(record["user_properties"]["$set"]["seq"])
    return out


def check_delivery(accepted: list[dict[str, Any]], users: int, per_user: int, prefix: str = "user") -> int:
    """Every record arrived, each user's in enqueue order; returns how many arrived twice.

    A record sent again after a crash is a repeat of one already seen; once repeats are removed,
    each user's sequence must be exactly 0, 1, ..., per_user - 1.
    """
    duplicates = 0
    for user, seqs in by_user(accepted).items():
        seen: set[int] = set()
        first_time = []
        for s in seqs:
            if s in seen:
                duplicates += 1
            else:
                seen.add(s)
                first_time.append(s)
        assert first_time == list(range(per_user)), f"{user} received {seqs}"
    assert len(by_user(accepted)) == users, f"{len(by_user(accepted))} users received updates, expected {users}"
    return duplicates


def redis_holds(client: Any, pattern: str, needle: bytes) -> list[bytes]:
    """The keys matching ``pattern`` whose name or any value contains ``needle``.

    Values are read by type (DUMP output is compressed and could hide the needle).
    """
    found = []
    for key in client.scan_iter(pattern):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        else:
            values = [repr(client.xrange(key)).encode()] if kind == "stream" else []
        if needle in key or any(needle in (v or b"") for v in values):
            found.append(key)
    return found


#: Starts `identify-queue worker` processes for a test (the `start_worker` fixture).
StartWorker = Callable[..., WorkerProcess]


def worker_env(queue_config: QueueConfig, identify_url: str, **overrides: str) -> dict[str, str]:
    """Settings for test workers: short timeouts and leases, so that faults resolve in seconds."""
    env = {
        "REDIS_URL": queue_config.redis_url,
        "IDENTIFY_NAMESPACE": queue_config.namespace,
        "IDENTIFY_SHARDS": str(queue_config.shards),
        "AMPLITUDE_API_KEY": SENTINEL_API_KEY,
        "AMPLITUDE_IDENTIFY_URL": identify_url,
        "IDENTIFY_BATCH_LINGER_MS": "20",
        "IDENTIFY_HTTP_CONNECT_TIMEOUT_S": "0.5",
        "IDENTIFY_HTTP_TIMEOUT_S": "2",
        "IDENTIFY_LEASE_TTL_S": "3",
        "IDENTIFY_DRAIN_SLICE_S": "1",
        "IDENTIFY_COALESCE": "0",
        "IDENTIFY_METRICS_PORT": "0",
    }
    env.update(overrides)
    return env


def status(config: QueueConfig) -> dict[str, Any]:
    client = connect(config.redis_url)
    try:
        return gather(client, Keys(config.namespace), config.shards)
    finally:
        client.close()


def drained(config: QueueConfig) -> bool:
    return status(config)["accepted_not_done"] == 0


def dead_letters(config: QueueConfig, **selection: Any) -> list[dict[str, Any]]:
    return list(DeadLetterQueue(config).entries(Selection(**selection)))


def users_records(n: int, prefix: str = "user") -> list[dict[str, Any]]:
    return [{"user_id": f"{prefix}-{i:05d}", "user_properties": {"$set": {"seq": 0}}} for i in range(n)]
