"""The dead-letter scripts (worker/lua/dlq_replay.lua, dlq_purge.lua) against a real redis-server:
a replayed record waits among its user's updates by its seq; a purge forgets for good.  Each shard
keeps its own dead letters, total and stats; the replayed shard is woken by wake.lua afterwards."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis

from producers.contract import entry
from producers.contract.errors import QueueFull, QueueMismatch
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.producer import LAYOUT_VERSION
from tests.support import listed, make_wait, members, queue_entry, redis_ms, scored, snapshot, text_hash, users_in_shard
from worker.deadletter import DeadLetterQueue, Selection, dead_letter
from worker.drain import waiting

SHARDS = 8
SHARD = 6
LAYOUT = f"{SHARDS}|{LAYOUT_VERSION}"


def bury(client: redis.Redis, keys: Keys, dead_id: str, raw: bytes, reason: str, failed_ms: int = 1000) -> None:
    """A dead letter as the settle script leaves it, in the shard its id names."""
    k = keys.shard(int(dead_id.partition("-")[0]))
    client.hset(k.dlq_entries, dead_id, dead_letter(entry.decode(raw), reason, failed_ms).json)
    client.zadd(k.dlq_index, {dead_id: failed_ms})
    client.hincrby(k.dlq_counts, reason, 1)


def replay(client: redis.Redis, keys: Keys, items: list[tuple[str, str, bytes]], cap: int = 1000,
           layout: str = LAYOUT) -> list[int]:  # fmt: skip
    k = keys.shard(SHARD)
    script_keys = [k.dlq_entries, k.dlq_index, k.dlq_counts, k.total, k.stats, k.layout, k.waiting, k.parked,
                   k.parked_why]  # fmt: skip
    args: list[Any] = [cap, layout]
    for dead_id, reason, raw in items:
        args += [dead_id, reason, entry.decode(raw).user_key, raw]
    return [int(v) for v in Script(client, "worker", "dlq_replay")(script_keys, args)]


def waiting_of(client: redis.Redis, keys: Keys, user: str) -> list[int]:
    return [
        entry.decode(waiting.entry_of(m, user)).seq
        for m in members(client, keys.shard(SHARD).waiting)
        if m.startswith(waiting.prefix(user))
    ]


def test_a_replayed_record_waits_as_its_user_s_oldest_update_due_now(redis_client: redis.Redis, keys: Keys) -> None:
    a3, b5, a8 = queue_entry("u:user-a", 3), queue_entry("u:user-b", 5), queue_entry("u:user-a", 8)
    bury(redis_client, keys, f"{SHARD}-1", a3, "invalid")
    bury(redis_client, keys, f"{SHARD}-2", b5, "expired")
    bury(redis_client, keys, f"{SHARD}-3", a8, "invalid")
    bury(redis_client, keys, f"{SHARD}-4", queue_entry("u:user-z", 1), "invalid")  # not replayed
    redis_client.set(keys.shard(SHARD).total, 4)
    before = redis_ms(redis_client)
    assert replay(redis_client, keys, [(f"{SHARD}-3", "invalid", a8), (f"{SHARD}-1", "invalid", a3),
                                       (f"{SHARD}-2", "expired", b5)]) == [3, 0]  # fmt: skip
    after = redis_ms(redis_client)
    k = keys.shard(SHARD)
    # the entries leave the dead letters, their index and their counts
    assert list(text_hash(redis_client, k.dlq_entries)) == [f"{SHARD}-4"]
    assert [i for i, _ in scored(redis_client, k.dlq_index)] == [f"{SHARD}-4"]
    assert text_hash(redis_client, k.dlq_counts) == {"invalid": "1"}
    # each waits as its user's update, in seq order whatever the order of the call
    assert redis_client.zrange(k.waiting, 0, -1) == sorted(waiting.members([entry.decode(r) for r in (a3, a8, b5)]))
    assert waiting_of(redis_client, keys, "u:user-a") == [3, 8]
    # its user is due now, replayed; the shard's total and stats count them, and its layout is as it was
    parked = dict(scored(redis_client, k.parked))
    assert set(parked) == {"u:user-a", "u:user-b"} and all(before <= t <= after for t in parked.values())
    assert text_hash(redis_client, k.parked_why) == {"u:user-a": "replayed", "u:user-b": "replayed"}
    assert redis_client.get(k.total) == b"7"
    assert text_hash(redis_client, k.stats) == {"replayed": "3"}
    assert redis_client.exists(k.layout) == 0
    # the script touches no global key: waking the shard is wake.lua's, after it
    assert redis_client.exists(keys.wakeups, keys.kick, keys.meta) == 0


def test_a_replayed_record_joins_a_waiting_user_by_seq_and_keeps_its_hold(
    redis_client: redis.Redis, keys: Keys
) -> None:
    k = keys.shard(SHARD)
    held_until = redis_ms(redis_client) + 600_000
    make_wait(redis_client, k, "u:user-a", [5, 9], held_until, reason="held")
    a7 = queue_entry("u:user-a", 7)
    bury(redis_client, keys, f"{SHARD}-1", a7, "invalid")
    assert replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a7)]) == [1, 0]
    assert waiting_of(redis_client, keys, "u:user-a") == [5, 7, 9]
    assert scored(redis_client, k.parked) == [("u:user-a", held_until)]  # NX: its hold stands
    assert text_hash(redis_client, k.parked_why) == {"u:user-a": "held"}


def test_a_replay_run_again_neither_loses_nor_doubles(redis_client: redis.Redis, keys: Keys, namespace: str) -> None:
    a3 = queue_entry("u:user-a", 3)
    bury(redis_client, keys, f"{SHARD}-1", a3, "invalid")
    assert replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a3)]) == [1, 0]
    before = snapshot(redis_client, namespace)
    assert replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a3)]) == [0, 0]
    assert snapshot(redis_client, namespace) == before
    # and run again with the shard at its cap (counting what the first run moved), it is not a
    # refusal: what is gone does not count against the cap
    assert replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a3)], cap=1) == [0, 0]


def test_a_replay_past_the_cap_moves_nothing(redis_client: redis.Redis, keys: Keys, namespace: str) -> None:
    a3, a4 = queue_entry("u:user-a", 3), queue_entry("u:user-a", 4)
    bury(redis_client, keys, f"{SHARD}-1", a3, "invalid")
    bury(redis_client, keys, f"{SHARD}-2", a4, "invalid")
    redis_client.set(keys.shard(SHARD).total, 9)
    redis_client.set(keys.shard(SHARD + 1).total, 0)  # the cap is per shard: room elsewhere changes nothing
    before = snapshot(redis_client, namespace)
    assert replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a3), (f"{SHARD}-2", "invalid", a4)],
                  cap=10) == [0, 9]  # fmt: skip
    assert snapshot(redis_client, namespace) == before


@pytest.mark.parametrize(
    ("stored", "fields"),
    [
        ("16|2", {"shards": "16", "layout": "2"}),  # another shard count
        ("8|1", {"shards": "8", "layout": "1"}),  # another entry format
    ],
)
def test_a_replay_into_a_shard_laid_out_otherwise_is_refused(
    redis_client: redis.Redis, keys: Keys, namespace: str, stored: str, fields: dict[str, str]
) -> None:
    a3 = queue_entry("u:user-a", 3)
    bury(redis_client, keys, f"{SHARD}-1", a3, "invalid")
    redis_client.set(keys.shard(SHARD).layout, stored)
    before = snapshot(redis_client, namespace)
    with pytest.raises(QueueMismatch) as refused:
        replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a3)])
    assert refused.value.fields == fields
    assert snapshot(redis_client, namespace) == before
    # the layout it was written with is no refusal
    redis_client.set(keys.shard(SHARD).layout, LAYOUT)
    assert replay(redis_client, keys, [(f"{SHARD}-1", "invalid", a3)]) == [1, 0]


def test_the_dead_letter_queue_replays_a_selection_wakes_the_shard_and_reports_refusals(
    redis_client: redis.Redis, keys: Keys, queue_config: QueueConfig, namespace: str
) -> None:
    [user] = users_in_shard(SHARD, SHARDS, 1)
    first, second = queue_entry(f"u:{user}", 1), queue_entry(f"u:{user}", 2)
    bury(redis_client, keys, f"{SHARD}-1", second, "invalid", failed_ms=1)
    bury(redis_client, keys, f"{SHARD}-2", first, "expired", failed_ms=2)
    dlq = DeadLetterQueue(queue_config, client=redis_client)
    assert dlq.replay(Selection(reason="expired")) == 1
    after = redis_ms(redis_client)
    assert waiting_of(redis_client, keys, f"u:{user}") == [1]
    # the shard is due at once (wake.lua, LT), and a dispatcher kicked
    [(shard, due)] = scored(redis_client, keys.wakeups)
    assert shard == str(SHARD) and due <= after
    assert listed(redis_client, keys.kick) == [b"1"]
    # past the shard's cap (max_queued over the shards, at least one): QueueFull, nothing moved
    full = DeadLetterQueue(replace(queue_config, max_queued=1), client=redis_client)
    before_state = snapshot(redis_client, namespace)
    with pytest.raises(QueueFull) as refused:
        full.replay(Selection())
    assert (refused.value.queued, refused.value.cap, refused.value.shard) == (1, 1, SHARD)
    assert snapshot(redis_client, namespace) == before_state
    # the shard written with another shard count: QueueMismatch naming both
    redis_client.set(keys.shard(SHARD).layout, f"4|{LAYOUT_VERSION}")
    with pytest.raises(QueueMismatch, match=r"IDENTIFY_SHARDS is 8.*4 shards"):
        dlq.replay(Selection())
    assert snapshot(redis_client, namespace) == {**before_state, keys.shard(SHARD).layout.encode():
                                                 ("string", f"4|{LAYOUT_VERSION}".encode())}  # fmt: skip


def test_a_purge_deletes_for_good_and_skips_what_is_gone(redis_client: redis.Redis, keys: Keys) -> None:
    bury(redis_client, keys, f"{SHARD}-1", queue_entry("u:user-a", 1), "invalid")
    bury(redis_client, keys, f"{SHARD}-2", queue_entry("u:user-a", 2), "invalid")
    bury(redis_client, keys, f"{SHARD}-3", queue_entry("u:user-b", 1), "expired")
    k = keys.shard(SHARD)
    purge = Script(redis_client, "worker", "dlq_purge")
    script_keys = [k.dlq_entries, k.dlq_index, k.dlq_counts]
    assert purge(script_keys, [f"{SHARD}-1", "invalid", f"{SHARD}-3", "expired", f"{SHARD}-9", "invalid"]) == 2
    assert list(text_hash(redis_client, k.dlq_entries)) == [f"{SHARD}-2"]
    assert [i for i, _ in scored(redis_client, k.dlq_index)] == [f"{SHARD}-2"]
    assert text_hash(redis_client, k.dlq_counts) == {"invalid": "1"}
    assert purge(script_keys, [f"{SHARD}-1", "invalid"]) == 0
    assert text_hash(redis_client, k.dlq_counts) == {"invalid": "1"}


def test_the_dead_letter_queue_purges_each_shard_s_own(
    redis_client: redis.Redis, keys: Keys, queue_config: QueueConfig
) -> None:
    bury(redis_client, keys, "1-1", queue_entry("u:user-a", 1), "invalid")
    bury(redis_client, keys, "2-1", queue_entry("u:user-b", 1), "invalid")
    bury(redis_client, keys, "2-2", queue_entry("u:user-b", 2), "expired")
    dlq = DeadLetterQueue(queue_config, client=redis_client)
    assert dlq.purge(Selection(reason="invalid")) == 2
    assert [(d["id"], d["reason"]) for d in dlq.entries()] == [("2-2", "expired")]
    assert text_hash(redis_client, keys.shard(1).dlq_counts) == {}
    assert text_hash(redis_client, keys.shard(2).dlq_counts) == {"expired": "1"}
