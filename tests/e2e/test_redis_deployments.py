"""The Redis users really run: an ACL user of least privilege, TLS, Sentinel with failover, replicas
that must confirm, a restart from AOF, and a Redis that keeps nothing on disk.

Every server here is the test's own: redis-server processes, a replica, a sentinel, certificates
made by openssl, all on loopback ports of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from producers.contract.errors import NotReplicated, StoreError
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import (
    SENTINEL_API_KEY,
    check_delivery,
    seq_records,
    status,
    wait_until,
    worker_env,
)
from worker.devtools.local_redis import LocalRedis, LocalSentinel, free_port
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess, WorkerProcess
from worker.devtools.tls import make_certificates
from worker.preflight import least_privilege_acl
from worker.settings import Settings


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env={**os.environ, **env}, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one line on stderr and no traceback; that line."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


class Worker:
    """`identify-queue worker` against a deployment of the test's own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.process = WorkerProcess(env, name=f"w-{log.stem}", concurrency=2, log_path=log)
        self.log = log

    def __enter__(self) -> WorkerProcess:
        return self.process.start()

    def __exit__(self, *exc: object) -> None:
        self.process.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(appendonly=True, directory=str(tmp_path / "redis")).start()
    yield server
    server.cleanup()


def env_for(url: str, namespace: str, amplitude: LocalAmplitudeProcess, **extra: str) -> dict[str, str]:
    config = QueueConfig(redis_url=url, namespace=namespace, shards=4)
    return worker_env(config, amplitude.identify_url, **extra)


# -- managed Redis: a user of least privilege ---------------------------------------------------------
def test_every_command_works_as_a_redis_user_of_least_privilege(
    own_redis: LocalRedis, amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    # Given a Redis user made with exactly the ACL `identify-queue acl` prints, and INFO left out
    admin = own_redis.admin()
    acl = run({"IDENTIFY_NAMESPACE": "app", "REDIS_URL": own_redis.url}, "acl", "--user", "app")
    assert acl.returncode == 0, acl.stderr
    rule = acl.stdout.strip().replace(">PASSWORD", ">s3cret").replace(" +info", "")
    admin.execute_command(*rule.split()[:2], *rule.split()[2:])
    url = f"redis://app:s3cret@127.0.0.1:{own_redis.port}/0"
    env = env_for(url, "app", amplitude)
    # When every command runs as that user: enqueue, import, serve, the worker, status, dlq
    assert run(env, "enqueue", "--user-id", "user-00001", "--set", "seq=0").returncode == 0
    jsonl = tmp_path / "users.jsonl"
    jsonl.write_text("".join(f'{{"user_id": "user-{u:05d}", "user_properties": {{"$set": {{"seq": 1}}}}}}\n'
                             for u in range(1, 50)))  # fmt: skip
    imported = run(env, "import", str(jsonl))
    assert imported.returncode == 0, imported.stderr
    amplitude.control(reject_users=["user-00049"])
    with Worker(env, tmp_path / "acl.log"):
        wait_until(lambda: status_of(url, "app")["accepted_not_done"] == 0, 60, "delivery as the ACL user")
    # Then all was delivered; status and the dead-letter commands work; the worker only warned
    # that it could not read INFO
    shown = run(env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert run(env, "dlq", "list").returncode == 0
    assert (tmp_path / "acl.log").read_text().count("does not let this user run INFO") == 1
    assert len(amplitude.accepted()) == 49
    # And a command the ACL refuses is one line, naming the command and how to grant it
    assert "may not run KEYS" in permission_error(url)
    admin.close()


def status_of(url: str, namespace: str) -> dict[str, Any]:
    return status(QueueConfig(redis_url=url, namespace=namespace, shards=4))


def done_through_sentinel(url: str, namespace: str) -> bool:
    """Nothing accepted is left; False while the sentinels name no master (under a loaded
    machine they can see the new master as down for a moment after a failover)."""
    try:
        return bool(status_of(url, namespace)["accepted_not_done"] == 0)
    except StoreError:
        return False


def permission_error(url: str) -> str:
    from producers.contract.connection import connect, store_errors

    client = connect(url)
    try:
        with store_errors("list keys"):
            client.keys("app:*")
    except StoreError as exc:
        return str(exc)
    finally:
        client.close()
    return ""


def test_a_user_without_a_needed_permission_gets_one_line_and_a_non_zero_exit(
    own_redis: LocalRedis, amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    # Given a user that may not write sorted sets, and one without Celery's control channel
    settings = Settings(queue=QueueConfig(namespace="app", redis_url=own_redis.url))
    admin = own_redis.admin()
    rule = least_privilege_acl(settings, user="nozset").replace(">PASSWORD", ">pw").split()
    admin.execute_command(*rule, "-@sortedset")
    rule = least_privilege_acl(settings, user="nochan").replace(">PASSWORD", ">pw").split()
    admin.execute_command(*[part for part in rule if not part.startswith("&")])
    # Then enqueue fails with one line naming what to grant, and exit 4 (Redis refused)
    nozset = env_for(f"redis://nozset:pw@127.0.0.1:{own_redis.port}/0", "app", amplitude)
    refused = run(nozset, "enqueue", "--user-id", "user-00001", "--set", "seq=0")
    assert refused.returncode == 4
    assert "may not run ZADD" in one_line_error(refused) or "may not run ZMSCORE" in one_line_error(refused)
    # And the worker without channel rights stops before starting, non-zero, saying what to grant
    nochan = env_for(f"redis://nochan:pw@127.0.0.1:{own_redis.port}/0", "app", amplitude)
    worker = run(nochan, "worker", timeout=60)
    line = one_line_error(worker)
    assert worker.returncode == 2
    assert "&app:kombu:/0.celery.pidbox" in line and "IDENTIFY_REMOTE_CONTROL=0" in line
    # and with remote control off, it needs no channel at all
    with Worker({**nochan, "IDENTIFY_REMOTE_CONTROL": "0"}, tmp_path / "nochan.log"):
        assert run(nochan, "enqueue", "--user-id", "user-00002", "--set", "seq=0").returncode == 0
        wait_until(lambda: any(r["user_id"] == "user-00002" for r in amplitude.accepted()), 60, "delivery")
    admin.close()


# -- TLS ---------------------------------------------------------------------------------------------
def test_tls_verifies_the_server_for_every_connection(amplitude: LocalAmplitudeProcess, tmp_path: Path) -> None:
    # Given a redis-server that speaks TLS only, with a CA of the test's own
    files = make_certificates(tmp_path / "certs")
    other_ca = make_certificates(tmp_path / "other", name="another-ca")
    server = LocalRedis(tls=files, directory=str(tmp_path / "redis")).start()
    try:
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={files.ca}"
        env = env_for(url, "tls", amplitude)
        # When producers, the worker (its Celery broker too) and status use rediss:// with that CA
        assert run(env, "enqueue", "--user-id", "user-00001", "--set", "seq=0").returncode == 0
        with Worker(env, tmp_path / "tls.log"):
            wait_until(lambda: amplitude.stats()["accepted"] == 1, 60, "delivery over TLS")
        assert run(env, "status").returncode == 0
        # Then the broker's connection was verified too (kombu says when it is not)
        assert "insecure SSL" not in (tmp_path / "tls.log").read_text()
        # And a client that trusts another CA is refused, with one line
        wrong = env_for(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={other_ca.ca}", "tls", amplitude)
        refused = run(wrong, "status")
        assert refused.returncode == 4
        assert "certificate verify failed" in one_line_error(refused)
    finally:
        server.cleanup()


# -- Sentinel, replicas, failover --------------------------------------------------------------------
@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[LocalRedis, list[LocalRedis], LocalSentinel]]:
    """A master, two replicas (one is promoted on failover, the other then replicates it), a sentinel."""
    master = LocalRedis(appendonly=True, directory=str(tmp_path / "master"),
                        extra=["--repl-diskless-sync-delay", "0"]).start()  # fmt: skip
    follow = ["--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"]
    replicas = [LocalRedis(appendonly=True, directory=str(tmp_path / f"replica{i}"), extra=follow).start()
                for i in range(2)]  # fmt: skip
    admin = master.admin()
    wait_until(lambda: admin.info("replication").get("connected_slaves", 0) == 2, 30, "the replicas")
    admin.close()
    sentinel = LocalSentinel(master.port).start()
    yield master, replicas, sentinel
    for server in (sentinel, *replicas, master):
        server.cleanup()


@pytest.mark.timeout(300)
def test_a_failover_loses_nothing_that_was_acknowledged(
    sentinel_set: tuple[LocalRedis, list[LocalRedis], LocalSentinel], amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    master, replicas, sentinel = sentinel_set
    url = sentinel.url()
    config = QueueConfig(redis_url=url, namespace="ha", shards=4, min_replicas=1, replica_timeout_ms=500)
    acknowledged: list[dict[str, Any]] = []
    refused = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal refused
        producer = IdentifyProducer(config)
        for n in range(100_000):
            if stop.is_set():
                return
            record = {"user_id": f"user-{n % 50:05d}", "user_properties": {"$set": {"n": n}}}
            try:
                producer.identify_many([record])
                acknowledged.append(record)
            except (NotReplicated, StoreError):
                refused += 1  # not acknowledged: the producer may retry, it may not assume it is there
                time.sleep(0.05)

    # Given producers enqueueing through Sentinel, each record acknowledged only once a replica has
    # it, and a worker draining
    env = env_for(url, "ha", amplitude, IDENTIFY_MIN_REPLICAS="1")
    thread = threading.Thread(target=produce, daemon=True)
    with Worker(env, tmp_path / "ha.log"):
        thread.start()
        # a worker that has been draining: kombu can end a worker whose broker connection drops in
        # the moment after it connected ("Unrecoverable error", see docs/operations.md)
        wait_until(lambda: " ready." in (tmp_path / "ha.log").read_text(errors="replace"), 60, "the worker ready")
        start = amplitude.stats()["accepted"]
        wait_until(lambda: len(acknowledged) > 300 and amplitude.stats()["accepted"] > start + 100, 60, "traffic")
        # When the master is killed mid-drain and mid-enqueue
        master.stop(kill=True)
        killed_at = time.monotonic()
        wait_until(lambda: sentinel.master_port() in {r.port for r in replicas}, 60, "the failover")
        failed_over_s = time.monotonic() - killed_at
        before = len(acknowledged)
        wait_until(lambda: len(acknowledged) > before + 200, 60, "producers going on after the failover")
        stop.set()
        thread.join(30)
        # Then every process went on without a restart, and everything acknowledged was delivered
        wait_until(lambda: done_through_sentinel(url, "ha"), 120, "delivery after the failover")
    delivered = {(r["user_id"], r["user_properties"]["$set"]["n"]) for r in amplitude.accepted()}
    lost = [r for r in acknowledged if (r["user_id"], r["user_properties"]["$set"]["n"]) not in delivered]
    assert lost == []
    print(f"failover: {len(acknowledged)} acknowledged, {refused} refused, {len(lost)} lost, "
          f"master killed -> replica promoted in {failed_over_s:.1f} s")  # fmt: skip


def test_with_a_stalled_replica_enqueues_are_refused_not_acknowledged(
    sentinel_set: tuple[LocalRedis, list[LocalRedis], LocalSentinel], amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    _master, replicas, sentinel = sentinel_set
    env = env_for(sentinel.url(), "stall", amplitude, IDENTIFY_MIN_REPLICAS="1", IDENTIFY_REPLICA_TIMEOUT_MS="300")
    assert run(env, "enqueue", "--user-id", "user-00001", "--set", "seq=0").returncode == 0
    for replica in replicas:
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
    try:
        # The Python API raises NotReplicated, the CLI exits 4 with one line, serve answers 503
        config = QueueConfig(redis_url=sentinel.url(), namespace="stall", shards=4, min_replicas=1,
                             replica_timeout_ms=300)  # fmt: skip
        with IdentifyProducer(config) as producer, pytest.raises(NotReplicated):
            producer.identify(user_id="user-00002", user_properties={"$set": {"seq": 0}})
        refused = run(env, "enqueue", "--user-id", "user-00003", "--set", "seq=0")
        assert refused.returncode == 4
        assert "0 of 1 replica(s) confirmed" in one_line_error(refused)
        port = free_port()
        serve_env = {**os.environ, **env, "IDENTIFY_INGEST_TOKEN": "ingest-token-0123456789"}
        with (tmp_path / "serve.log").open("wb") as log:
            server = subprocess.Popen([*COMMAND, "serve", "--port", str(port)], env=serve_env, stdout=log,
                                      stderr=subprocess.STDOUT)  # fmt: skip
        try:
            code, retry_after = wait_until(lambda: _post(port), 30, "serve")
            assert code == 503 and retry_after
        finally:
            server.terminate()
            server.wait(10)
    finally:
        for replica in replicas:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGCONT)


def _post(port: int) -> tuple[int, str | None] | None:
    """(status, Retry-After) of a POST to serve; None while it is not listening yet."""
    identification = '{"user_id": "user-00004", "user_properties": {"a": 1}}'
    try:
        body = {"api_key": "ingest-token-0123456789", "identification": identification}
        answer = requests.post(f"http://127.0.0.1:{port}/identify", timeout=5, data=body)
    except requests.ConnectionError:
        return None
    return answer.status_code, answer.headers.get("Retry-After")


# -- restarts and persistence -------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_after_a_redis_restart_draining_resumes_within_three_seconds(
    amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    # Given a Redis with AOF, a backlog, and a worker draining it slowly (50 ms per answer)
    port = free_port(stable=True)
    server = LocalRedis(port=port, appendonly=True, directory=str(tmp_path / "redis")).start()
    try:
        config = QueueConfig(redis_url=server.url, namespace="restart", shards=4)
        IdentifyProducer(config).identify_many(seq_records(400, 10))
        amplitude.control(delay_ms=50)
        env = worker_env(config, amplitude.identify_url, IDENTIFY_BATCH_SIZE="100", IDENTIFY_LEASE_TTL_S="30",
                         IDENTIFY_HTTP_TIMEOUT_S="5")  # fmt: skip
        with Worker(env, tmp_path / "w.log"):
            wait_until(lambda: amplitude.stats()["accepted"] > 300, 60, "draining")
            # When Redis is killed (kill -9) mid-drain and started again from its AOF 3 s later
            server.stop(kill=True)
            time.sleep(3)  # the outage itself: the fault being injected
            server = LocalRedis(port=port, appendonly=True, directory=str(tmp_path / "redis")).start()
            restarted = time.monotonic()
            accepted = amplitude.stats()["accepted"]
            wait_until(lambda: amplitude.stats()["accepted"] > accepted + 100, 30, "draining again")
            resumed_s = time.monotonic() - restarted
            wait_until(lambda: status(config)["accepted_not_done"] == 0, 120, "the whole backlog")
            done_s = time.monotonic() - restarted
        # Then draining resumed within 3 s (no shard waited out its lease), and nothing was lost
        assert check_delivery(amplitude.accepted(), 400, 10) >= 0
        assert resumed_s < 3.0, f"draining resumed {resumed_s:.1f} s after the restart"
        print(f"restart: draining resumed {resumed_s:.2f} s after Redis came back; backlog done after {done_s:.1f} s")
    finally:
        server.cleanup()


def test_the_worker_warns_when_redis_keeps_nothing_on_disk(amplitude: LocalAmplitudeProcess, tmp_path: Path) -> None:
    server = LocalRedis(appendonly=False, directory=str(tmp_path / "redis")).start()  # and --save ""
    try:
        env = env_for(server.url, "volatile", amplitude)
        with Worker(env, tmp_path / "w.log"):
            wait_until(lambda: "ready" in (tmp_path / "w.log").read_text(), 30, "the worker")
        assert (tmp_path / "w.log").read_text().count("keeps nothing on disk") == 1
    finally:
        server.cleanup()
    server = LocalRedis(appendonly=True, directory=str(tmp_path / "redis2")).start()
    try:
        with Worker(env_for(server.url, "durable", amplitude), tmp_path / "w2.log"):
            wait_until(lambda: "ready" in (tmp_path / "w2.log").read_text(), 30, "the worker")
        assert "keeps nothing on disk" not in (tmp_path / "w2.log").read_text()
    finally:
        server.cleanup()


def test_a_sentinel_url_is_read_and_refused_clearly_when_malformed() -> None:
    for url, why in [("redis+sentinel://127.0.0.1:26379", "names no Sentinel service"),
                     ("redis://127.0.0.1:notaport/0", "port that is not a number"),
                     ("redis://127.0.0.1:70000/0", "port that is not a number"),
                     ("redis://h/0?ssl_ca_certs=/x", "use rediss://")]:  # fmt: skip
        result = run({"REDIS_URL": url}, "status")
        assert result.returncode == 2
        line = one_line_error(result)
        assert "REDIS_URL" in line and why in line, line
        assert SENTINEL_API_KEY not in line
