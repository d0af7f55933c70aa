"""Each user's order, end to end, with the mechanisms together: real workers, the local server.

The runs the first version failed: the hourly budget with 429s and random 5xx on the same users;
an outage that expires everything, then `dlq replay --all`; workers whose clocks are hours off;
and a worker with a pool of threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import StartWorker, by_user, check_delivery, drained, seq_records, status, wait_until, worker_env
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def final_states(accepted: list[dict[str, Any]]) -> dict[str, int]:
    """Each user's `seq` as Amplitude holds it after applying what it accepted, in order."""
    return {user: seqs[-1] for user, seqs in by_user(accepted).items()}


@pytest.mark.shards(4)
def test_budget_429s_and_5xx_together_keep_every_users_order(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given 300 users with 10 updates each, a budget of 4 per window, a quarter of the requests
    # failing with a 5xx, and ten users throttled by Amplitude (the first version left 138 of
    # 300 users in the wrong state here)
    users, per_user = 300, 10
    throttled = {f"user-{u:05d}": 1.0 for u in range(0, 300, 30)}
    amplitude.control(fail_rate=0.25, throttle_users=throttled, seed=7)
    producer.identify_many(seq_records(users, per_user))
    start_worker(
        IDENTIFY_USER_UPDATES_PER_HOUR="4", IDENTIFY_BUDGET_WINDOW_S="1.5", IDENTIFY_THROTTLE_PAUSE_S="1",
        IDENTIFY_BATCH_SIZE="100", IDENTIFY_RETRY_BACKOFF_BASE_S="0.05", IDENTIFY_RETRY_BACKOFF_CAP_S="0.5",
    )  # fmt: skip
    wait_until(lambda: status(queue_config)["deferred"] > 0, 30, "deferred updates")
    wait_until(lambda: drained(queue_config), 120, "every update, through budget windows, holds and retries")
    # Then every update arrived, each user's in order (a 5xx may have been applied and sent again,
    # before anything newer), and every user holds its last update
    accepted = amplitude.accepted()
    check_delivery(accepted, users, per_user)
    assert final_states(accepted) == {f"user-{u:05d}": per_user - 1 for u in range(users)}
    assert status(queue_config)["dead_letter"] == 0
    assert amplitude.stats()["statuses"].get("429", 0) > 0 and amplitude.stats()["statuses"].get("500", 0) > 0


@pytest.mark.shards(4)
def test_an_outage_that_expires_everything_then_replay_keeps_every_users_order(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given an outage long enough to expire every update (the first version's replay shuffled
    # each user's: 198 of 200 users ended in the wrong state)
    users, per_user = 200, 10
    amplitude.control(fail_rate=1.0)
    producer.identify_many(seq_records(users, per_user))
    worker = start_worker(IDENTIFY_RETRY_MAX_AGE_S="1", IDENTIFY_RETRY_BACKOFF_BASE_S="0.05",
                          IDENTIFY_RETRY_BACKOFF_CAP_S="0.2", IDENTIFY_BATCH_SIZE="50")  # fmt: skip
    wait_until(lambda: status(queue_config)["dead_letter"] == users * per_user, 60, "everything expired")
    worker.terminate()
    # When Amplitude is back, and the operator replays everything, with a budget and 429s about
    amplitude.reset()
    amplitude.control(throttle_users={"user-00007": 1.0, "user-00100": 1.0})
    env = {**os.environ, **worker_env(queue_config, amplitude.identify_url)}
    replay = subprocess.run([*COMMAND, "dlq", "replay", "--all", "--chunk-size", "7"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    start_worker(IDENTIFY_USER_UPDATES_PER_HOUR="6", IDENTIFY_BUDGET_WINDOW_S="1", IDENTIFY_THROTTLE_PAUSE_S="1")
    wait_until(lambda: drained(queue_config), 60, "the replayed updates delivered")
    # Then each user's updates arrived once each, in their original order
    accepted = amplitude.accepted()
    assert check_delivery(accepted, users, per_user) == 0
    assert final_states(accepted) == {f"user-{u:05d}": per_user - 1 for u in range(users)}
    assert (status(queue_config)["dead_letter"], status(queue_config)["replayed"]) == (0, users * per_user)


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime is not installed (scripts/bootstrap installs it)")
def test_workers_with_clocks_hours_off_decide_as_redis_clock_says(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given two workers, one whose clock is 3 hours ahead and one 3 hours behind, a budget of 5
    # per 3-second window, records that fail once with a 500, and a maximum age of an hour
    window, limit = 3.0, 5
    hot = [{"user_id": "user-hot01", "user_properties": {"$set": {"seq": i}}} for i in range(12)]
    amplitude.control(statuses=[500, 500])
    producer.identify_many(hot + seq_records(20, 2))
    settings = {"IDENTIFY_USER_UPDATES_PER_HOUR": str(limit), "IDENTIFY_BUDGET_WINDOW_S": str(window),
                "IDENTIFY_RETRY_MAX_AGE_S": "3600", "IDENTIFY_RETRY_BACKOFF_BASE_S": "0.1"}  # fmt: skip
    for offset in ("+3h", "-3h"):
        start_worker(concurrency=1, preload={"LD_PRELOAD": str(FAKETIME), "FAKETIME": offset}, **settings)
    wait_until(lambda: drained(queue_config), 60, "every update")
    # Then nothing expired (a worker 3 hours ahead would have thought every record 3 hours old),
    # every update arrived in order, and the budget held across both workers (one ahead and one
    # behind would have counted in slots hours apart)
    assert status(queue_config)["dead_letter"] == 0
    accepted = amplitude.accepted()
    assert [r["user_properties"]["$set"]["seq"] for r in accepted if r["user_id"] == "user-hot01"] == list(range(12))
    hot_times = sorted(t for t, u in amplitude.arrivals() if u == "user-hot01")
    assert max(sum(1 for u in hot_times[i:] if u < t + window) for i, t in enumerate(hot_times)) <= limit
    assert check_delivery([r for r in accepted if r["user_id"] != "user-hot01"], 20, 2) == 0


def test_a_worker_with_a_pool_of_threads_keeps_order_under_failures(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a worker with four threads (each with its own drainer, HTTP session and state), and
    # an endpoint that refuses records of one user without naming them, and fails a fifth
    amplitude.control(fail_rate=0.2, reject_users=["user-00013"], name_invalid=False, seed=3)
    producer.identify_many(seq_records(100, 5))
    start_worker(concurrency=4, pool="threads", IDENTIFY_BATCH_SIZE="20", IDENTIFY_RETRY_BACKOFF_BASE_S="0.05",
                 IDENTIFY_RETRY_BACKOFF_CAP_S="0.2")  # fmt: skip
    wait_until(lambda: drained(queue_config), 60, "delivery")
    accepted = [r for r in amplitude.accepted() if r["user_id"] != "user-00013"]
    check_delivery(accepted, 99, 5)
    dead = status(queue_config)["dead_letter_by_reason"]
    assert dead == {"invalid": 5}


@pytest.mark.shards(1)
def test_a_request_size_learned_from_a_413_recovers_after_a_quiet_period(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a day when Amplitude refused bodies over 20 kB, and a recovery period of one second
    amplitude.control(max_body_bytes=20_000)
    producer.identify_many(seq_records(300, 2))
    start_worker(IDENTIFY_REQUEST_SIZE_RECOVERY_S="1")
    wait_until(lambda: drained(queue_config), 60, "delivery under the size limit")
    learned_at = time.monotonic()
    amplitude.control()
    # When the quiet period has passed and the day's traffic comes back
    wait_until(lambda: time.monotonic() > learned_at + 3.5, 10, "three quiet periods")
    producer.identify_many(seq_records(300, 2, prefix="later"))
    wait_until(lambda: drained(queue_config), 60, "delivery")
    # Then requests grew past the old limit again
    sizes = [size for _, code, _, size in amplitude.requests_log() if code == 200]
    assert max(sizes) > 20_000
    assert check_delivery([r for r in amplitude.accepted() if r["user_id"].startswith("later")], 300, 2,
                          prefix="later") == 0  # fmt: skip


def test_faketime_shifts_a_child_process_clock() -> None:
    """The fault the clock test injects is real: a process under libfaketime sees another time."""
    if not FAKETIME.exists() or shutil.which("python3") is None:
        pytest.skip("libfaketime is not installed (scripts/bootstrap installs it)")
    env = {**os.environ, "LD_PRELOAD": str(FAKETIME), "FAKETIME": "+3h"}
    shifted = subprocess.run(["python3", "-c", "import time; print(time.time())"], env=env, capture_output=True,
                             text=True, timeout=30, check=True)  # fmt: skip
    assert float(shifted.stdout) - time.time() > 3 * 3600 - 60


def test_the_order_checks_catch_a_swap() -> None:
    """The checks these tests rest on refuse a user whose updates arrive swapped."""
    accepted = [{"user_id": "user-00000", "user_properties": {"$set": {"seq": s}}} for s in (0, 2, 1)]
    with pytest.raises(AssertionError):
        check_delivery(accepted, 1, 3)
    assert final_states(accepted) == {"user-00000": 1}
