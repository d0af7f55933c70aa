"""The queue on a Redis Cluster of 3 masters and 3 replicas that the module starts, with Celery's
broker on a standalone Redis apart (IDENTIFY_BROKER_URL): the whole job, and the cluster's faults.

Every fixture that reads ``queue_config`` (the producer, the workers, status) points at the cluster
here; the checks of order and loss are those of one Redis (tests/support.py).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu
import orjson
import pytest
import redis
import requests

from producers.contract.connection import connect
from producers.contract.entry import shard_of
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import (
    StartWorker,
    by_user,
    check_delivery,
    drained,
    seq_records,
    status,
    wait_until,
    worker_env,
)
from worker.devtools.local_cluster import LocalCluster
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess

pytestmark = pytest.mark.timeout(240)
INGEST_TOKEN = "ingest-" + secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as started:
        yield started


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    with LocalRedis() as started:
        yield started


@pytest.fixture
def queue_config(request: pytest.FixtureRequest, cluster: LocalCluster, namespace: str) -> QueueConfig:
    """The test's queue, on the cluster (overrides the conftest's, so every fixture follows)."""
    cluster.wait_healthy()  # a fault test before may have left a failover finishing
    marker = request.node.get_closest_marker("shards")
    return QueueConfig(redis_url=cluster.url, namespace=namespace, shards=marker.args[0] if marker else 12)


@pytest.fixture
def redis_client(queue_config: QueueConfig) -> Iterator[redis.Redis]:
    client = connect(queue_config.redis_url)
    yield client
    client.close()


@pytest.fixture
def on_cluster(start_worker: StartWorker, broker: LocalRedis) -> StartWorker:
    """Start workers whose broker is the standalone Redis (required with the queue on a cluster)."""

    def start(**options: Any) -> Any:
        return start_worker(IDENTIFY_BROKER_URL=broker.url, **options)

    return start


def cli(
    config: QueueConfig, amplitude: LocalAmplitudeProcess, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **worker_env(config, amplitude.identify_url), **env}
    return subprocess.run([*COMMAND, *args], env=environment, capture_output=True, text=True, timeout=120, check=False)


def test_the_queue_spreads_over_the_three_masters(queue_config: QueueConfig, cluster: LocalCluster) -> None:
    keys = Keys(queue_config.namespace)
    masters = {cluster.master_of(keys.shard(s).queue).port for s in range(queue_config.shards)}
    assert len(masters) == 3
    assert cluster.master_of(keys.meta) in cluster.nodes


def test_the_whole_job_with_holds_budget_rate_limit_failures_and_replay(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, on_cluster: StartWorker,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given updates from the three producers (a service, an import, the HTTP endpoint), 429s for
    # some users, a fifth of the requests failing, one user Amplitude refuses, an hourly budget of
    # 4 per 1.5 s window and a rate limit of 25 requests/s
    users, per_user = 120, 6
    throttled = {f"user-{u:05d}": 1.0 for u in range(0, users, 20)}
    amplitude.control(fail_rate=0.2, throttle_users=throttled, reject_users=["user-00007"], seed=11)
    records = seq_records(users, per_user)
    producer.identify_many(records[: len(records) // 3])
    lines = tmp_path / "users.jsonl"
    lines.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records[len(records) // 3 : 2 * len(records) // 3]))
    imported = cli(queue_config, amplitude, "import", str(lines), "--progress", "none")
    assert imported.returncode == 0, imported.stderr
    env = {**worker_env(queue_config, amplitude.identify_url), "IDENTIFY_INGEST_TOKEN": INGEST_TOKEN}
    with IngestProcess(env, log_path=tmp_path / "serve.log") as server:
        rest = records[2 * len(records) // 3 :]
        for start in range(0, len(rest), 50):
            body = {"api_key": INGEST_TOKEN, "identification": orjson.dumps(rest[start : start + 50]).decode()}
            assert requests.post(server.identify_url, data=body, timeout=10).status_code == 200
    assert status(queue_config)["queued"] == users * per_user
    # When a worker drains it
    limit, window, rps = 4, 1.5, 25
    on_cluster(IDENTIFY_USER_UPDATES_PER_HOUR=str(limit), IDENTIFY_BUDGET_WINDOW_S=str(window),
               IDENTIFY_THROTTLE_PAUSE_S="1", IDENTIFY_RATE_LIMIT_RPS=str(rps), IDENTIFY_BATCH_SIZE="40",
               IDENTIFY_RETRY_BACKOFF_BASE_S="0.05", IDENTIFY_RETRY_BACKOFF_CAP_S="0.3")  # fmt: skip
    wait_until(lambda: status(queue_config)["deferred"] + status(queue_config)["held"] > 0, 60, "users waiting")
    wait_until(lambda: drained(queue_config), 180, "every update delivered or dead-lettered")
    # Then every other user's updates arrived in order, the refused user's are dead letters,
    accepted = amplitude.accepted()
    check_delivery([r for r in accepted if r["user_id"] != "user-00007"], users - 1, per_user)
    shown = orjson.loads(cli(queue_config, amplitude, "status", "--json").stdout)
    assert shown["dead_letter_by_reason"] == {"invalid": per_user}
    assert shown["delivered"] == (users - 1) * per_user and shown["queued"] == 0
    # the budget held for every user by the time its updates arrived (a claim answered in a later
    # slot than it reserved in counts what it sent there), and the rate limit held
    for user, times in _arrival_times(amplitude).items():
        assert _busiest(times, window) <= limit, user
    requests_at = sorted(t for t, _, _, _ in amplitude.requests_log())
    assert _busiest(requests_at, 1.0) <= rps
    assert amplitude.stats()["statuses"].get("429", 0) > 0
    # And when Amplitude takes the user again and the operator replays, its updates arrive in order
    amplitude.control()
    listed = cli(queue_config, amplitude, "dlq", "list", "--json")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == per_user, listed.stderr
    replayed = cli(queue_config, amplitude, "dlq", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: drained(queue_config), 60, "the replayed updates")
    assert by_user(amplitude.accepted())["user-00007"][-per_user:] == list(range(per_user))
    assert status(queue_config)["dead_letter"] == 0


@pytest.mark.shards(6)
def test_a_master_killed_during_a_drain_loses_nothing_and_the_worker_goes_on(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, on_cluster: StartWorker,
    cluster: LocalCluster,
) -> None:  # fmt: skip
    # Given a queue of 300 users x 8 updates, each write confirmed by a replica before the producer
    # returned (IDENTIFY_MIN_REPLICAS=1), and a slow Amplitude so that the drain takes a while
    users, per_user = 300, 8
    with IdentifyProducer(dataclasses.replace(queue_config, min_replicas=1)) as confirmed:
        confirmed.identify_many(seq_records(users, per_user))
    amplitude.control(delay_ms=30)
    worker = on_cluster(IDENTIFY_BATCH_SIZE="20")
    wait_until(lambda: status(queue_config)["delivered"] >= 300, 60, "a drain under way")
    # When the master of a busy shard is killed with SIGKILL
    victim = cluster.master_of(Keys(queue_config.namespace).shard(shard_of("u:user-00001", queue_config.shards)).queue)
    killed_at = time.monotonic()
    victim.stop(kill=True)
    try:
        # Then its replica takes over, the same worker (not restarted) drains everything, in order
        wait_until(lambda: _answers(queue_config), 30, "the cluster serving again")
        promoted_s = time.monotonic() - killed_at
        amplitude.control()
        wait_until(lambda: drained(queue_config), 120, "every update after the failover")
        assert worker.process.poll() is None
        repeats = check_delivery(amplitude.accepted(), users, per_user)
        assert status(queue_config)["dead_letter"] == 0
        print(f"replica promoted and serving {promoted_s:.1f} s after the kill; {repeats} updates sent twice")
    finally:
        victim.start()  # back as a replica of its old replica, for the next tests
        cluster.wait_healthy()


@pytest.mark.shards(4)
def test_a_busy_shard_moved_to_another_master_during_a_drain_loses_and_reorders_nothing(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, on_cluster: StartWorker,
    cluster: LocalCluster, worker_logs: Callable[[], str],
) -> None:  # fmt: skip
    # Given a shard with a long queue, drained while producers keep enqueueing
    keys = Keys(queue_config.namespace)
    users, per_user = 200, 10
    records = seq_records(users, per_user)
    producer.identify_many(records[: len(records) // 2])
    amplitude.control(delay_ms=20)
    # (a lease longer than the move: the tests' usual 3 s could lapse while a settle waits it out,
    # and the next drainer would send that batch again, at least once as after a crash)
    on_cluster(IDENTIFY_BATCH_SIZE="20", IDENTIFY_LEASE_TTL_S="20")
    wait_until(lambda: status(queue_config)["delivered"] > 0, 60, "a drain under way")
    errors: list[BaseException] = []

    def produce_the_rest() -> None:
        try:
            with IdentifyProducer(queue_config) as late:
                for record in records[len(records) // 2 :]:
                    _retrying(lambda r=record: late.identify(r))  # type: ignore[misc]
        except BaseException as exc:
            errors.append(exc)

    producing = threading.Thread(target=produce_the_rest)
    producing.start()
    # When the slot of shard 0 moves to another master, one key at a time (scripts meet it half moved)
    client = cluster.client()
    slot = client.keyslot(keys.shard(0).queue)
    client.close()
    source = cluster.master_of(keys.shard(0).queue)
    target = next(n for n in cluster.nodes if n.port in cluster.node_ids() and n.port != source.port)
    started = time.monotonic()
    moved = cluster.migrate_slot(slot, target, keys_per_step=1, pause_s=0.2)
    print(f"moved the slot of shard 0 ({moved} keys) in {time.monotonic() - started:.1f} s during the drain")
    producing.join(60)
    assert not errors, errors
    # Then the slot is served by the other master, and every update arrived once, in order
    assert cluster.master_of(keys.shard(0).queue).port == target.port and moved > 0
    amplitude.control()
    wait_until(lambda: drained(queue_config), 120, "every update after the move")
    assert check_delivery(amplitude.accepted(), users, per_user) == 0
    assert status(queue_config)["dead_letter"] == 0
    # (the drain did meet the slot half moved, and waited it out)
    assert "is moving between nodes; nothing was run; waiting for it to settle" in worker_logs()


def test_a_worker_on_a_cluster_without_a_broker_url_says_what_to_set(
    queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
) -> None:  # fmt: skip
    result = cli(queue_config, amplitude, "worker", IDENTIFY_METRICS_PORT="0")
    assert result.returncode != 0
    assert "IDENTIFY_BROKER_URL" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_urls_that_cannot_work_are_refused_with_one_line_naming_the_variable(
    queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, broker: LocalRedis, cluster: LocalCluster,
) -> None:  # fmt: skip
    # Several hosts that are not a cluster (two standalone Redis): which one is meant is unknowable
    standalone = dataclasses.replace(
        queue_config, redis_url=f"redis://127.0.0.1:{broker.port},127.0.0.1:{broker.port}/0"
    )
    for command in (["status"], ["enqueue", "--user-id", "user-00001", "--set", "seq=0"]):
        result = cli(standalone, amplitude, *command)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "REDIS_URL names several hosts" in result.stderr and "not a Redis Cluster node" in result.stderr
    # The cluster itself as Celery's broker
    result = cli(queue_config, amplitude, "worker", IDENTIFY_METRICS_PORT="0", IDENTIFY_BROKER_URL=cluster.url)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "IDENTIFY_BROKER_URL" in result.stderr


# -- helpers --------------------------------------------------------------------------------------
def _arrival_times(amplitude: LocalAmplitudeProcess) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for at, user in amplitude.arrivals():
        out.setdefault(user, []).append(at)
    return out


def _busiest(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


def _answers(config: QueueConfig) -> bool:
    try:
        status(config)
    except Exception:
        return False
    return True


def _retrying(call: Any, tries: int = 50) -> None:
    """A producer told 'not accepted' (the slot is moving) sends again, as a service would: one
    record at a time, so that a refusal means exactly that record was not enqueued."""
    for attempt in range(tries):
        try:
            call()
            return
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(0.1)


# -- RabbitMQ as Celery's broker -----------------------------------------------------------------------
#: The machine kind this project runs on starts a RabbitMQ at 127.0.0.1:5672 (guest/guest) for every
#: session and for CI; IDENTIFY_TEST_AMQP_URL points the test at another.
AMQP_URL = os.environ.get("IDENTIFY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def rabbitmq() -> str:
    try:
        with kombu.Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure to reach it means: not here
        pytest.skip(
            f"no RabbitMQ answers at {AMQP_URL} ({type(exc).__name__}); the machines this project's CI runs on "
            "start one as a service, so there the test runs; set IDENTIFY_TEST_AMQP_URL to use another"
        )
    return AMQP_URL


def test_rabbitmq_as_the_broker_and_its_lost_messages_lose_nothing(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, rabbitmq: str,
) -> None:  # fmt: skip
    # Given the queue on the cluster and Celery's broker on RabbitMQ, a worker draining slowly
    users, per_user = 200, 6
    producer.identify_many(seq_records(users, per_user))
    amplitude.control(delay_ms=40)
    first = start_worker(IDENTIFY_BROKER_URL=rabbitmq, IDENTIFY_BATCH_SIZE="10")
    wait_until(lambda: status(queue_config)["delivered"] >= 100, 60, "a drain under way")
    # When the worker is killed (the drain messages it had taken are gone: Celery acks on receipt)
    # and every message still in RabbitMQ is purged as well
    first.kill()
    with kombu.Connection(rabbitmq) as connection:
        purged = connection.default_channel.queue_purge(Keys(queue_config.namespace).celery_queue)
    # Then a new worker finds every shard that has records (its sweep, once the dead drainers'
    # leases expire) and delivers everything, in order: a wake-up message carries no records
    amplitude.control()
    start_worker(IDENTIFY_BROKER_URL=rabbitmq, IDENTIFY_LEASE_TTL_S="3")
    wait_until(lambda: drained(queue_config), 120, "every update after the lost messages")
    repeats = check_delivery(amplitude.accepted(), users, per_user)
    assert status(queue_config)["dead_letter"] == 0
    print(f"{purged} drain messages purged from RabbitMQ; {repeats} updates sent twice (batches in flight at the kill)")
