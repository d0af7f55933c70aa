"""AsyncIdentifyProducer against a real redis-server: the blocking producer's semantics as
coroutines, grouped concurrent calls, Sentinel, a cluster refused, and a real ASGI app (Starlette
served by uvicorn) under concurrent requests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from producers import AsyncIdentifyProducer, IdentifyProducer
from producers.contract import entry
from producers.contract.errors import ConfigError, InvalidRecord, QueueFull, QueueMismatch
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from tests.support import listed, wait_until
from worker.devtools.local_redis import LocalRedis, LocalSentinel, free_port


def seqs_of(client: redis.Redis, keys: Keys, shards: int, user: str) -> list[int]:
    queue = keys.shard(entry.shard_of(f"u:{user}", shards)).queue
    return [int(r.data.split(b'"seq":')[1].split(b"}")[0]) for r in map(entry.decode, listed(client, queue))
            if r.user_key == f"u:{user}"]  # fmt: skip


def test_identify_and_identify_many_behave_as_the_blocking_producer(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    async def main() -> None:
        async with AsyncIdentifyProducer(queue_config) as producer:
            await producer.identify({"user_id": "user-00001"}, user_properties={"$set": {"seq": 0}})
            assert seqs_of(redis_client, keys, queue_config.shards, "user-00001") == [0]
            with pytest.raises(InvalidRecord) as invalid:
                await producer.identify(user_id="x", user_properties={"$set": {"seq": 1}})
            rows = [{"user_id": "user-00002", "user_properties": {"$set": {"seq": i}}} for i in range(3)]
            report = await producer.identify_many([*rows, {"user_id": "y"}], errors="collect")
            assert (report.enqueued, [r.index for r in report.rejected]) == (3, [3])
            with pytest.raises(InvalidRecord) as at:
                await producer.identify_many([rows[0], {"user_id": "y"}, rows[1]])
            assert await producer.queued() == 5

        with IdentifyProducer(queue_config) as blocking, pytest.raises(InvalidRecord) as blocking_invalid:
            blocking.identify(user_id="x", user_properties={"$set": {"seq": 1}})
        # the same error, field and rule as IdentifyProducer's
        assert (invalid.value.field, invalid.value.rule, str(invalid.value)) == (
            blocking_invalid.value.field, blocking_invalid.value.rule, str(blocking_invalid.value))  # fmt: skip
        assert at.value.index == 1
        assert seqs_of(redis_client, keys, queue_config.shards, "user-00002") == [0, 1, 2, 0]

    asyncio.run(main())


def test_concurrent_calls_are_grouped_and_a_failure_reaches_only_its_calls(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    async def main() -> dict[int, str]:
        async with AsyncIdentifyProducer(queue_config) as producer:

            async def one(i: int) -> str:
                user = f"user-{i:05d}" if i % 5 else "z"
                for seq in range(5):
                    try:
                        await producer.identify(user_id=user, user_properties={"$set": {"seq": seq}})
                    except InvalidRecord:
                        return "invalid"
                    assert seqs_of(redis_client, keys, queue_config.shards, user)[-1] == seq
                return "ok"

            results = await asyncio.gather(*(one(i) for i in range(40)))
            assert producer.groups < 32 * 5  # grouped: fewer enqueues than the 160 valid calls
            return dict(enumerate(results))

    results = asyncio.run(main())
    assert {i for i, r in results.items() if r == "invalid"} == {i for i in range(40) if i % 5 == 0}
    for i in range(40):
        if i % 5:
            assert seqs_of(redis_client, keys, queue_config.shards, f"user-{i:05d}") == list(range(5))


def test_queue_full_and_a_mismatch_are_the_blocking_producers_errors(
    queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    async def main() -> None:
        async with AsyncIdentifyProducer(replace(queue_config, max_queued=3)) as producer:
            # the queue exists once a record is in it (its layout is recorded then, not before)
            await producer.identify(user_id="user-99999", user_properties={"$set": {"seq": 0}})
            outcomes = await asyncio.gather(
                *(producer.identify(user_id=f"user-{i:05d}", user_properties={"$set": {"seq": 0}}) for i in range(10)),
                return_exceptions=True,
            )
            assert all(o is None or isinstance(o, QueueFull) for o in outcomes)
            assert sum(o is None for o in outcomes) + 1 == await producer.queued() <= 3
        async with AsyncIdentifyProducer(replace(queue_config, shards=4)) as other:
            with pytest.raises(QueueMismatch, match="IDENTIFY_SHARDS is 4"):
                await other.identify(user_id="user-00001", user_properties={"$set": {"seq": 0}})

    asyncio.run(main())


def test_through_sentinel(tmp_path: Path, namespace: str) -> None:
    with LocalRedis(directory=str(tmp_path / "master")) as master:
        sentinel = LocalSentinel(master.port).start()
        try:
            config = QueueConfig(redis_url=sentinel.url(), namespace=namespace, shards=4)

            async def main() -> int:
                async with AsyncIdentifyProducer(config) as producer:
                    await asyncio.gather(*(producer.identify(user_id=f"user-{i:05d}", user_properties={})
                                           for i in range(20)))  # fmt: skip
                    return await producer.queued()

            assert asyncio.run(main()) == 20
        finally:
            sentinel.cleanup()


def test_a_redis_cluster_is_refused_with_one_line(namespace: str) -> None:
    with pytest.raises(ConfigError, match="not a Redis Cluster"):
        AsyncIdentifyProducer(QueueConfig(redis_url="redis://127.0.0.1:7001,127.0.0.1:7002", namespace=namespace))
    node = LocalRedis(extra=["--cluster-enabled", "yes", "--cluster-port", str(free_port())]).start()
    try:

        async def main() -> None:
            async with AsyncIdentifyProducer(QueueConfig(redis_url=node.url, namespace=namespace)) as producer:
                await producer.identify(user_id="user-00001", user_properties={})

        with pytest.raises(ConfigError, match="not a Redis Cluster"):
            asyncio.run(main())
    finally:
        node.cleanup()


# -- a real ASGI app under concurrent requests -------------------------------------------------------
@pytest.fixture
def app_url(queue_config: QueueConfig) -> Iterator[str]:
    """A Starlette app that enqueues each request's identification, served by uvicorn on a free port;
    its producer lives on the server's event loop, opened and closed by the app's lifespan."""
    producers: list[AsyncIdentifyProducer] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncIdentifyProducer(queue_config) as producer:
            producers.append(producer)
            yield

    async def identify(request: Request) -> JSONResponse:
        try:
            await producers[0].identify(await request.json())
        except InvalidRecord as exc:
            return JSONResponse({"error": str(exc), "rule": exc.rule}, status_code=400)
        return JSONResponse({"queued": True})

    app = Starlette(routes=[Route("/identify", identify, methods=["POST"])], lifespan=lifespan)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_an_asgi_app_answers_each_request_once_redis_holds_its_record(
    app_url: str, queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    async def main() -> list[tuple[int, Any]]:
        async with httpx.AsyncClient(base_url=app_url, timeout=30, limits=httpx.Limits(max_connections=64)) as http:

            async def post(i: int, seq: int) -> tuple[int, Any]:
                user = f"user-{i:05d}" if i != 7 else "no"
                answer = await http.post("/identify", json={"user_id": user, "user_properties": {"$set": {"seq": seq}}})
                if answer.status_code == 200:
                    # answered: Redis holds the record already
                    assert seq in seqs_of(redis_client, keys, queue_config.shards, user)
                return answer.status_code, answer.json()

            async def user_calls(i: int) -> list[tuple[int, Any]]:
                return [await post(i, seq) for seq in range(4)]

            per_user = await asyncio.gather(*(user_calls(i) for i in range(50)))
            return [a for answers in per_user for a in answers]

    answers = asyncio.run(main())
    assert sorted(status for status, _ in answers).count(200) == 49 * 4
    assert [doc["rule"] for status, doc in answers if status == 400] == ["too_short"] * 4
    for i in range(50):
        if i != 7:
            assert seqs_of(redis_client, keys, queue_config.shards, f"user-{i:05d}") == [0, 1, 2, 3]


def test_a_redis_that_lost_its_scripts_still_takes_every_call(
    queue_config: QueueConfig, redis_client: redis.Redis
) -> None:
    async def main() -> int:
        async with AsyncIdentifyProducer(queue_config) as producer:
            await producer.identify(user_id="user-00001", user_properties={"$set": {"seq": 0}})
            redis_client.script_flush()
            await asyncio.gather(*(producer.identify(user_id=f"user-{i:05d}", user_properties={}) for i in range(8)))
            return await producer.queued()

    assert asyncio.run(main()) == 9
