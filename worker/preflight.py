"""Checks a worker makes before it starts, each failing with a message that says what to change.

On managed Redis (ElastiCache, Memorystore, Azure Cache, Redis Cloud) the worker's user may lack
INFO and CONFIG: what cannot be read is said once as a warning and the worker goes on; what must
hold (a queue laid out as this worker reads it, the channels Celery's control needs) fails here,
before Celery starts, with one line and a non-zero exit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.exceptions import NoPermissionError

from producers.contract.connection import describe, parse_url, store_errors
from producers.contract.errors import ConfigError, QueueMismatch, StoreError
from producers.contract.keys import Keys
from producers.contract.topology import is_cluster
from producers.producer import LAYOUT_VERSION, mismatch
from worker.drain.store import ShardStore
from worker.settings import Settings

log = logging.getLogger("identify_queue.worker")


def check_redis(client: redis.Redis, settings: Settings) -> None:
    """Redis must keep every key (an evicted queue key is lost data) and match our queue layout."""
    url = describe(settings.queue.redis_url)
    try:
        with store_errors(f"connect to {url}"):
            client.ping()
    except StoreError as exc:
        raise StoreError(f"{exc}; set REDIS_URL to a reachable Redis") from None
    if is_cluster(client) and settings.broker_url == settings.queue.redis_url:
        raise ConfigError(
            f"REDIS_URL ({url}) is a Redis Cluster, which Celery's broker cannot use: set IDENTIFY_BROKER_URL to a "
            "standalone Redis, a Sentinel URL or amqp:// (it carries only wake-ups, never records)"
        )
    _check_eviction(client, url)
    _check_persistence(client, url)
    keys = Keys(settings.queue.namespace)
    with store_errors("read queue layout"):
        shards, layout = client.hmget(keys.meta, ["shards", "layout"])
    if shards is not None and int(shards) != settings.queue.shards:  # int() takes bytes of digits
        raise QueueMismatch(
            f"IDENTIFY_SHARDS is {settings.queue.shards} but the queue in Redis (namespace "
            f"{settings.queue.namespace!r}) has {int(shards)} shards; changing it while records are queued would "
            f"reorder users. Use the same value everywhere, or drain the queue and delete the key {keys.meta} first."
        )
    stored_layout = layout.decode() if isinstance(layout, bytes) else layout
    if stored_layout is not None and stored_layout != LAYOUT_VERSION:
        raise mismatch(settings.queue.shards, {"shards": str(settings.queue.shards), "layout": stored_layout})
    if ShardStore(client, keys, settings.lease_ttl_s).probe_now():
        log.warning("sending is blocked by a configuration error; this worker probes at once")
    with store_errors("write queue layout"):
        client.hset(
            keys.meta,
            mapping={"shards": settings.queue.shards, "layout": LAYOUT_VERSION, "linger_ms": settings.linger_ms},
        )


def _info(client: redis.Redis, section: str) -> dict[str, Any] | None:
    """An INFO section, or None when the Redis user may not run INFO (managed Redis often)."""
    try:
        with store_errors(f"read INFO {section}"):
            return dict(client.info(section))
    except StoreError as exc:
        if isinstance(exc.__cause__, NoPermissionError):
            return None
        raise


def _check_eviction(client: redis.Redis, url: str) -> None:
    info = _info(client, "memory")
    if info is None:
        log.warning("Redis at %s does not let this user run INFO: cannot check that maxmemory-policy is "
                    "noeviction; make sure it is (an evicted queue key is lost data)", url)  # fmt: skip
        return
    policy = info.get("maxmemory_policy", "noeviction")
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy != "noeviction":
        raise ConfigError(
            f"Redis at {url} runs with maxmemory-policy {policy}: it may evict queued records. "
            "Set `maxmemory-policy noeviction` (redis.conf or CONFIG SET) and start again."
        )


def persists_nothing(info: dict[str, Any], save: str | None) -> bool:
    """Whether Redis surely keeps nothing on disk: no AOF, and no RDB snapshot points (``save``,
    None when it cannot be read: then nothing is claimed)."""
    return not int(info.get("aof_enabled", 0)) and save is not None and not save.strip()


def _check_persistence(client: redis.Redis, url: str) -> None:
    info = _info(client, "persistence")
    if info is None:
        return
    try:
        with store_errors("read the save configuration"):
            save: str | None = str(client.config_get("save").get("save", ""))
    except StoreError:
        save = None  # CONFIG is an admin command; managed Redis keeps it from users
    if persists_nothing(info, save):
        log.warning(
            "Redis at %s keeps nothing on disk (appendonly no, no RDB snapshots): a Redis restart loses every "
            "queued record. Run it with appendonly yes (docs/guarantees.md).",
            url,
        )


def check_channels(client: redis.Redis, settings: Settings) -> None:
    """Celery's control (celery inspect, Flower) subscribes to a channel; a Redis user without the
    right to it would make the worker exit after it said it was ready.  Say so before it starts."""
    if not settings.remote_control or settings.broker_url != settings.queue.redis_url:
        return
    channel = control_channel(settings)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        with store_errors("subscribe to Celery's control channel"):
            pubsub.psubscribe(channel)
            # the refusal comes as the subscription's reply: read it
            deadline = time.monotonic() + 5
            while pubsub.get_message(timeout=0.5) is None and time.monotonic() < deadline:
                pass
            pubsub.punsubscribe(channel)
    except StoreError as exc:
        if isinstance(exc.__cause__, NoPermissionError):
            raise ConfigError(
                f"the Redis user may not subscribe to {channel} (Celery's control channel, for celery inspect and "
                f"Flower): grant it with ACL SETUSER <user> &{channel}, or set IDENTIFY_REMOTE_CONTROL=0"
            ) from None
        raise
    finally:
        pubsub.close()


def control_channel(settings: Settings) -> str:
    """The channel Celery's control listens on, as kombu names it on Redis."""
    return f"{Keys(settings.queue.namespace).kombu_prefix}/{parse_url(settings.queue.redis_url).db}.celery.pidbox"


def least_privilege_acl(settings: Settings, user: str = "identify", events: bool = False) -> str:
    """The ACL SETUSER line for a Redis user that can do everything identify-queue does, and no more.

    Keys under the namespace; the commands the scripts and clients run; Celery's control channel
    (and its event channels with ``events``); INFO for the worker's start checks (optional: without
    it the worker only warns).  Nothing of @admin or @dangerous but INFO.
    """
    ns = settings.queue.namespace
    channels = [f"&{control_channel(settings)}"] if settings.remote_control else []
    if events:
        prefix = Keys(ns).kombu_prefix
        channels.append(f"&{prefix}/{parse_url(settings.queue.redis_url).db}.celeryev/*")
    commands = [
        "-@all", "+@read", "+@write", "+@scripting", "+@transaction", "+@connection", "+@pubsub", "+@list",
        "+@hash", "+@sortedset", "+@string", "+@keyspace", "+@set", "+@blocking", "+time", "+wait",
        "-@dangerous", "+info",
    ]  # fmt: skip
    return " ".join(["ACL SETUSER", user, "on", ">PASSWORD", "resetkeys", f"~{ns}:*", "resetchannels", *channels,
                     *commands])  # fmt: skip
