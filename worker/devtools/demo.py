"""``identify-queue demo``: the whole job, end to end, on embedded defaults.

A private Redis (unless REDIS_URL is set), the local Amplitude-compatible server (unless
AMPLITUDE_API_KEY is set), a producer, a worker in its own process; then a check of what arrived.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from producers.contract.connection import connect, describe
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import LocalAmplitudeProcess, WorkerProcess
from worker.status import gather

PLANS = ("free", "starter", "growth", "enterprise")


def demo_records(users: int, updates: int) -> Iterator[dict[str, Any]]:
    """Each user's updates, interleaved with everybody else's as they would arrive from services."""
    for seq in range(updates):
        for u in range(users):
            yield {
                "user_id": f"demo-user-{u:06d}",
                "user_properties": {
                    "$set": {"seq": seq, "plan": PLANS[(u + seq) % len(PLANS)]},
                    "$add": {"sessions": 1},
                },
                "platform": "Web",
                "language": "en",
            }


def run_demo(users: int | None, updates: int, concurrency: int) -> int:
    real_key = os.environ.get("AMPLITUDE_API_KEY", "").strip()
    users = users or (3 if real_key else 2000)
    logs = Path(tempfile.mkdtemp(prefix="identify-queue-demo-"))
    with ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL", "").strip()
        if not redis_url:
            local_redis = LocalRedis().start()
            stack.callback(local_redis.cleanup)
            redis_url = local_redis.url
            click.echo(f"redis      private redis-server at {redis_url}")
        else:
            click.echo(f"redis      {describe(redis_url)} (REDIS_URL)")
        server: LocalAmplitudeProcess | None = None
        if real_key:
            identify_url = os.environ.get("AMPLITUDE_IDENTIFY_URL", "https://api2.amplitude.com/identify")
            api_key = real_key
            click.echo(f"amplitude  {identify_url} (AMPLITUDE_API_KEY is set: sending {users} users for real)")
        else:
            api_key = "demo-" + secrets.token_hex(8)
            server = LocalAmplitudeProcess(api_key=api_key, log_path=logs / "local-amplitude.log").start()
            stack.callback(server.stop)
            identify_url = server.identify_url
            click.echo(f"amplitude  local Amplitude-compatible server at {identify_url}")
        namespace = os.environ.get("IDENTIFY_NAMESPACE") or f"identify-demo-{secrets.token_hex(3)}"
        config = QueueConfig.from_env({**os.environ, "REDIS_URL": redis_url, "IDENTIFY_NAMESPACE": namespace})

        total = users * updates
        started = time.perf_counter()
        with IdentifyProducer(config) as producer:
            report = producer.identify_many(demo_records(users, updates))
        enqueued_s = time.perf_counter() - started
        click.echo(f"enqueued   {report.enqueued:,} identifications for {users:,} users in {enqueued_s:.2f} s")

        env = {"REDIS_URL": redis_url, "IDENTIFY_NAMESPACE": namespace, "AMPLITUDE_API_KEY": api_key,
               "AMPLITUDE_IDENTIFY_URL": identify_url, "IDENTIFY_SHARDS": str(config.shards)}  # fmt: skip
        worker = WorkerProcess(env, name=f"demo-{secrets.token_hex(2)}", concurrency=concurrency,
                               log_path=logs / "worker.log").start()  # fmt: skip
        stack.callback(worker.stop)
        click.echo(f"worker     {concurrency} processes draining (log: {logs / 'worker.log'})")
        status = _wait_delivered(config, total, worker)
        elapsed = time.perf_counter() - started
        if status is None:
            click.echo(f"the worker stopped before delivering everything; see {logs / 'worker.log'}", err=True)
            return 1
        sent = f" as {server.stats()['accepted']:,} merged identifications" if server is not None else ""
        click.echo(
            f"delivered  {status['delivered']:,} updates{sent} in {status['requests']:,} requests, "
            f"{elapsed:.2f} s after the first enqueue ({status['delivered'] / elapsed:,.0f}/s end to end)"
        )
        if server is None:
            return 0
        return _check_order(server, users, updates)


def _wait_delivered(config: QueueConfig, total: int, worker: WorkerProcess) -> dict[str, Any] | None:
    client = connect(config.redis_url)
    keys = Keys(config.namespace)
    last_print = 0.0
    while True:
        status = gather(client, keys, config.shards)
        if status["accepted_not_done"] == 0:
            return status
        if not worker.alive():
            return None
        if time.monotonic() - last_print > 1.0:
            click.echo(f"           {status['delivered']:,} of {total:,} delivered, {status['queued']:,} queued")
            last_print = time.monotonic()
        time.sleep(0.05)  # polling what a human watches, not synchronising anything


def _check_order(server: LocalAmplitudeProcess, users: int, updates: int) -> int:
    """Every user's `seq` values must arrive increasing (merged updates skip some), and each user
    must end with its last update and the sum of all its sessions."""
    seen: dict[str, int] = {}
    broken = 0
    accepted = server.accepted()
    for record in accepted:
        ops = record["user_properties"]
        seq = ops["$set"]["seq"]
        user = record["user_id"]
        if seq <= seen.get(user, -1):
            broken += 1
        seen[user] = seq
    finished = sum(1 for user, seq in seen.items() if seq == updates - 1)
    example = server.user("demo-user-000001") if users > 1 else server.user("demo-user-000000")
    if example is None or example["user_properties"].get("sessions") != updates:
        broken += 1
    click.echo(
        f"order      {users - broken:,} of {users:,} users received their updates in the order enqueued; "
        f"{finished:,} hold their last update"
    )
    click.echo(f"example    demo-user-000001 in the local Amplitude now: {example}")
    return 0 if broken == 0 and finished == users else 1
