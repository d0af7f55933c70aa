"""Every answer gets its remedy: real workers against the local server told to misbehave."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers.contract.entry import shard_of
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import (
    SENTINEL_API_KEY,
    StartWorker,
    check_delivery,
    dead_letters,
    drained,
    redis_holds,
    seq_records,
    status,
    users_records,
    wait_until,
    worker_env,
)
from worker.deadletter import DeadLetterQueue, Selection
from worker.devtools.local_redis import free_port
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess


# -- 400 naming the invalid records ----------------------------------------------------------------
@pytest.mark.shards(1)
def test_a_named_invalid_record_is_dead_lettered_and_the_rest_resent_at_once(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given one record in a batch of 500 that Amplitude refuses, naming its index
    amplitude.control(reject_users=["user-00137"])
    producer.identify_many(users_records(500))
    start_worker(IDENTIFY_BATCH_SIZE="500")
    wait_until(lambda: drained(queue_config), 30, "the queue to drain")
    # Then exactly that record is dead-lettered, the other 499 delivered, with one extra request
    [dead] = dead_letters(queue_config)
    assert (dead["reason"], dead["record"]["user_id"], dead["status"]) == ("invalid", "user-00137", 400)
    assert dead["detail"] == "invalid field user_id"
    assert amplitude.stats()["accepted"] == 499
    assert amplitude.stats()["statuses"] == {"400": 1, "200": 1}


# -- 400 naming nothing: bisection -----------------------------------------------------------------
@pytest.mark.shards(1)
def test_an_unnamed_invalid_record_is_found_by_splitting(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    amplitude.control(reject_users=["user-00377"], name_invalid=False)
    producer.identify_many(users_records(500))
    start_worker(IDENTIFY_BATCH_SIZE="500")
    wait_until(lambda: drained(queue_config), 30, "the queue to drain")
    [dead] = dead_letters(queue_config)
    assert (dead["reason"], dead["record"]["user_id"]) == ("invalid", "user-00377")
    assert "isolated by splitting" in dead["detail"]
    assert amplitude.stats()["accepted"] == 499
    # About 2 log2(500) extra requests, not 500: each level of the split costs at most two.
    extra = amplitude.stats()["requests"] - 1
    assert extra <= 2 * math.ceil(math.log2(500))
    print(f"bisection: {extra} extra requests to isolate 1 bad record in 500")


# -- configuration errors --------------------------------------------------------------------------
def test_an_invalid_api_key_blocks_sending_keeps_everything_and_resumes(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, redis_client: redis.Redis, worker_logs: Callable[[], str],
) -> None:  # fmt: skip
    # Given Amplitude refusing the API key (and echoing it in its answer) for a while
    amplitude.control(invalid_key=True)
    producer.identify_many(seq_records(100, 5))
    start_worker(IDENTIFY_PROBE_CAP_S="0.5", IDENTIFY_RETRY_BACKOFF_BASE_S="0.2")
    # Then sending stops, with the reason in status, and nothing is dead-lettered
    blocked = wait_until(lambda: status(queue_config)["blocked"], 30, "sending to be blocked")
    assert blocked["reason"].startswith("HTTP 400 Invalid API key")
    wait_until(lambda: amplitude.stats()["requests"] >= 4, 30, "probes")
    snapshot = status(queue_config)
    assert snapshot["dead_letter"] == 0
    assert snapshot["accepted_not_done"] == 500
    # When the key is accepted again, everything is delivered, in order, and sending is unblocked
    amplitude.control()
    wait_until(lambda: drained(queue_config), 30, "delivery after the key is fixed")
    assert check_delivery(amplitude.accepted(), 100, 5) == 0
    assert status(queue_config)["blocked"] is None
    assert status(queue_config)["dead_letter"] == 0
    logs = worker_logs()
    assert logs.count("SENDING STOPPED") == 1, "said loudly, once, not once per batch"
    assert "sending resumed" in logs
    # The echoed key is in no log and no Redis key
    assert SENTINEL_API_KEY not in logs
    assert redis_holds(redis_client, f"{queue_config.namespace}:*", SENTINEL_API_KEY.encode()) == []


def test_a_worker_restarted_with_the_right_key_resumes_at_once(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a worker deployed with a wrong key (and a long probe backoff)
    producer.identify_many(seq_records(50, 4))
    wrong = start_worker(AMPLITUDE_API_KEY="pasted-the-wrong-key", IDENTIFY_PROBE_CAP_S="600",
                         IDENTIFY_RETRY_BACKOFF_BASE_S="600")  # fmt: skip
    wait_until(lambda: status(queue_config)["blocked"], 30, "sending to be blocked")
    wrong.terminate()
    # When it is restarted with the right one, it does not wait out the backoff
    start_worker()
    wait_until(lambda: drained(queue_config), 20, "delivery after the restart")
    assert check_delivery(amplitude.accepted(), 50, 4) == 0
    assert status(queue_config)["dead_letter"] == 0


# -- outages: connection errors, then 5xx at random ------------------------------------------------
def test_an_outage_then_random_failures_lose_nothing(
    producer: IdentifyProducer, queue_config: QueueConfig, start_worker: StartWorker, tmp_path: Path
) -> None:
    # A port below the ephemeral range: the worker's retries must not take it while the server is down
    port = free_port(stable=True)
    server = LocalAmplitudeProcess(api_key=SENTINEL_API_KEY, log_path=tmp_path / "server.log")
    try:
        # Given the endpoint down
        producer.identify_many(seq_records(200, 5))
        start_worker(identify_url=f"http://127.0.0.1:{port}/identify", IDENTIFY_RETRY_BACKOFF_BASE_S="0.1",
                     IDENTIFY_RETRY_BACKOFF_CAP_S="1")  # fmt: skip
        wait_until(lambda: "connection error" in (status(queue_config)["last_error"] or ""), 30, "failed attempts")
        # When it comes back answering 500 to its first two requests and a third of the rest
        server.start(port=port, faults={"statuses": [500, 500], "fail_rate": 0.3, "seed": 11})
        wait_until(lambda: drained(queue_config), 60, "delivery through the failures")
        # Then everything arrived once, in order, and nothing was dead-lettered
        assert server.stats()["statuses"].get("500", 0) >= 2
        assert check_delivery(server.accepted(), 200, 5) == 0
        assert status(queue_config)["dead_letter"] == 0
    finally:
        server.stop()


def test_records_failing_past_the_maximum_age_are_dead_lettered_as_expired(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    amplitude.control(statuses=[503] * 1000)
    producer.identify_many(seq_records(10, 2))
    start_worker(IDENTIFY_RETRY_MAX_ATTEMPTS="3", IDENTIFY_RETRY_BACKOFF_BASE_S="0.05")
    wait_until(lambda: drained(queue_config), 30, "the records to expire")
    dead = dead_letters(queue_config)
    assert len(dead) == 20
    assert {(d["reason"], d["status"], d["attempts"]) for d in dead} == {("expired", 503, 3)}


# -- 413 -------------------------------------------------------------------------------------------
@pytest.mark.shards(1)
def test_413_splits_batches_and_lowers_the_request_size_for_good(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    limit = 20_000
    amplitude.control(max_body_bytes=limit)
    producer.identify_many(seq_records(300, 4))
    huge = {"user_id": "user-huge", "user_properties": {"blob": "x" * 1000, **{f"p{i}": "y" * 1000 for i in range(24)}}}
    producer.identify(huge)
    start_worker()
    wait_until(lambda: drained(queue_config), 60, "delivery under the size limit")
    log = amplitude.requests_log()
    last_413 = max(i for i, r in enumerate(log) if r[1] == 413)
    assert all(r[3] <= limit for r in log[last_413 + 1 :]), "no request above the limit once it was learned"
    assert sum(1 for r in log if r[1] == 413) <= 6
    assert check_delivery(amplitude.accepted(), 300, 4) == 0
    [dead] = dead_letters(queue_config)
    assert (dead["reason"], dead["record"]["user_id"], dead["status"]) == ("too_large", "user-huge", 413)


# -- poison ----------------------------------------------------------------------------------------
def test_an_undecodable_entry_is_dead_lettered_and_its_shard_goes_on(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, redis_client: redis.Redis,
) -> None:  # fmt: skip
    producer.identify_many(seq_records(40, 3))
    shard = shard_of("u:user-00000", queue_config.shards)
    redis_client.lpush(Keys(queue_config.namespace).shard(shard).queue, b"\x00not an entry\xff")
    redis_client.incr(Keys(queue_config.namespace).shard(shard).total)
    start_worker()
    wait_until(lambda: drained(queue_config), 30, "the queue to drain")
    [dead] = dead_letters(queue_config)
    assert dead["reason"] == "undecodable"
    assert "not an entry" in dead["raw"]
    assert check_delivery(amplitude.accepted(), 40, 3) == 0


@pytest.mark.shards(1)
def test_a_record_that_keeps_killing_its_drainer_is_dead_lettered_as_poison(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a record whose request never comes back before its worker dies (killed, as an OOM would)
    amplitude.control(hang_users=["user-poison"])
    producer.identify(user_id="user-poison", user_properties={"$set": {"seq": 0}})
    producer.identify_many(seq_records(30, 2))
    kills = 0
    while not dead_letters(queue_config):
        assert kills < 6, "the poison record was never isolated"
        received = amplitude.stats()["received"]
        worker = start_worker(IDENTIFY_POISON_AFTER="1", IDENTIFY_BATCH_SIZE="50")
        wait_until(lambda n=received: amplitude.stats()["received"] > n or dead_letters(queue_config), 30, "a request")
        if dead_letters(queue_config):
            break
        worker.kill()
        kills += 1
    # Then the poison record alone is dead-lettered, and everything else is delivered
    wait_until(lambda: drained(queue_config), 30, "the rest to drain")
    [dead] = dead_letters(queue_config)
    assert (dead["reason"], dead["record"]["user_id"]) == ("poison", "user-poison")
    assert check_delivery(amplitude.accepted(), 30, 2) == 0


# -- the dead-letter queue: replay -----------------------------------------------------------------
@pytest.mark.shards(4)
def test_replay_interrupted_by_kill_9_neither_loses_nor_doubles_a_record(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, redis_client: redis.Redis,
) -> None:  # fmt: skip
    users, per_user = 1000, 3
    total = users * per_user
    # Given every record dead-lettered (the endpoint refused them all)
    amplitude.control(reject_users=[f"user-{u:05d}" for u in range(users)])
    producer.identify_many(seq_records(users, per_user))
    worker = start_worker()
    wait_until(lambda: status(queue_config)["dead_letter"] == total, 60, "everything dead-lettered")
    worker.terminate()
    amplitude.reset()
    # When a replay is killed with SIGKILL part-way
    env = {**os.environ, **worker_env(queue_config, amplitude.identify_url)}
    replay = subprocess.Popen([*COMMAND, "dlq", "replay", "--all", "--chunk-size", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    keys = Keys(queue_config.namespace)

    def dead() -> int:
        return sum(redis_client.hlen(keys.shard(s).dlq_entries) for s in range(queue_config.shards))

    wait_until(lambda: 0 < dead() < total, 30, "a partial replay")
    replay.send_signal(signal.SIGKILL)
    replay.wait(10)
    # Then each record is either still dead-lettered or queued again: never both, never neither
    snapshot = status(queue_config)
    assert 0 < snapshot["dead_letter"] < total
    # (a replayed record waits for its user's turn: ahead of that user's queued ones, worker/drain/waiting.py)
    assert snapshot["dead_letter"] + snapshot["queued"] + snapshot["replayed_waiting"] == total
    assert snapshot["accepted_not_done"] == snapshot["queued"] + snapshot["replayed_waiting"]
    # And replaying the rest, then draining, delivers every record exactly once
    assert DeadLetterQueue(queue_config).replay(Selection()) == snapshot["dead_letter"]
    start_worker()
    wait_until(lambda: drained(queue_config), 60, "delivery of the replayed records")
    accepted = amplitude.accepted()
    assert len(accepted) == total
    # each user's records came back in their original order, though replayed one chunk at a time
    assert check_delivery(accepted, users, per_user) == 0
    final = status(queue_config)
    assert final["dead_letter"] == 0
    assert (final["enqueued"], final["delivered"], final["replayed"]) == (total, total, total)


@pytest.mark.shards(1)
def test_batches_are_cut_by_their_encoded_size(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Records of non-ASCII text: each byte is three once form-encoded, so 1,000 of them would make a
    # body of about 2.7 MB from 0.9 MB of JSON
    text = "東京都の天気は晴れ" * 33
    producer.identify_many({"user_id": f"user-{i:05d}", "user_properties": {"note": text}} for i in range(1500))
    start_worker()
    wait_until(lambda: drained(queue_config), 60, "delivery")
    assert amplitude.stats()["statuses"] == {"200": amplitude.stats()["requests"]}, "no 413"
    assert amplitude.stats()["max_request_bytes"] <= 950_000
    assert amplitude.stats()["accepted"] == 1500
