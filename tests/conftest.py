"""Fixtures: a private redis-server, the local Amplitude-compatible server, real worker processes.

Nothing here touches a Redis on 6379: the session's redis-server listens on a free port, and each
test works in its own namespace of keys (and Celery queue), so tests cannot see each other.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis
from hypothesis import settings

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import SENTINEL_API_KEY, AnswerDroppingProxy, StartWorker, worker_env
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import LocalAmplitudeProcess, WorkerProcess

# Property tests draw the same examples on every run: a run is deterministic, and a failure found
# locally with IDENTIFY_HYPOTHESIS=random is added as an @example.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("IDENTIFY_HYPOTHESIS", "deterministic"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = LocalRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def proxy(redis_server: LocalRedis) -> Iterator[AnswerDroppingProxy]:
    """A loopback proxy in front of the session's redis-server that can lose answers (tests/support.py)."""
    p = AnswerDroppingProxy(redis_server.port)
    yield p
    p.close()


@pytest.fixture
def namespace() -> str:
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture
def keys(namespace: str) -> Keys:
    """The test's keys: every key a script test reads or passes is built here (producers/contract/keys.py)."""
    return Keys(namespace)


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def clear_namespace(keys: Keys, redis_client: redis.Redis) -> Iterator[None]:
    """Unlink every key of the test's namespace after it: for tests that queue up to a million
    records, whose memory the session's Redis should get back."""
    yield
    for key in redis_client.scan_iter(match=keys.pattern(), count=1000):
        redis_client.unlink(key)


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
