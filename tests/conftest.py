"""Fixtures: a private redis-server, the local Amplitude-compatible server, real worker processes.

Nothing here touches a Redis on 6379: the session's redis-server listens on a free port, and each
test works in its own namespace of keys (and Celery queue), so tests cannot see each other.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis

from producers.config import QueueConfig
from producers.producer import IdentifyProducer
from tests.helpers import SENTINEL_API_KEY
from worker.local_redis import LocalRedis
from worker.local_stack import LocalAmplitudeProcess, WorkerProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def namespace() -> str:
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def queue_config(request: pytest.FixtureRequest, redis_server: LocalRedis, namespace: str) -> QueueConfig:
    """Eight shards, unless the test says otherwise with ``@pytest.mark.shards(n)``."""
    marker = request.node.get_closest_marker("shards")
    return QueueConfig(redis_url=redis_server.url, namespace=namespace, shards=marker.args[0] if marker else 8)


@pytest.fixture
def producer(queue_config: QueueConfig) -> Iterator[IdentifyProducer]:
    with IdentifyProducer(queue_config) as p:
        yield p


@pytest.fixture(scope="session")
def amplitude_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAmplitudeProcess]:
    log = tmp_path_factory.mktemp("amplitude") / "local-amplitude.log"
    server = LocalAmplitudeProcess(api_key=SENTINEL_API_KEY, log_path=log).start()
    yield server
    server.stop()


@pytest.fixture
def amplitude(amplitude_server: LocalAmplitudeProcess) -> LocalAmplitudeProcess:
    """The session's local Amplitude, with its state and faults reset for this test."""
    amplitude_server.reset()
    return amplitude_server


def worker_env(queue_config: QueueConfig, identify_url: str, **overrides: str) -> dict[str, str]:
    """Settings for test workers: short timeouts and leases, so that faults resolve in seconds."""
    env = {
        "REDIS_URL": queue_config.redis_url,
        "IDENTIFY_NAMESPACE": queue_config.namespace,
        "IDENTIFY_SHARDS": str(queue_config.shards),
        "AMPLITUDE_API_KEY": SENTINEL_API_KEY,
        "AMPLITUDE_IDENTIFY_URL": identify_url,
        "IDENTIFY_BATCH_LINGER_MS": "20",
        "IDENTIFY_HTTP_CONNECT_TIMEOUT_S": "0.5",
        "IDENTIFY_HTTP_TIMEOUT_S": "2",
        "IDENTIFY_LEASE_TTL_S": "3",
        "IDENTIFY_DRAIN_SLICE_S": "1",
        "IDENTIFY_COALESCE": "0",
        "IDENTIFY_METRICS_PORT": "0",
    }
    env.update(overrides)
    return env


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``identify-queue worker`` processes; all are stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start(
        concurrency: int = 2, identify_url: str | None = None, pool: str = "prefork",
        preload: Mapping[str, str] | None = None, **env: str,
    ) -> WorkerProcess:  # fmt: skip
        """``preload``: environment the worker gets beyond its settings (LD_PRELOAD for faketime)."""
        name = f"w{len(started)}-{secrets.token_hex(2)}"
        worker = WorkerProcess(
            {**worker_env(queue_config, identify_url or amplitude.identify_url, **env), **(preload or {})},
            name=name,
            concurrency=concurrency,
            pool=pool,
            log_path=tmp_path / f"{name}.log",
        ).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker_logs(tmp_path: Path) -> Callable[[], str]:
    def read() -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("w*.log")))

    return read
