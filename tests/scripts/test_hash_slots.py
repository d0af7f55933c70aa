"""Every Lua script touches the keys of one Redis Cluster hash slot (producers/contract/keys.py), as
its Python caller runs it: one test per script.

Each test drives the script's real caller (the producer, the importer's job store, the drainer's
shard store, the dispatcher, the dead-letter queue ...) against a one-node Redis Cluster that owns
every slot, through the cluster client ``connect`` gives, and then checks two things:

* every call's KEYS (recorded as the caller passed them) share one hash tag, ``{<namespace>}`` or
  ``{sN}``, and so one slot (``redis.crc.key_slot``);
* Redis ran the script: a cluster refuses KEYS of several slots (CROSSSLOT), and, since the scripts
  are sent here with a ``#!lua`` shebang, it also refuses a script that touches any key outside its
  slot, declared or not ("Script attempted to access keys that do not hash to the same slot").
  Without the shebang Redis allows that for compatibility, and a multi-node cluster would only
  fail when the keys happen to live on another node.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from producers.contract import entry, scripts
from producers.contract.connection import connect
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.importer.job import JobStore
from producers.producer import IdentifyProducer, JobProgress
from tests.support import queue_entry, users_in_shard
from worker.deadletter import DeadLetterQueue, Selection, dead_letter
from worker.devtools.local_redis import LocalRedis, free_port
from worker.dispatcher import Dispatcher
from worker.drain import waiting
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.settle import Parking, Settlement
from worker.drain.store import ShardStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_NAMES = sorted(p.stem for p in [*ROOT.glob("producers/lua/*.lua"), *ROOT.glob("worker/lua/*.lua")])
SHARDS = 4
_TAG = re.compile(r"\{([^}]*)\}")


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[LocalRedis]:
    """A redis-server in cluster mode, alone, owning all 16384 slots: every key is local, so only
    the slot rules can refuse a call.  Its bus port is a free one of its own (the default, the
    port plus 10000, may be taken or past 65535)."""
    server = LocalRedis(extra=["--cluster-enabled", "yes", "--cluster-port", str(free_port())]).start()
    admin = server.admin()
    try:
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.02)
    finally:
        admin.close()
    yield server
    server.cleanup()


@dataclass
class Env:
    client: Any
    keys: Keys
    config: QueueConfig


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Every script call made from now on, as (script, KEYS); scripts are sent with a shebang, so
    that the cluster checks every key they touch."""
    recorded: list[tuple[str, list[str]]] = []
    original_source, original_call, original_queue = scripts.source, Script.__call__, Script.queue

    def source(package: str, name: str) -> str:
        return "#!lua\n" + original_source(package, name)

    def call(self: Script, keys: list[Any], args: list[Any] | None = None, *, action: str = "") -> Any:
        recorded.append((self.name, [str(k) for k in keys]))
        return original_call(self, keys, args, action=action)

    def queue(self: Script, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        recorded.append((self.name, [str(k) for k in keys]))
        original_queue(self, pipe, keys, args)

    monkeypatch.setattr(scripts, "source", source)
    monkeypatch.setattr(Script, "__call__", call)
    monkeypatch.setattr(Script, "queue", queue)
    return recorded


@pytest.fixture
def env(cluster_node: LocalRedis, namespace: str, calls: list[tuple[str, list[str]]]) -> Iterator[Env]:
    client = connect(cluster_node.url)
    assert type(client).__name__ == "RedisCluster"
    yield Env(client, Keys(namespace), QueueConfig(redis_url=cluster_node.url, namespace=namespace, shards=SHARDS))
    client.close()


# -- what each caller does ------------------------------------------------------------------------
def enqueue(env: Env) -> None:
    """Records of every shard, with fingerprints and an import job's progress (per shard), then woken."""
    producer = IdentifyProducer(env.config, client=env.client)
    users = [users_in_shard(s, SHARDS, 1)[0] for s in range(SHARDS)]
    records = [producer.validate({"user_id": u, "user_properties": {"$set": {"n": 1}}}) for u in users]
    result = producer.enqueue_chunk(records, fingerprints=[b"f"] * SHARDS, fingerprint_ttl_ms=60_000,
                                    progress=JobProgress("nightly", "r1", line=SHARDS, offset=40),
                                    lines=list(range(1, SHARDS + 1)))  # fmt: skip
    assert result.enqueued == SHARDS
    assert producer.enqueue_valid(records) == SHARDS  # no job, no fingerprints


def import_job(env: Env) -> None:
    """A job started (taken, every shard claimed), advanced; another started and withdrawn."""
    store = JobStore(env.client, env.keys, SHARDS)
    current = {"source": "/data/users.csv", "size": "10", "mtime_ns": "5", "format": "csv"}
    _, _, token = store.begin("nightly", current, resume=False, restart=False)
    store.advance("nightly", token, line=10, offset=100, enqueued=9, skipped=0, rejected=1, finished=False)
    _, _, other = store.begin("stopped", current, resume=False, restart=False)
    store.withdraw("stopped", other)
    assert store.read("nightly") is not None and store.read("stopped") is None


def drain(env: Env) -> None:
    """One drain of shard 1: lease, begin, claim, the oldest waiting, a settle that delivers,
    dead-letters (with a fingerprint) and parks, a 413's size, release (and its wake-up), a lost lease."""
    enqueue(env)
    store = ShardStore(env.client, env.keys, 60)
    shard = 1
    token = store.acquire(shard)
    assert token is not None
    store.renew(shard, token)
    assert store.begin().wait_ms == 0
    k = env.keys.shard(shard)
    [user] = users_in_shard(shard, SHARDS, 1)
    env.client.rpush(k.queue, queue_entry(f"u:{user}", 7), queue_entry(f"u:{user}", 8))
    claim = store.claim(shard, token, 10, 1_000_000)
    assert len(claim.entries) == 4
    decoded = [entry.decode(e) for e in claim.entries]
    ids = store.settle(shard, token, Settlement(
        delivered=2, requests=1, replace=[], failed_ms=claim.now_ms, error="HTTP 400",
        dead=[dead_letter(decoded[2], "invalid", claim.now_ms)],
        parked=[Parking(f"u:{user}", 1000, waiting.HELD, waiting.members(decoded[3:]))],
    ))  # fmt: skip
    assert ids == [f"{shard}-1"]
    assert store.oldest_waiting(shard, [f"u:{user}", "u:nobody"]) == {f"u:{user}": decoded[3].seq}
    store.lower_max_request_bytes(100_000, 60_000)
    store.release(shard, token)
    store.lost(shard, token)


def blocking(env: Env) -> None:
    store = ShardStore(env.client, env.keys, 60)
    store.block("HTTP 400 Invalid API key", "", 400, base_s=1, cap_s=8, jitter=0.5)
    assert store.begin().wait_ms > 0
    assert store.probe_now() is True
    assert store.unblock() >= 0


def budget(env: Env) -> None:
    store = BudgetStore(env.client, 3, 3600)
    now = int(env.client.time()[0]) * 1000
    reservation = store.reserve(env.keys.shard(2), {"u:a": 2, "u:b": 5}, now, {})
    store.refund(reservation.slot_key, {"u:a": 1})
    store.move(env.keys.shard(2), reservation.slot_key, (now, now + 3_600_000), {"u:a": 1, "u:b": 3}, {"u:b": 2})


def rate_limit(env: Env) -> None:
    limiter = RateLimiter(env.client, env.keys, requests_per_s=100, records_per_s=1000, max_batch=10)
    assert limiter.try_acquire(5) == 0


def dispatch(env: Env) -> None:
    """Due shards popped and marked (one owned, one waiting to retry: woken again), then a sweep."""
    enqueue(env)
    env.client.set(env.keys.shard(2).lease, "t")
    env.client.hset(env.keys.shard(3).state, "retry_at", int(env.client.time()[0]) * 1000 + 60_000)
    sent: list[int] = []
    dispatcher = Dispatcher(env.client, env.keys, SHARDS, sent.append, sweep_interval_s=60, task_grace_s=10)
    dispatcher.dispatch_due()
    assert sent == [0, 1]
    env.client.delete(env.keys.wakeups)
    assert dispatcher.sweep() == 3  # 0 and 1 (a task sent, not come), 3 (at its retry); 2 is owned


def dead_letters(env: Env) -> None:
    """Dead letters of two shards replayed (and woken), then purged."""
    for shard in (1, 3):
        [user] = users_in_shard(shard, SHARDS, 1)
        k = env.keys.shard(shard)
        for n in (1, 2):
            doc = dead_letter(entry.decode(queue_entry(f"u:{user}", n)), "invalid", 1000 + n)
            env.client.hset(k.dlq_entries, f"{shard}-{n}", doc.json)
            env.client.zadd(k.dlq_index, {f"{shard}-{n}": 1000 + n})
            env.client.hincrby(k.dlq_counts, "invalid", 1)
    dlq = DeadLetterQueue(env.config, client=env.client)
    assert dlq.replay(Selection(ids=("1-1", "3-1"))) == 2
    assert dlq.purge(Selection()) == 2


DRIVERS: dict[str, Callable[[Env], None]] = {
    "enqueue": enqueue, "wake": enqueue,
    "import_take": import_job, "import_claim": import_job, "import_advance": import_job, "import_withdraw": import_job,
    "lease_acquire": drain, "lease_renew": drain, "drain_begin": drain, "claim": drain, "waiting_oldest": drain,
    "settle": drain, "request_size": drain, "lease_release": drain, "lease_lost": drain,
    "block": blocking, "probe_now": blocking, "unblock": blocking,
    "budget_reserve": budget, "budget_refund": budget, "budget_move": budget,
    "rate_limit": rate_limit,
    "dispatch_pop_due": dispatch, "dispatch_mark": dispatch, "dispatch_sweep": dispatch,
    "dlq_replay": dead_letters, "dlq_purge": dead_letters,
}  # fmt: skip


def test_every_script_has_its_slot_test() -> None:
    assert sorted(DRIVERS) == SCRIPT_NAMES


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_each_script_touches_one_hash_slot(env: Env, calls: list[tuple[str, list[str]]], name: str) -> None:
    DRIVERS[name](env)  # Redis refused nothing: no key outside a call's slot was touched
    of_script = [keys for script, keys in calls if script == name]
    assert of_script, f"the caller never ran {name}.lua"
    tags = {env.keys.namespace} | {f"s{s}" for s in range(SHARDS)}
    for script, keys in calls:
        assert keys, f"{script}.lua was called with no key"
        found = {m.group(1) if (m := _TAG.search(k)) else None for k in keys}
        assert len(found) == 1 and found <= tags, f"{script}.lua was called with keys of hash tags {found}: {keys}"
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, f"{script}.lua was called with keys of {len(slots)} slots: {keys}"
