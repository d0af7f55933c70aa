"""The dispatcher's scripts (worker/lua/dispatch_pop_due.lua, dispatch_mark.lua, dispatch_sweep.lua)
against a real redis-server: which wake-ups are popped (global keys), which of their shards get a
drain task or are woken again at their time (each shard's keys), and when a sweep says a shard
needs a drain; the Dispatcher puts them together with wake.lua."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from producers.contract.connection import connect
from producers.contract.errors import StoreError
from producers.contract.keys import Keys
from producers.contract.scripts import Script, source
from tests.support import AnswerDroppingProxy, listed, queue_entry, redis_ms, scored, snapshot, text_hash
from worker.dispatcher import MAX_WAIT_S, Dispatcher

SHARDS = 4
GRACE_MS = 10_000


def pop_due(client: redis.Redis, keys: Keys, limit: int = 500) -> tuple[list[int], int, int]:
    """(due shards, next due ms or -1, now) from one call of the script."""
    reply: list[Any] = Script(client, "worker", "dispatch_pop_due")([keys.wakeups, keys.blocked], [limit])
    marker = reply.index(-1)
    assert len(reply) == marker + 3
    return [int(s) for s in reply[:marker]], int(reply[marker + 1]), int(reply[marker + 2])


def dispatcher(client: redis.Redis, keys: Keys, sent: list[int]) -> Dispatcher:
    return Dispatcher(client, keys, SHARDS, sent.append, sweep_interval_s=60, task_grace_s=GRACE_MS / 1000)


# -- pop due --------------------------------------------------------------------------------------
def test_due_shards_are_popped_and_nothing_of_theirs_is_touched(
    redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    now = redis_ms(redis_client)
    redis_client.set(keys.shard(0).lease, "t")  # owned or not: popping looks at the global keys only
    redis_client.hset(keys.shard(2).state, "retry_at", now + 60_000)
    redis_client.zadd(keys.wakeups, {"0": now - 10, "2": now - 5, "3": now + 60_000})
    shards_before = {k: v for k, v in snapshot(redis_client, namespace).items() if b"{s" in k}
    due, next_due, at = pop_due(redis_client, keys)
    assert due == [0, 2]
    assert (next_due, now <= at) == (now + 60_000, True)
    assert scored(redis_client, keys.wakeups) == [("3", now + 60_000)]
    assert {k: v for k, v in snapshot(redis_client, namespace).items() if b"{s" in k} == shards_before


def test_nothing_due_answers_no_next_time(redis_client: redis.Redis, keys: Keys) -> None:
    before = redis_ms(redis_client)
    due, next_due, at = pop_due(redis_client, keys)
    assert (due, next_due) == ([], -1) and at >= before


def test_while_sending_is_blocked_every_due_shard_is_put_back_at_the_next_probe(
    redis_client: redis.Redis, keys: Keys
) -> None:
    now = redis_ms(redis_client)
    redis_client.hset(keys.blocked, "next_probe_ms", now + 5000)
    redis_client.zadd(keys.wakeups, {"1": now + 30_000, "3": now - 1, "2": now - 2})
    due, next_due, _ = pop_due(redis_client, keys)
    assert (due, next_due) == ([], now + 5000)
    assert scored(redis_client, keys.wakeups) == [("2", now + 5000), ("3", now + 5000), ("1", now + 30_000)]
    # once the probe is due, they are popped
    redis_client.hset(keys.blocked, "next_probe_ms", now - 1)
    redis_client.zadd(keys.wakeups, {"2": now - 2, "3": now - 1})
    assert pop_due(redis_client, keys)[:2] == ([2, 3], now + 30_000)


def test_at_most_the_asked_number_is_popped_earliest_first(redis_client: redis.Redis, keys: Keys) -> None:
    now = redis_ms(redis_client)
    redis_client.zadd(keys.wakeups, {"0": now - 1, "1": now - 3, "2": now - 2})
    due, next_due, _ = pop_due(redis_client, keys, limit=2)
    assert (due, next_due) == ([1, 2], now - 1)
    assert scored(redis_client, keys.wakeups) == [("0", now - 1)]


# -- mark -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lease", "state", "reply", "marked"),
    [
        (None, {}, "send", True),  # free, never sent: a task now
        (None, {"dispatched_at": -GRACE_MS - 1}, "send", True),  # sent and lost past the grace: again
        (None, {"dispatched_at": -100}, "nothing", False),  # a task on its way: no second one
        ("t", {}, "nothing", False),  # being drained: its drainer sees the new work
        ("t", {"retry_at": 30_000}, "nothing", False),  # owned wins over a retry
        (None, {"retry_at": 30_000}, "retry", False),  # waiting to retry: woken again then
        (None, {"retry_at": 30_000, "dispatched_at": -GRACE_MS - 1}, "retry", False),
        (None, {"retry_at": -1}, "send", True),  # its retry time has come
    ],
)
def test_a_due_shard_gets_a_task_only_when_free_and_not_waiting_and_none_is_on_its_way(
    redis_client: redis.Redis, keys: Keys, lease: str | None, state: dict[str, int], reply: str, marked: bool
) -> None:
    k = keys.shard(1)
    now = redis_ms(redis_client)
    if lease:
        redis_client.set(k.lease, lease)
    if state:
        redis_client.hset(k.state, mapping={f: now + v for f, v in state.items()})
    before = text_hash(redis_client, k.state)
    got = [int(v) for v in Script(redis_client, "worker", "dispatch_mark")([k.lease, k.state], [GRACE_MS])]
    after = redis_ms(redis_client)
    expected = {"send": [1, 0], "nothing": [0, 0], "retry": [0, now + 30_000]}[reply]
    assert got == expected
    if marked:
        at = int(text_hash(redis_client, k.state)["dispatched_at"])
        assert now <= at <= after
        assert text_hash(redis_client, k.state) == {**before, "dispatched_at": str(at)}
    else:
        assert text_hash(redis_client, k.state) == before
    assert redis_client.get(k.lease) == (lease.encode() if lease else None)


def test_the_dispatcher_sends_one_task_per_due_shard(redis_client: redis.Redis, keys: Keys) -> None:
    sent: list[int] = []
    d = dispatcher(redis_client, keys, sent)
    now = redis_ms(redis_client)
    redis_client.zadd(keys.wakeups, {"3": now - 1, "1": now - 2})
    assert d.dispatch_due() == MAX_WAIT_S
    assert sent == [1, 3]
    assert d.dispatch_due() == MAX_WAIT_S and sent == [1, 3]
    assert all(int(text_hash(redis_client, keys.shard(s).state)["dispatched_at"]) >= now for s in (1, 3))


def test_the_dispatcher_drops_an_owned_or_sent_shard_and_wakes_a_waiting_one_at_its_time(
    redis_client: redis.Redis, keys: Keys
) -> None:
    sent: list[int] = []
    now = redis_ms(redis_client)
    redis_client.set(keys.shard(0).lease, "t")  # being drained
    redis_client.hset(keys.shard(1).state, "dispatched_at", now - 100)  # task sent, within the grace
    redis_client.hset(keys.shard(2).state, "retry_at", now + 30_000)  # waiting to retry
    redis_client.zadd(keys.wakeups, {"0": now, "1": now, "2": now, "3": now})
    dispatcher(redis_client, keys, sent).dispatch_due()
    assert sent == [3]
    # the dropped ones are not put back; the waiting one is, at its retry time, with a kick
    assert scored(redis_client, keys.wakeups) == [("2", now + 30_000)]
    assert listed(redis_client, keys.kick) == [b"1"]
    assert text_hash(redis_client, keys.shard(1).state) == {"dispatched_at": str(now - 100)}


# -- sweep ----------------------------------------------------------------------------------------
def sweep(client: redis.Redis, keys: Keys, shard: int) -> int:
    k = keys.shard(shard)
    return int(Script(client, "worker", "dispatch_sweep")([k.lease, k.queue, k.inflight, k.parked]))


@pytest.mark.parametrize(
    ("work", "owned", "due"),
    [
        ("queue", False, "now"),
        ("inflight", False, "now"),  # a killed drainer's
        ("parked", False, "first"),  # when its first waiting user may go
        ("queue+parked", False, "now"),
        ("", False, "none"),  # nothing to do
        ("queue", True, "none"),  # its owner sees it
        ("parked", True, "none"),
    ],
)
def test_a_sweep_says_when_a_shard_with_work_and_no_owner_needs_a_drain(
    redis_client: redis.Redis, keys: Keys, namespace: str, work: str, owned: bool, due: str
) -> None:
    k = keys.shard(2)
    now = redis_ms(redis_client)
    if "queue" in work:
        redis_client.rpush(k.queue, queue_entry("u:user-1", 1))
    if "inflight" in work:
        redis_client.rpush(k.inflight, queue_entry("u:user-2", 1))
    if "parked" in work:
        redis_client.zadd(k.parked, {"u:user-3": now + 90_000, "u:user-4": now + 80_000})
    if owned:
        redis_client.set(k.lease, "t")
    before = snapshot(redis_client, namespace)
    reply = sweep(redis_client, keys, 2)
    after = redis_ms(redis_client)
    if due == "now":
        assert now <= reply <= after
    else:
        assert reply == {"first": now + 80_000, "none": -1}[due]
    assert snapshot(redis_client, namespace) == before  # it only reads: wake.lua (NX) adds the wake-up


def test_the_dispatcher_sweeps_every_shard_and_leaves_a_wake_up_alone(redis_client: redis.Redis, keys: Keys) -> None:
    now = redis_ms(redis_client)
    redis_client.rpush(keys.shard(0).queue, queue_entry("u:user-1", 1))
    redis_client.zadd(keys.wakeups, {"0": 42})  # already woken: NX keeps its time
    redis_client.rpush(keys.shard(1).inflight, queue_entry("u:user-2", 1))
    redis_client.zadd(keys.shard(2).parked, {"u:user-3": now + 80_000})
    redis_client.rpush(keys.shard(3).queue, queue_entry("u:user-4", 1))
    redis_client.set(keys.shard(3).lease, "t")  # owned
    assert dispatcher(redis_client, keys, []).sweep() == 2
    after = redis_ms(redis_client)
    woken = dict(scored(redis_client, keys.wakeups))
    assert set(woken) == {"0", "1", "2"}
    assert woken["0"] == 42 and now <= woken["1"] <= after and woken["2"] == now + 80_000
    assert listed(redis_client, keys.kick) == [b"1"]


def test_marks_whose_answer_is_lost_leave_their_shards_due_again_at_once(
    redis_client: redis.Redis, keys: Keys, proxy: AnswerDroppingProxy
) -> None:
    # Given two due shards, and a dispatcher whose client (the worker's: no call sent again) loses
    # the answer to its marks after they ran
    client = connect(f"redis://127.0.0.1:{proxy.port}/0", resend=False)
    sent: list[int] = []
    d = dispatcher(client, keys, sent)
    client.script_load(source("worker", "dispatch_mark"))  # so the first call runs it
    redis_client.zadd(keys.wakeups, {"1": 0, "3": 0})
    proxy.drop_answer_to(Script(None, "worker", "dispatch_mark").sha.encode())
    # When it dispatches: the marks fail
    with pytest.raises(StoreError):
        d.dispatch_due()
    # Then no task went, and the shards are due again, unmarked: the next round sends both at once
    assert proxy.dropped == 1 and sent == []
    assert {s: int(at) for s, at in scored(redis_client, keys.wakeups)} == {"1": 0, "3": 0}
    d.dispatch_due()
    assert sorted(sent) == [1, 3]
    client.close()
