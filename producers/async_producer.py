"""AsyncIdentifyProducer: IdentifyProducer for asyncio backends (FastAPI, Starlette, aiohttp).

The same validation, errors, queue semantics and settings as ``IdentifyProducer``: the script calls
are built by the code they share (``ProducerCore``) and only the round trips are asyncio's
(redis.asyncio, ``run_together_async``).  ``identify`` returns once Redis holds the record;
concurrent calls go together in one enqueue (``AsyncGroupCommit``).

One Redis and Sentinel are supported.  A Redis Cluster is refused with one line
(``ASYNC_CLUSTER_REFUSED``): use IdentifyProducer there, from a thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import redis

from producers.contract.connection import ASYNC_CLUSTER_REFUSED, close_async, connect_async, store_errors
from producers.contract.errors import ConfigError, QueueFull, StoreError
from producers.contract.settings import QueueConfig
from producers.contract.topology import run_together_async
from producers.grouping import AsyncGroupCommit, Outcomes
from producers.producer import EnqueuePlan, EnqueueReport, ProducerCore
from producers.record import ValidRecord


class AsyncIdentifyProducer(ProducerCore):
    """Enqueue identifications from coroutines.

    >>> producer = AsyncIdentifyProducer.from_env()
    >>> await producer.identify(user_id="user-42", user_properties={"$set": {"plan": "pro"}})
    >>> await producer.aclose()

    Use one producer per event loop (its connections belong to the loop that first used them).
    """

    def __init__(self, config: QueueConfig | None = None, *, client: Any = None) -> None:
        """``client``: a redis.asyncio client of one Redis (by default, one for REDIS_URL)."""
        config = config or QueueConfig()
        super().__init__(config, None, cluster=False)
        self._redis = client if client is not None else connect_async(config.redis_url)
        self._group: AsyncGroupCommit[ValidRecord] = AsyncGroupCommit(self._enqueue_group)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AsyncIdentifyProducer:
        return cls(QueueConfig.from_env(env))

    async def aclose(self) -> None:
        """Wait for the enqueues under way, then close the connections."""
        await self._group.wait_idle()
        await close_async(self._redis)

    async def __aenter__(self) -> AsyncIdentifyProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> Any:
        return self._redis

    @property
    def groups(self) -> int:
        """Grouped enqueues run so far by ``identify``."""
        return self._group.groups

    async def identify(self, record: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Validate and enqueue one identification, given as a mapping, keywords, or both."""
        valid = self._merged(record, fields)
        if self.config.group_commit:
            await self._group.submit(valid)
        else:
            await self.enqueue_valid([valid])

    async def identify_many(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        chunk_size: int = 1000,
        errors: Literal["raise", "collect"] = "raise",
    ) -> EnqueueReport:
        """As ``IdentifyProducer.identify_many``: pipelined in chunks, the same errors."""
        report = EnqueueReport()
        for chunk in self._chunks(records, chunk_size, errors, report):
            try:
                report.enqueued += await self.enqueue_valid(chunk)
            except QueueFull as full:
                raise QueueFull(full.queued, full.cap, report.enqueued) from None
        return report

    async def enqueue_valid(self, records: Sequence[ValidRecord]) -> int:
        """Append already-validated records in one atomic script; all of them or none."""
        if not records:
            return 0
        plan = self._plan(records)
        await self._check_layout()
        replies = await self._run(plan)
        enqueued = self._result(plan, replies).enqueued
        if enqueued:
            await self._record_layout()
        return enqueued

    async def _enqueue_group(self, records: list[ValidRecord]) -> Outcomes:
        try:
            await self._check_layout()
            plan = self._plan(records)
            replies = await self._run(plan)
        except Exception as exc:
            return [exc] * len(records)
        outcomes = self.group_outcomes(plan, replies, len(records))
        if None in outcomes:
            await self._record_layout()
        return outcomes

    async def _run(self, plan: EnqueuePlan) -> list[Any]:
        config = self.config
        return await run_together_async(
            self._redis,
            plan.calls,
            replicas=config.min_replicas,
            replica_timeout_ms=config.replica_timeout_ms,
            action="enqueue",
        )

    async def _check_layout(self) -> None:
        """As IdentifyProducer's, once per producer; also refuses a Redis Cluster node, which
        answers this first round trip (a cluster client would be needed to follow its slots)."""
        if self._layout_checked:
            return
        with store_errors("read the queue layout"):
            try:
                info = await self._redis.info("cluster")
            except redis.ResponseError:
                info = {}  # a user without INFO: a cluster's node then answers MOVED below
            if info.get("cluster_enabled"):
                raise ConfigError(ASYNC_CLUSTER_REFUSED)
            stored = await self._redis.hmget(self.keys.meta, ["shards", "layout"])
        self._layout_verdict(stored)
        self._layout_checked = True

    async def _record_layout(self) -> None:
        """As IdentifyProducer's: once something was written, never failing the caller."""
        if self._layout_recorded:
            return
        with contextlib.suppress(StoreError), store_errors("record the queue layout"):
            pipe = self._redis.pipeline(transaction=False)
            for field, value in self._layout_fields():
                pipe.hsetnx(self.keys.meta, field, value)
            await pipe.execute()
            self._layout_recorded = True

    async def queued(self) -> int:
        """Records accepted and not yet delivered or dead-lettered."""
        with store_errors("read queued count"):
            pipe = self._redis.pipeline(transaction=False)
            for s in range(self.config.shards):
                pipe.get(self.keys.shard(s).total)
            return sum(int(v or 0) for v in await pipe.execute())
