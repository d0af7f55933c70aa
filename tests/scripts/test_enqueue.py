"""The enqueue script (producers/lua/enqueue.lua) against a real redis-server: what it appends, how it
numbers and stamps entries, what each shard records with its records (total, layout, fingerprints,
an import job's progress), and what it refuses without writing anything, in any of its shards.

On one Redis the script wakes the drains of the shards it wrote (on a Redis Cluster wake.lua does,
after it: tests/scripts/test_wake.py), so the tests here check the wake-ups too."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis

from producers.contract import entry
from producers.contract.errors import ImportAhead, ImportTaken, QueueFull, QueueMismatch
from producers.contract.keys import Keys, ShardKeys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.producer import LAYOUT_VERSION, ChunkResult, IdentifyProducer, JobProgress
from producers.record import ValidRecord
from tests.support import listed, pttl, redis_ms, scored, snapshot, text_hash, users_in_shard


def valid(producer: IdentifyProducer, user: str, n: int = 0) -> ValidRecord:
    return producer.validate({"user_id": user, "user_properties": {"$set": {"n": n}}})


def one_record_call(keys: Keys, shards: int, cap: int = 1000, shard: int = 0) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of an enqueue of one record into ``shard``, with no fingerprints and no job."""
    k = keys.shard(shard)
    args: list[Any] = [f"{shards}|{LAYOUT_VERSION}", cap, 1, 0, "", 0, 0, 0, 0, 0, "",
                       shard, 1, entry.tail("u:user-1", b"{}")]  # fmt: skip
    return [k.layout, k.queue, k.seq, k.total, k.minutes], args


@pytest.mark.shards(2)
def test_entries_are_numbered_per_shard_and_stamped_with_redis_time(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given users of shard 0 (a, c) and of shard 1 (b)
    a, c = users_in_shard(0, 2, 2)
    [b] = users_in_shard(1, 2, 1)
    records = [valid(producer, a, 0), valid(producer, b, 0), valid(producer, a, 1), valid(producer, c, 0)]
    # When one chunk is enqueued (one script call holding both shards, on one Redis)
    before = redis_ms(redis_client)
    result = producer.enqueue_chunk(records)
    after = redis_ms(redis_client)
    # Then each shard numbers its entries from 1, in the chunk's order, all with one Redis time stamp
    assert result == ChunkResult(enqueued=4, skipped=0, already=0)
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
    # each shard counts its own total and records the layout it was written with, and the queue's
    # layout is recorded once written to, for the producers and workers after (a shard they would
    # write may be one this producer never wrote)
    assert (redis_client.get(keys.shard(0).total), redis_client.get(keys.shard(1).total)) == (b"3", b"1")
    assert {redis_client.get(keys.shard(s).layout) for s in (0, 1)} == {f"2|{LAYOUT_VERSION}".encode()}
    assert text_hash(redis_client, keys.meta) == {"shards": "2", "layout": LAYOUT_VERSION}
    # each shard is due at once (no linger recorded), and one kick wakes the dispatcher
    woken = scored(redis_client, keys.wakeups)
    assert [s for s, _ in woken] == ["0", "1"] and all(stamp <= t <= redis_ms(redis_client) for _, t in woken)
    assert listed(redis_client, keys.kick) == [b"1"]

    # When a second chunk comes: the numbering goes on, and the kick list still holds one element
    producer.enqueue_chunk([valid(producer, c, 1)])
    assert [entry.decode(r).seq for r in listed(redis_client, keys.shard(0).queue)] == [1, 2, 3, 4]
    assert redis_client.get(keys.shard(0).seq) == b"4"
    assert listed(redis_client, keys.kick) == [b"1"]
    assert (redis_client.get(keys.shard(0).total), redis_client.get(keys.shard(1).total)) == (b"4", b"1")


@pytest.mark.parametrize(("counter", "n"), [(0, 25), (7, 4), (95, 10), (998, 1_005), (99_999_995, 12)])
def test_sequence_numbers_are_written_exactly_across_digit_and_slice_boundaries(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys, counter: int, n: int
) -> None:
    # Given a shard whose counter stands just below a power of ten (the script writes a run of
    # numbers as its tens and a last digit), and a call longer than one slice of 1,000 appends
    k = keys.shard(0)
    redis_client.set(k.seq, counter)
    [user] = users_in_shard(0, producer.config.shards, 1)
    records = [valid(producer, user, i) for i in range(n)]
    # When it is enqueued
    producer.enqueue_chunk(records)
    # Then every entry is the encoder's own text, numbered on from the counter
    queued = listed(redis_client, k.queue)
    stamp = entry.decode(queued[0]).enqueued_ms
    assert queued == [entry.encode(f"u:{user}", r.data, counter + i, stamp) for i, r in enumerate(records, 1)]
    assert int(redis_client.get(k.seq) or 0) == counter + n


def test_the_script_touches_only_its_shards_keys_and_wakes_nothing(
    redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    script_keys, args = one_record_call(keys, 8, shard=3)
    before = redis_ms(redis_client)
    assert Script(redis_client, "producers", "enqueue")(script_keys, args) == [1, 1, 0, 0]
    after = redis_ms(redis_client)
    k = keys.shard(3)
    [raw] = listed(redis_client, k.queue)
    assert entry.decode(raw).seq == 1 and before <= entry.decode(raw).enqueued_ms <= after
    minute = entry.decode(raw).enqueued_ms // 60_000
    assert text_hash(redis_client, k.minutes) == {f"m{minute % 64}": str(minute), f"d{minute % 64}": "0",
                                                  f"e{minute % 64}": "1"}  # fmt: skip
    written = {key for key in snapshot(redis_client, namespace)}
    assert written == {key.encode() for key in (k.layout, k.queue, k.seq, k.total, k.minutes)}


@pytest.mark.shards(1)
def test_the_wake_up_is_due_after_the_linger_and_never_postponed(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given workers that linger 500 ms (recorded in meta)
    redis_client.hset(keys.meta, mapping={"shards": 1, "layout": LAYOUT_VERSION, "linger_ms": 500})
    producer.enqueue_chunk([valid(producer, "user-1")])
    after = redis_ms(redis_client)
    stamp = entry.decode(listed(redis_client, keys.shard(0).queue)[0]).enqueued_ms
    # Then the shard is due 500 ms after the enqueue
    [(shard, due)] = scored(redis_client, keys.wakeups)
    assert shard == "0" and stamp + 500 <= due <= after + 500
    # and a later enqueue never pushes an earlier wake-up back (a retry keeps its own time: LT)
    redis_client.zadd(keys.wakeups, {"0": 7})
    producer.enqueue_chunk([valid(producer, "user-1", 1)])
    assert scored(redis_client, keys.wakeups) == [("0", 7)]


@pytest.mark.shards(2)
def test_the_cap_refuses_the_call_whole_and_writes_nothing(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    # Given a cap of 4 on one Redis (the whole queue's), and shard 1 holding 2, shard 0 none
    producer = IdentifyProducer(replace(queue_config, max_queued=4), client=redis_client)
    a = users_in_shard(1, 2, 4)
    [b] = users_in_shard(0, 2, 1)
    producer.enqueue_chunk([valid(producer, a[0]), valid(producer, a[1])])
    for s in (0, 1):
        redis_client.hset(keys.shard(s).import_progress("nightly"), "run", "r1")
    before = snapshot(redis_client, keys.namespace)
    # When a chunk would bring the queue to 5, with fingerprints and a job's progress, shard 0's part first
    with pytest.raises(QueueFull) as refused:
        producer.enqueue_chunk(
            [valid(producer, b), valid(producer, a[2]), valid(producer, a[3])], fingerprints=[b"fb", b"f2", b"f3"],
            fingerprint_ttl_ms=60_000, progress=JobProgress("nightly", "r1", line=3, offset=40), lines=[1, 2, 3],
        )  # fmt: skip
    # Then it is refused as a whole, shard 0's part too, and Redis is exactly as it was
    assert (refused.value.queued, refused.value.cap, refused.value.shard, refused.value.enqueued) == (2, 4, None, 0)
    assert "the queue holds 2 records, IDENTIFY_MAX_QUEUED is 4" in str(refused.value)
    assert snapshot(redis_client, keys.namespace) == before  # the wake-ups too: nothing was written
    # A chunk that fills the queue exactly is accepted, however it falls on the shards
    assert producer.enqueue_chunk([valid(producer, b), valid(producer, a[2])]) == ChunkResult(2, 0, 0)
    assert (redis_client.get(keys.shard(0).total), redis_client.get(keys.shard(1).total)) == (b"1", b"3")


@pytest.mark.shards(2)
@pytest.mark.parametrize("whole", [False, True])
def test_the_script_checks_a_shard_s_share_or_the_whole_queue(
    redis_client: redis.Redis, keys: Keys, namespace: str, whole: bool
) -> None:
    # Given shard 1 holding 2 records and shard 0 holding 1
    redis_client.set(keys.shard(1).total, 2)
    redis_client.set(keys.shard(0).total, 1)
    script_keys, args = one_record_call(keys, 2, cap=3 if whole else 2, shard=1)
    if whole:  # on one Redis: every shard's total ends KEYS, and ARGV[9] says how many
        args[8] = 2
        script_keys += [keys.shard(0).total, keys.shard(1).total]
    before = snapshot(redis_client, namespace)
    # Then one more record in shard 1 passes the cap: {0, the shard or -1 for the whole queue, queued}
    reply = Script(redis_client, "producers", "enqueue")(script_keys, args)
    assert reply == ([0, -1, 3] if whole else [0, 1, 2])
    assert snapshot(redis_client, namespace) == before


@pytest.mark.shards(2)
def test_the_script_wakes_only_the_shards_it_wrote_never_postponing_a_wake_up(
    redis_client: redis.Redis, keys: Keys, namespace: str
) -> None:
    # Given workers that linger 500 ms, and shard 0 due long ago
    redis_client.hset(keys.meta, "linger_ms", 500)
    redis_client.zadd(keys.wakeups, {"0": 1000})
    enqueue = Script(redis_client, "producers", "enqueue")
    wake_keys = [keys.meta, keys.wakeups, keys.kick]
    for shard in (0, 1):
        script_keys, args = one_record_call(keys, 2, shard=shard)
        args[8], args[9] = 2, 1  # the whole queue's cap, and wake the drains
        script_keys += [keys.shard(0).total, keys.shard(1).total, *wake_keys]
        before = redis_ms(redis_client)
        assert enqueue(script_keys, args) == [1, 1, 0, 0]
    # Then shard 1 is due after the linger, shard 0 stays due when it was, and one kick wakes a dispatcher
    woken = dict(scored(redis_client, keys.wakeups))
    assert woken["0"] == 1000 and before + 500 <= woken["1"] <= redis_ms(redis_client) + 500
    assert listed(redis_client, keys.kick) == [b"1"]
    # A call that writes nothing (every record left out as unchanged) wakes nothing
    redis_client.delete(keys.wakeups, keys.kick)
    script_keys, args = one_record_call(keys, 2, shard=1)
    args[3], args[9] = 60_000, 1  # fingerprints, wake
    args.insert(13, "fp")  # the record's fingerprint (the one its user has), before its tail
    fingerprint = keys.shard(1).fingerprint("u:user-1")
    redis_client.set(fingerprint, "fp")
    script_keys += [fingerprint, keys.meta, keys.wakeups, keys.kick]
    assert enqueue(script_keys, args) == [1, 0, 1, 0]
    assert redis_client.exists(keys.wakeups, keys.kick) == 0
    # and without the flag (a Redis Cluster's call) the script touches no wake-up
    script_keys, args = one_record_call(keys, 2, shard=1)
    assert enqueue(script_keys, args) == [1, 1, 0, 0]
    assert redis_client.exists(keys.wakeups, keys.kick) == 0


@pytest.mark.parametrize(
    ("stored", "fields"),
    [
        (f"16|{LAYOUT_VERSION}", {"shards": "16", "layout": LAYOUT_VERSION}),
        ("8|1", {"shards": "8", "layout": "1"}),
    ],
)
def test_a_shard_laid_out_otherwise_is_refused_with_what_it_holds(
    redis_client: redis.Redis, keys: Keys, namespace: str, producer: IdentifyProducer,
    stored: str, fields: dict[str, str],
) -> None:  # fmt: skip
    # Given a shard written with another shard count or entry format
    redis_client.set(keys.shard(0).layout, stored)
    before = snapshot(redis_client, namespace)
    # Then the script refuses with QUEUE_MISMATCH and the layout the shard holds, writing nothing
    script_keys, args = one_record_call(keys, 8)
    with pytest.raises(QueueMismatch) as refused:
        Script(redis_client, "producers", "enqueue")(script_keys, args)
    assert refused.value.fields == fields
    assert snapshot(redis_client, namespace) == before
    # and the producer's error names both sides, even with another shard's records in the call
    [user] = users_in_shard(0, 8, 1)
    [other] = users_in_shard(5, 8, 1)
    with pytest.raises(QueueMismatch) as raised:
        producer.enqueue_valid([valid(producer, other), valid(producer, user)])
    assert raised.value.fields == fields
    if fields["shards"] != "8":
        assert "IDENTIFY_SHARDS is 8" in str(raised.value) and "16 shards" in str(raised.value)
    else:
        assert "entry format 1" in str(raised.value)
    assert snapshot(redis_client, keys.namespace) == before  # the wake-ups too: nothing was written
    # the layout it was written with is no refusal
    redis_client.set(keys.shard(0).layout, f"8|{LAYOUT_VERSION}")
    assert Script(redis_client, "producers", "enqueue")(script_keys, args) == [1, 1, 0, 0]


@pytest.mark.shards(1)
def test_fingerprints_skip_unchanged_records_and_follow_the_chunk_s_own_writes(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    k = keys.shard(0)
    fp_a, fp_b, fp_c = (k.fingerprint(u) for u in ("u:user-a", "u:user-b", "u:user-c"))
    # Given a first chunk: every record is new; '' means "never skip" and stores nothing
    first = [valid(producer, "user-a", 0), valid(producer, "user-b", 0), valid(producer, "user-c", 0)]
    assert producer.enqueue_chunk(first, fingerprints=[b"A0", b"B0", b""], fingerprint_ttl_ms=60_000) == ChunkResult(
        3, 0, 0
    )
    assert (redis_client.get(fp_a), redis_client.get(fp_b), redis_client.exists(fp_c)) == (b"A0", b"B0", 0)
    assert 59_000 < pttl(redis_client, fp_a) <= 60_000
    # When a second chunk repeats a's record, changes b's, sends a's twice more (a change, then
    # that change again) and clears b's fingerprint with ''
    second = [valid(producer, "user-a", 0), valid(producer, "user-b", 1), valid(producer, "user-a", 1),
              valid(producer, "user-a", 1), valid(producer, "user-b", 2)]  # fmt: skip
    result = producer.enqueue_chunk(second, fingerprints=[b"A0", b"B1", b"A1", b"A1", b""], fingerprint_ttl_ms=90_000)
    # Then only what changed is appended, numbered without gaps, and the total counts only that
    assert result == ChunkResult(enqueued=3, skipped=2, already=0)
    queued = [entry.decode(r) for r in listed(redis_client, k.queue)]
    assert [(e.seq, e.user_key, e.data) for e in queued[3:]] == [
        (4, "u:user-b", second[1].data), (5, "u:user-a", second[2].data), (6, "u:user-b", second[4].data)
    ]  # fmt: skip
    assert redis_client.get(k.seq) == b"6"
    assert redis_client.get(k.total) == b"6"
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
    assert result == ChunkResult(1, 1, 0)
    assert redis_client.get(keys.shard(0).total) == b"2"


@pytest.mark.shards(2)
def test_each_shard_records_the_job_s_progress_with_its_records(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given a job whose run r1 has taken both shards (import_claim.lua)
    [a] = users_in_shard(0, 2, 1)
    [b] = users_in_shard(1, 2, 1)
    p0, p1 = (keys.shard(s).import_progress("nightly") for s in (0, 1))
    for p in (p0, p1):
        redis_client.hset(p, "run", "r1")
    # When a chunk with records of both shards is enqueued (lines 2 and 3; the chunk ends at 3)
    first = JobProgress("nightly", "r1", line=3, offset=90, rejected=1, ttl_ms=100_000)
    assert producer.enqueue_chunk([valid(producer, a), valid(producer, b)], progress=first,
                                  lines=[2, 3]) == ChunkResult(2, 0, 0)  # fmt: skip
    # Then each shard has the chunk's end and what it enqueued, with the job's TTL
    for p in (p0, p1):
        assert text_hash(redis_client, p) == {"run": "r1", "line": "3", "offset": "90", "enqueued": "1"}
        assert 99_000 < pttl(redis_client, p) <= 100_000
    # When the next chunk has records of shard 0 only
    second = JobProgress("nightly", "r1", line=5, offset=150, finished=True, ttl_ms=200_000)
    producer.enqueue_chunk([valid(producer, a, 1), valid(producer, a, 2)], fingerprints=[b"", b""],
                           fingerprint_ttl_ms=1000, lines=[4, 5], progress=second)  # fmt: skip
    # Then shard 0 moves on, shard 1 keeps its line, and the job's own hash is import_advance's
    assert text_hash(redis_client, p0) == {"run": "r1", "line": "5", "offset": "150", "enqueued": "3"}
    assert 199_000 < pttl(redis_client, p0) <= 200_000
    assert text_hash(redis_client, p1) == {"run": "r1", "line": "3", "offset": "90", "enqueued": "1"}
    assert redis_client.exists(keys.import_job("nightly")) == 0


def shard_progress(client: redis.Redis, k: ShardKeys, line: int | None) -> str:
    """The key of job nightly's progress in shard ``k``, taken by run r2, with its lines up to
    ``line`` there (None: none yet)."""
    progress = k.import_progress("nightly")
    client.hset(progress, "run", "r2")
    if line is not None:
        client.hset(progress, mapping={"line": line, "offset": 10 * line, "enqueued": line})
    return progress


@pytest.mark.shards(1)
@pytest.mark.parametrize(
    ("shard_line", "appended", "already"),
    [
        (None, [1, 2, 3, 4], 0),  # the shard has no line of the job: everything goes
        (2, [3, 4], 2),  # an earlier run enqueued lines 1 and 2 here before it stopped
        (4, [], 4),  # it had the whole chunk
        (0, [1, 2, 3, 4], 0),
    ],
)
def test_a_resumed_import_leaves_out_the_lines_a_shard_already_has(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys,
    shard_line: int | None, appended: list[int], already: int,
) -> None:  # fmt: skip
    k = keys.shard(0)
    progress = shard_progress(redis_client, k, shard_line)
    # a chunk of lines 1..4, each its own user, with fingerprints that would all be stored
    users = [f"user-{n}" for n in range(1, 5)]
    result = producer.enqueue_chunk(
        [valid(producer, u) for u in users], fingerprints=[b"F1", b"F2", b"F3", b"F4"], fingerprint_ttl_ms=60_000,
        progress=JobProgress("nightly", "r2", line=4, offset=40), lines=[1, 2, 3, 4],
    )  # fmt: skip
    assert result == ChunkResult(len(appended), 0, already)
    queued = [entry.decode(r) for r in listed(redis_client, k.queue)]
    assert [e.user_key for e in queued] == [f"u:user-{n}" for n in appended]
    assert [e.seq for e in queued] == list(range(1, len(appended) + 1))
    assert int(redis_client.get(k.total) or 0) == len(appended)
    # what is left out stores no fingerprint: only the appended records' are kept
    fingerprints = {n: redis_client.get(k.fingerprint(f"u:user-{n}")) for n in range(1, 5)}
    assert fingerprints == {n: (f"F{n}".encode() if n in appended else None) for n in range(1, 5)}
    # the shard now has the chunk's lines
    assert text_hash(redis_client, progress) == {"run": "r2", "line": "4", "offset": "40",
                                                 "enqueued": str((shard_line or 0) + len(appended))}  # fmt: skip


@pytest.mark.shards(1)
@pytest.mark.parametrize("shard_line", [None, 0, 3, 4, 5, 9])
def test_without_the_records_lines_a_shard_past_the_chunk_s_start_refuses_it(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys, namespace: str, shard_line: int | None
) -> None:  # fmt: skip
    # Given a shard that has the job's lines up to shard_line (None: none), and a chunk of lines 5..8
    # sent without each record's line (JobProgress.start: it starts after line 4)
    k = keys.shard(0)
    progress = shard_progress(redis_client, k, shard_line)
    before = snapshot(redis_client, namespace)
    chunk = [valid(producer, f"user-{n}") for n in range(5, 9)]
    sent = JobProgress("nightly", "r2", line=8, offset=80, start=4)
    if shard_line is not None and shard_line > 4:
        # Then a shard that may have some of them refuses the whole call, and nothing is written
        with pytest.raises(ImportAhead):
            producer.enqueue_chunk(chunk, progress=sent)
        assert snapshot(redis_client, namespace) == before
        # while the same chunk with its lines leaves out what the shard has
        result = producer.enqueue_chunk(chunk, progress=sent, lines=[5, 6, 7, 8])
        assert result == ChunkResult(8 - shard_line if shard_line < 8 else 0, 0, min(shard_line, 8) - 4)
        return
    # Then a shard that has none of them appends them all and records the chunk's end
    assert producer.enqueue_chunk(chunk, progress=sent) == ChunkResult(4, 0, 0)
    assert [entry.decode(r).user_key for r in listed(redis_client, k.queue)] == [f"u:user-{n}" for n in range(5, 9)]
    assert text_hash(redis_client, progress)["line"] == "8"


@pytest.mark.shards(2)
def test_a_shard_taken_over_by_another_run_refuses_the_call_and_nothing_is_written(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given a job that another run (r2) has taken over in shard 1 and not yet in shard 0
    [a] = users_in_shard(0, 2, 1)
    [b] = users_in_shard(1, 2, 1)
    redis_client.hset(keys.shard(0).import_progress("nightly"), mapping={"run": "r1", "line": 7})
    redis_client.hset(keys.shard(1).import_progress("nightly"), mapping={"run": "r2", "line": 7})
    before = snapshot(redis_client, keys.namespace)
    # Then a chunk of run r1 is refused with IMPORT_TAKEN, and nothing of it is written, in either shard
    with pytest.raises(ImportTaken):
        producer.enqueue_chunk([valid(producer, a), valid(producer, b)], fingerprints=[b"A0", b"B0"],
                               fingerprint_ttl_ms=60_000, progress=JobProgress("nightly", "r1", line=9, offset=10),
                               lines=[8, 9])  # fmt: skip
    assert snapshot(redis_client, keys.namespace) == before  # the wake-ups too: nothing was written
    # while a chunk of r1 for shard 0 alone still goes (the run that took shard 1 takes it at its start)
    assert producer.enqueue_chunk([valid(producer, a)], progress=JobProgress("nightly", "r1", line=9, offset=10),
                                  lines=[9]) == ChunkResult(1, 0, 0)  # fmt: skip


@pytest.mark.parametrize(
    ("stored", "taken"),
    [
        ({}, True),  # the job has not reached the shard yet (import_claim has not run there)
        ({"run": "r1"}, True),  # claimed by this run
        ({"run": "r1", "line": "0", "offset": "0", "enqueued": "0"}, True),
        ({"run": "r2"}, False),  # another run took it over
        ({"run": "r2", "line": "0", "offset": "0", "enqueued": "0"}, False),
    ],
)
def test_the_script_takes_a_chunk_of_the_run_that_holds_the_shard_or_of_a_shard_not_yet_held(
    redis_client: redis.Redis, keys: Keys, namespace: str, stored: dict[str, str], taken: bool
) -> None:
    k = keys.shard(0)
    progress = k.import_progress("nightly")
    if stored:
        redis_client.hset(progress, mapping=stored)
    script_keys, args = one_record_call(keys, 8)
    script_keys.insert(5, progress)  # after the shard's five keys, before any fingerprint
    args[4:8] = ["r1", 50_000, 1, 12]  # run, job TTL, the line and offset the chunk ends at
    args.insert(13, 1)  # the record's line, before its tail
    before = snapshot(redis_client, namespace)
    enqueue = Script(redis_client, "producers", "enqueue")
    if not taken:
        with pytest.raises(ImportTaken):
            enqueue(script_keys, args)
        assert snapshot(redis_client, namespace) == before
        return
    assert enqueue(script_keys, args) == [1, 1, 0, 0]
    assert text_hash(redis_client, progress) == {"run": "r1", "line": "1", "offset": "12", "enqueued": "1"}
    assert 49_000 < pttl(redis_client, progress) <= 50_000


@pytest.mark.shards(1)
def test_a_shard_s_line_of_the_job_never_moves_back(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given a shard that has the job's records up to line 10 (an earlier run's chunk went in, and it
    # stopped before the job's hash recorded it), resumed from line 6 with smaller chunks
    k = keys.shard(0)
    progress = k.import_progress("nightly")
    redis_client.hset(progress, mapping={"run": "r2", "line": 10, "offset": 100, "enqueued": 4})
    users = {n: valid(producer, f"user-{n}") for n in range(7, 12)}
    # When a first chunk (lines 7, 8) ends before the shard's line
    first = JobProgress("nightly", "r2", line=8, offset=80)
    assert producer.enqueue_chunk([users[7], users[8]], lines=[7, 8], progress=first) == ChunkResult(0, 0, 2)
    # Then the shard keeps its line, so that the next chunk leaves out 9 and 10 too: each line once
    assert text_hash(redis_client, progress) == {"run": "r2", "line": "10", "offset": "100", "enqueued": "4"}
    second = JobProgress("nightly", "r2", line=11, offset=110)
    result = producer.enqueue_chunk([users[9], users[10], users[11]], lines=[9, 10, 11], progress=second)
    assert result == ChunkResult(1, 0, 2)
    assert [entry.decode(r).user_key for r in listed(redis_client, k.queue)] == ["u:user-11"]
    assert text_hash(redis_client, progress) == {"run": "r2", "line": "11", "offset": "110", "enqueued": "5"}


@pytest.mark.shards(1)
def test_a_chunk_of_the_importer_s_largest_size_with_fingerprints_goes_in_one_call(
    producer: IdentifyProducer, redis_client: redis.Redis, keys: Keys
) -> None:
    # `import --chunk-size` goes up to 10,000 lines, all of which may fall in one shard: the script
    # reads their fingerprints in slices (Lua unpacks a few thousand values at most)
    records = [valid(producer, f"user-{n:05d}") for n in range(10_000)]
    fingerprints = [b"F%d" % n for n in range(10_000)]
    assert producer.enqueue_chunk(records, fingerprints=fingerprints, fingerprint_ttl_ms=60_000) == ChunkResult(
        10_000, 0, 0
    )
    # the same again: every one is unchanged, and the one changed record goes
    fingerprints[9_999] = b"changed"
    assert producer.enqueue_chunk(records, fingerprints=fingerprints, fingerprint_ttl_ms=60_000) == ChunkResult(
        1, 9_999, 0
    )
    assert redis_client.get(keys.shard(0).total) == b"10001"
