"""A hot user's backlog must not cost everybody else: script times and the others' drain rate.

One user has 100,000 updates deferred by the hourly budget (waiting, worker/drain/waiting.py) while
100,000 updates of 20,000 other users are queued in the same shard.  The others are drained by
the real Drainer (real scripts, a sink that accepts every request without HTTP, so that the
figure is the queue's own cost), and compared with the same drain without the hot user's backlog.
Redis's SLOWLOG must show no call of 5 ms or more throughout.

    .venv/bin/python -m bench.backlog          # medians of 3, table to bench/results/backlog.md

tests/drain/test_backlog.py runs the same scenario and checks both targets.
"""

from __future__ import annotations

import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.report import publish
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from worker.devtools.local_redis import LocalRedis
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.loop import Drainer
from worker.drain.sink import HttpResult
from worker.drain.store import ShardStore
from worker.settings import Secret, Settings

SLOW_US = 5000
HOT_USER = "user-hot-000"


class AcceptingSink:
    """Answers every request with a 200, as fast as possible: the queue's own cost is measured."""

    def __init__(self) -> None:
        self.requests = 0

    def body(self, identification: bytes) -> bytes:
        return b"api_key=k&identification=" + identification

    def post(self, body: bytes) -> HttpResult:
        self.requests += 1
        return HttpResult(200, {}, b'{"code":200}')


@dataclass
class Run:
    seconds: float
    delivered: int
    slow_calls: list[tuple[int, str]]  # (microseconds, command)
    waiting: int
    #: Per kind of command (``EVALSHA <sha>``: one script), its longest call in microseconds: on a
    #: slow day every call is slower, so the test compares each with the same kind beside a tenth
    #: of the backlog too.
    longest: dict[str, int] = field(default_factory=dict)

    @property
    def slowest(self) -> int:
        """The longest call of the run, in microseconds (0: none as long as a fifth of SLOW_US)."""
        return max(self.longest.values(), default=0)

    @property
    def per_s(self) -> float:
        return self.delivered / self.seconds


def run(url: str, *, hot: int, others: int, users: int = 20_000, budget: int = 10) -> Run:
    """Defer ``hot`` updates of one user, queue ``others`` of other users, and time their drain.

    SLOWLOG covers everything: the deferral of the hot user's updates, the drain, and a release of
    the hot user when its wait ends.
    """
    client = redis.Redis.from_url(url)
    config = QueueConfig(redis_url=url, namespace=f"backlog-{secrets.token_hex(3)}", shards=1)
    keys = Keys(config.namespace)
    settings = Settings(queue=config, api_key=Secret("k"), user_updates_per_hour=budget, coalesce=False,
                        drain_slice_s=600)  # fmt: skip
    store = ShardStore(client, keys, settings.lease_ttl_s)
    limiter = RateLimiter(client, keys, requests_per_s=None, records_per_s=None, max_batch=1000)
    drainer = Drainer(settings, store, AcceptingSink(), limiter=limiter,  # type: ignore[arg-type]
                      budget=BudgetStore(client, budget, 3600))  # fmt: skip
    producer = IdentifyProducer(config, client=client)
    # Calls from a fifth of SLOW_US on are logged, so that the longest of each kind that could matter
    # is known; logging every call (nested ones included) would slow the runs it measures.
    client.config_set("slowlog-max-len", 100_000)
    client.config_set("slowlog-log-slower-than", SLOW_US // 5)
    client.slowlog_reset()
    try:
        producer.identify_many({"user_id": HOT_USER, "user_properties": {"$set": {"n": n}}} for n in range(hot))
        drainer.drain(0)  # the hot user's budget runs out; the rest of its updates wait
        producer.identify_many(
            {"user_id": f"user-{n % users:06d}", "user_properties": {"$set": {"n": n, "plan": "pro"}}}
            for n in range(others)
        )
        started = time.perf_counter()
        drainer.drain(0)
        seconds = time.perf_counter() - started
        if hot:
            # The budget's window passes and the hot user's wait ends: a claim releases its oldest
            # updates (what one request carries, not all of them), and the budget defers the rest.
            for key in client.scan_iter(f"{config.namespace}:{{s0}}:budget:*"):
                client.delete(key)
            client.zadd(keys.shard(0).parked, {f"u:{HOT_USER}": 0})
            drainer.drain(0)
        calls = sorted(((int(e["duration"]), _command(e)) for e in client.slowlog_get(100_000)), reverse=True)
        slow = [call for call in calls if call[0] >= SLOW_US]
        longest: dict[str, int] = {}
        for us, command in calls:
            longest.setdefault(" ".join(command.split()[:2]), us)  # sorted: the first is the longest
        waiting = int(client.zcard(keys.shard(0).waiting))
        delivered = int(client.hget(keys.shard(0).stats, "delivered") or 0) - 2 * min(hot, budget)
        return Run(seconds, delivered, slow, waiting, longest)
    finally:
        client.config_set("slowlog-log-slower-than", 10000)
        client.config_set("slowlog-max-len", 128)
        for key in client.scan_iter(f"{config.namespace}:*", count=1000):
            client.delete(key)
        client.close()


def _command(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text[:60]


def main() -> None:
    with LocalRedis() as server:
        baseline, loaded, slow, longest_alone, longest_beside = [], [], [], 0, 0
        for _ in range(3):
            base = run(server.url, hot=0, others=100_000)
            with_hot = run(server.url, hot=100_000, others=100_000)
            baseline.append(base.per_s)
            loaded.append(with_hot.per_s)
            slow += with_hot.slow_calls + base.slow_calls
            longest_alone = max(longest_alone, base.slowest)
            longest_beside = max(longest_beside, with_hot.slowest)
            assert with_hot.waiting == 100_000 - 20, with_hot.waiting
        ratio = statistics.median(loaded) / statistics.median(baseline)
        text = "\n".join([
            "Command: `python -m bench.backlog` (private redis-server, one shard, the real Drainer and scripts, "
            "a sink that accepts at once; medians of 3)",
            "",
            "| 100,000 updates of 20,000 users, drained | records/s |",
            "|---|---:|",
            f"| alone | {statistics.median(baseline):,.0f} |",
            f"| beside one user's 100,000 updates deferred by the budget | {statistics.median(loaded):,.0f} |",
            f"| ratio (target: at least 0.80) | {ratio:.2f} |",
            f"| script calls over {SLOW_US // 1000} ms in SLOWLOG (target: none) | {len(slow)} |",
            f"| longest call, alone / beside the backlog (us) | {longest_alone:,} / {longest_beside:,} |",
        ])  # fmt: skip
        publish(text, Path(__file__).resolve().parent / "results" / "backlog.md")


if __name__ == "__main__":
    main()
