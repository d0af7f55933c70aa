"""The enqueue script (producers/lua/enqueue.lua) against a real redis-server: what it appends, how it
numbers and stamps entries, and what it refuses without writing anything."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis

from producers.contract import entry
from producers.contract.errors import ImportTaken, QueueFull, QueueMismatch
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.producer import LAYOUT_VERSION, ChunkResult, IdentifyProducer, JobProgress
from producers.record import ValidRecord
from tests.support import listed, pttl, redis_ms, scored, snapshot, text_hash, users_in_shard


def valid(producer: IdentifyProducer, user: str, n: int = 0) -> ValidRecord:
    return producer.validate({"user_id": user, "user_properties": {"$set": {"n": n}}})


def one_record_call(keys: Keys, shards: int, layout: str, cap: int = 1000) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of an enqueue of one record into shard 0, with no fingerprints and no job."""
    k = keys.shard(0)
    args: list[Any] = [shards, layout, cap, 1, 1, 0, "", 0, 0, 0, "", 0, 0, 1, entry.tail("u:user-1", b"{}")]
    return [keys.meta, keys.total, keys.wakeups, keys.kick, k.queue, k.seq], args


@pytest.mark.shards(2)
def test_entries_are_numbered_per_shard_and_stamped_with_redis_time(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given users of shard 0 (a, c) and of shard 1 (b)
    a, c = users_in_shard(0, 2, 2)
    [b] = users_in_shard(1, 2, 1)
    records = [valid(producer, a, 0), valid(producer, b, 0), valid(producer, a, 1), valid(producer, c, 0)]
    # When one chunk is enqueued
    before = redis_ms(redis_client)
    result = producer.enqueue_chunk(records)
    after = redis_ms(redis_client)
    # Then each shard numbers its entries from 1, in the chunk's order, all with one Redis time stamp
    assert result == ChunkResult(enqueued=4, skipped=0, queued=4)
    shard0, shard1 = listed(redis_client, keys.shard(0).queue), listed(redis_client, keys.shard(1).queue)
    stamp = entry.decode(shard0[0]).enqueued_ms
    assert before <= stamp <= after
    assert shard0 == [
        entry.encode(f"u:{a}", records[0].data, 1, stamp),
        entry.encode(f"u:{a}", records[2].data, 2, stamp),
        entry.encode(f"u:{c}", records[3].data, 3, stamp),
    ]
    assert shard1 == [entry.encode(f"u:{b}", records[1].data, 1, stamp)]
    assert (redis_client.get(keys.shard(0).seq), redis_client.get(keys.shard(1).seq)) == (b"3", b"1")
    assert redis_client.get(keys.total) == b"4"
    assert text_hash(redis_client, keys.meta) == {"shards": "2", "layout": LAYOUT_VERSION}
    # each shard is due at once (no linger recorded), and one kick wakes the dispatcher
    assert scored(redis_client, keys.wakeups) == [("0", stamp), ("1", stamp)]
    assert listed(redis_client, keys.kick) == [b"1"]

    # When a second chunk comes: the numbering goes on, and the kick list still holds one element
    producer.enqueue_chunk([valid(producer, c, 1)])
    assert [entry.decode(r).seq for r in listed(redis_client, keys.shard(0).queue)] == [1, 2, 3, 4]
    assert redis_client.get(keys.shard(0).seq) == b"4"
    assert listed(redis_client, keys.kick) == [b"1"]
    assert redis_client.get(keys.total) == b"5"


@pytest.mark.shards(1)
def test_the_wake_up_is_due_after_the_linger_and_never_postponed(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given workers that linger 500 ms (recorded in meta)
    redis_client.hset(keys.meta, mapping={"shards": 1, "layout": LAYOUT_VERSION, "linger_ms": 500})
    producer.enqueue_chunk([valid(producer, "user-1")])
    stamp = entry.decode(listed(redis_client, keys.shard(0).queue)[0]).enqueued_ms
    # Then the shard is due 500 ms after the enqueue
    assert scored(redis_client, keys.wakeups) == [("0", stamp + 500)]
    # and a later enqueue never pushes an earlier wake-up back (a retry keeps its own time: LT)
    redis_client.zadd(keys.wakeups, {"0": 7})
    producer.enqueue_chunk([valid(producer, "user-1", 1)])
    assert scored(redis_client, keys.wakeups) == [("0", 7)]


def test_the_cap_refuses_a_chunk_whole_and_writes_nothing(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    producer = IdentifyProducer(replace(queue_config, max_queued=3), client=redis_client)
    redis_client.hset(keys.import_progress("nightly"), mapping={"run": "r1", "line": 0, "state": "running"})
    producer.enqueue_chunk([valid(producer, "user-1"), valid(producer, "user-2")])
    before = snapshot(redis_client, namespace)
    # When a chunk of two would pass the cap of three, with fingerprints and a job's progress
    with pytest.raises(QueueFull) as refused:
        producer.enqueue_chunk(
            [valid(producer, "user-3"), valid(producer, "user-4")], fingerprints=[b"f3", b"f4"],
            fingerprint_ttl_ms=60_000, progress=JobProgress("nightly", "r1", line=2, offset=40),
        )  # fmt: skip
    # Then it is refused as a whole, and Redis is exactly as it was
    assert (refused.value.queued, refused.value.cap) == (2, 3)
    assert snapshot(redis_client, namespace) == before
    # The script's own reply says so: {0, queued total, 0}
    script_keys, args = one_record_call(keys, queue_config.shards, LAYOUT_VERSION, cap=2)
    assert Script(redis_client, "producers", "enqueue")(script_keys, args) == [0, 2, 0]
    assert snapshot(redis_client, namespace) == before
    # A chunk that fits exactly is accepted
    assert producer.enqueue_chunk([valid(producer, "user-3")]) == ChunkResult(1, 0, 3)


@pytest.mark.parametrize(
    ("stored", "fields"),
    [
        ({"shards": "16", "layout": LAYOUT_VERSION}, {"shards": "16", "layout": LAYOUT_VERSION}),
        ({"shards": "8", "layout": "1"}, {"shards": "8", "layout": "1"}),
    ],
)
def test_a_queue_laid_out_otherwise_is_refused_with_what_it_holds(
    redis_client: redis.Redis, keys: Keys, namespace: str, producer: IdentifyProducer,
    stored: dict[str, str], fields: dict[str, str],
) -> None:  # fmt: skip
    # Given a queue created with another shard count or entry format
    redis_client.hset(keys.meta, mapping=stored)
    before = snapshot(redis_client, namespace)
    # Then the script refuses with QUEUE_MISMATCH and the layout Redis holds, writing nothing
    script_keys, args = one_record_call(keys, 8, LAYOUT_VERSION)
    with pytest.raises(QueueMismatch) as refused:
        Script(redis_client, "producers", "enqueue")(script_keys, args)
    assert refused.value.fields == fields
    assert snapshot(redis_client, namespace) == before
    # and the producer's error names both sides
    with pytest.raises(QueueMismatch) as raised:
        producer.identify(user_id="user-1")
    assert raised.value.fields == fields
    if fields["shards"] != "8":
        assert "IDENTIFY_SHARDS is 8" in str(raised.value) and "16 shards" in str(raised.value)
    else:
        assert "entry format 1" in str(raised.value)
    assert snapshot(redis_client, namespace) == before


@pytest.mark.shards(1)
def test_fingerprints_skip_unchanged_records_and_follow_the_chunk_s_own_writes(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    fp_a, fp_b, fp_c = (keys.fingerprint(u) for u in ("u:user-a", "u:user-b", "u:user-c"))
    # Given a first chunk: every record is new; '' means "never skip" and stores nothing
    first = [valid(producer, "user-a", 0), valid(producer, "user-b", 0), valid(producer, "user-c", 0)]
    assert producer.enqueue_chunk(first, fingerprints=[b"A0", b"B0", b""], fingerprint_ttl_ms=60_000) == ChunkResult(
        3, 0, 3
    )
    assert (redis_client.get(fp_a), redis_client.get(fp_b), redis_client.exists(fp_c)) == (b"A0", b"B0", 0)
    assert 59_000 < pttl(redis_client, fp_a) <= 60_000
    # When a second chunk repeats a's record, changes b's, sends a's twice more (a change, then
    # that change again) and clears b's fingerprint with ''
    second = [valid(producer, "user-a", 0), valid(producer, "user-b", 1), valid(producer, "user-a", 1),
              valid(producer, "user-a", 1), valid(producer, "user-b", 2)]  # fmt: skip
    result = producer.enqueue_chunk(second, fingerprints=[b"A0", b"B1", b"A1", b"A1", b""], fingerprint_ttl_ms=90_000)
    # Then only what changed is appended, numbered without gaps, and the total counts only that
    assert result == ChunkResult(enqueued=3, skipped=2, queued=6)
    queued = [entry.decode(r) for r in listed(redis_client, keys.shard(0).queue)]
    assert [(e.seq, e.user_key, e.data) for e in queued[3:]] == [
        (4, "u:user-b", second[1].data), (5, "u:user-a", second[2].data), (6, "u:user-b", second[4].data)
    ]  # fmt: skip
    assert redis_client.get(keys.shard(0).seq) == b"6"
    assert redis_client.get(keys.total) == b"6"
    # a's fingerprint is its last, with the new TTL; b's was cleared by its last record
    assert redis_client.get(fp_a) == b"A1"
    assert 89_000 < pttl(redis_client, fp_a) <= 90_000
    assert redis_client.exists(fp_b) == 0


@pytest.mark.shards(1)
def test_the_cap_counts_only_what_fingerprints_let_through(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    producer = IdentifyProducer(replace(queue_config, max_queued=2), client=redis_client)
    producer.enqueue_chunk([valid(producer, "user-a")], fingerprints=[b"A0"], fingerprint_ttl_ms=60_000)
    # two records, one unchanged: one is appended, within the cap of two
    result = producer.enqueue_chunk(
        [valid(producer, "user-a"), valid(producer, "user-b")], fingerprints=[b"A0", b"B0"], fingerprint_ttl_ms=60_000
    )
    assert result == ChunkResult(1, 1, 2)


@pytest.mark.shards(1)
def test_an_import_job_s_progress_is_written_with_its_chunk(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    job = keys.import_progress("nightly")
    redis_client.hset(job, mapping={"run": "r1", "line": 0, "offset": 0, "state": "running", "source": "users.csv"})
    # When two chunks of the run that owns the job are enqueued, the second one finishing it
    before = redis_ms(redis_client)
    first = JobProgress("nightly", "r1", line=3, offset=90, rejected=1, ttl_ms=100_000)
    producer.enqueue_chunk([valid(producer, "user-a"), valid(producer, "user-b")], progress=first)
    after = redis_ms(redis_client)
    progress = text_hash(redis_client, job)
    assert before <= int(progress.pop("updated_ms")) <= after
    assert progress == {"run": "r1", "line": "3", "offset": "90", "state": "running", "source": "users.csv",
                        "enqueued": "2", "skipped": "0", "rejected": "1"}  # fmt: skip
    assert 99_000 < pttl(redis_client, job) <= 100_000
    producer.enqueue_chunk(
        [valid(producer, "user-a", 1)], fingerprints=[b""], fingerprint_ttl_ms=1000,
        progress=JobProgress("nightly", "r1", line=5, offset=150, rejected=1, finished=True, ttl_ms=200_000),
    )  # fmt: skip
    progress = text_hash(redis_client, job)
    del progress["updated_ms"]
    # Then the counts add up, and the position and state are the last chunk's
    assert progress == {"run": "r1", "line": "5", "offset": "150", "state": "finished", "source": "users.csv",
                        "enqueued": "3", "skipped": "0", "rejected": "2"}  # fmt: skip
    assert 199_000 < pttl(redis_client, job) <= 200_000


@pytest.mark.shards(1)
def test_a_job_taken_over_by_another_run_is_refused_and_nothing_written(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    # Given a job that another run (r2) has taken over, in a queue that exists
    redis_client.hset(keys.meta, mapping={"shards": 1, "layout": LAYOUT_VERSION})
    redis_client.hset(keys.import_progress("nightly"), mapping={"run": "r2", "line": 7, "state": "running"})
    before = snapshot(redis_client, namespace)
    # Then the chunk of run r1 is refused with IMPORT_TAKEN, and nothing of it is written
    with pytest.raises(ImportTaken):
        producer.enqueue_chunk([valid(producer, "user-a")], fingerprints=[b"A0"], fingerprint_ttl_ms=60_000,
                               progress=JobProgress("nightly", "r1", line=9, offset=10))  # fmt: skip
    assert snapshot(redis_client, namespace) == before
    # and a job with no progress at all is refused too (it was withdrawn or expired)
    with pytest.raises(ImportTaken):
        producer.enqueue_chunk([valid(producer, "user-a")], progress=JobProgress("gone", "r1", line=1, offset=1))
    assert snapshot(redis_client, namespace) == before
