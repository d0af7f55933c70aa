"""Checks a worker makes before it starts, each failing with a message that says what to change."""

from __future__ import annotations

import logging

import redis

from producers.contract.connection import describe, store_errors
from producers.contract.errors import ConfigError, QueueMismatch, StoreError
from producers.contract.keys import Keys
from producers.producer import LAYOUT_VERSION
from worker.drain.store import ShardStore
from worker.settings import Settings

log = logging.getLogger("identify_queue.worker")


def check_redis(client: redis.Redis, settings: Settings) -> None:
    """Redis must keep every key (an evicted queue key is lost data) and match our queue layout."""
    url = describe(settings.queue.redis_url)
    try:
        with store_errors(f"connect to {url}"):
            info = client.info("memory")
    except StoreError as exc:
        raise StoreError(f"{exc}; set REDIS_URL to a reachable Redis") from None
    policy = info.get("maxmemory_policy", "noeviction")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy != "noeviction":
        raise ConfigError(
            f"Redis at {url} runs with maxmemory-policy {policy}: it may evict queued records. "
            "Set `maxmemory-policy noeviction` (redis.conf or CONFIG SET) and start again."
        )
    keys = Keys(settings.queue.namespace)
    with store_errors("read queue layout"):
        shards, layout = client.hmget(keys.meta, ["shards", "layout"])
    if shards is not None and int(shards) != settings.queue.shards:  # int() takes bytes of digits
        raise QueueMismatch(
            f"IDENTIFY_SHARDS is {settings.queue.shards} but the queue in Redis (namespace "
            f"{settings.queue.namespace!r}) has {int(shards)} shards; changing it while records are "
            "queued would reorder users. Use the same value everywhere, or drain the queue and "
            f"delete the key {keys.meta} first."
        )
    if layout is not None and int(layout) != int(LAYOUT_VERSION):
        raise QueueMismatch(f"the queue in Redis has entry layout {int(layout)}, this worker reads {LAYOUT_VERSION}")
    if ShardStore(client, keys, settings.lease_ttl_s).probe_now():
        log.warning("sending is blocked by a configuration error; this worker probes at once")
    with store_errors("write queue layout"):
        client.hset(
            keys.meta,
            mapping={"shards": settings.queue.shards, "layout": LAYOUT_VERSION, "linger_ms": settings.linger_ms},
        )
