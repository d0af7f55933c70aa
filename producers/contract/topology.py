"""One Redis or a Redis Cluster: found out from the server, and how calls that go together are run.

``REDIS_URL`` may name any node of a cluster: ``connect`` (connection.py) asks the server
(``INFO cluster``, else ``CLUSTER INFO``) and returns a cluster client when it is one, which
follows MOVED and ASK redirects by itself.  Every script touches the keys of one hash slot
(keys.py), so each runs whole on one node.

``run_together`` runs script calls that belong together (one chunk's shards, a producer's
group of calls, the shards the dispatcher checks): on one Redis, in one round trip (a pipeline);
on a cluster, the calls of each node in one round trip and the nodes in parallel.  With
``replicas``, each round trip ends with ``WAIT`` on the same connection, so that it waits for
exactly those writes (IDENTIFY_MIN_REPLICAS).  A call a node refused because its slot is moving
(MOVED, ASK, TRYAGAIN: never run) is run again once the client has the new slot map.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from producers.contract.connection import store_errors
from producers.contract.errors import NotReplicated, SlotMoving, StoreError
from producers.contract.scripts import Script

#: Redirected calls are run again this many times at most (a slot migration takes seconds).
REDIRECT_TRIES = 20


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


@dataclass(frozen=True)
class Call:
    script: Script
    keys: list[Any]
    args: list[Any]


def run_together(
    client: Any, calls: Sequence[Call], *, replicas: int = 0, replica_timeout_ms: int = 1000, action: str = ""
) -> list[Any]:
    """Each call's reply, or the error (an instance of the error tree) it ended with, in order.

    Errors of the round trip itself (Redis unreachable) raise StoreError; NotReplicated is given as
    the result of every call whose node did not get enough replicas to confirm in time.
    """
    if not calls:
        return []
    if not is_cluster(client):
        return _round_trip(client, list(calls), replicas, replica_timeout_ms, action)
    results: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    for attempt in range(REDIRECT_TRIES):
        pending = _run_by_node(
            client, calls, pending, results, replicas=replicas, timeout_ms=replica_timeout_ms, action=action
        )
        if not pending:
            return results
        _refresh(client)  # the slot moved: learn where it is now
        time.sleep(min(0.05 * (attempt + 1), 0.5))
    raise SlotMoving(f"{action or 'run scripts'}: a slot kept moving (cluster resharding); nothing was run")


def _run_by_node(
    client: Any, calls: Sequence[Call], pending: list[int], results: list[Any], *, replicas: int, timeout_ms: int,
    action: str,
) -> list[int]:  # fmt: skip
    """Run the pending calls, each node's in one round trip, the nodes in parallel; fill in
    ``results`` and return the calls to run again (redirected: not run)."""
    by_node: dict[str, list[int]] = {}
    for i in pending:
        by_node.setdefault(client.get_node_from_key(calls[i].keys[0]).name, []).append(i)

    def one(name: str, indices: list[int]) -> tuple[list[int], list[Any]]:
        node_client = client.get_redis_connection(client.get_node(node_name=name))
        return indices, _round_trip(node_client, [calls[i] for i in indices], replicas, timeout_ms, action)

    try:
        if len(by_node) == 1:
            done = [one(*next(iter(by_node.items())))]
        else:
            with ThreadPoolExecutor(max_workers=len(by_node)) as pool:
                done = list(pool.map(lambda item: one(*item), by_node.items()))
    except StoreError as exc:
        if isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
            # A node is down (failing over, perhaps): whether its calls ran is unknown, so they are
            # not run again here; the caller's next try goes by a fresh map of the slots.
            _refresh(client)
        raise
    again = []
    for indices, replies in done:
        for i, reply in zip(indices, replies, strict=True):
            if isinstance(reply, _Redirected):
                again.append(i)
            else:
                results[i] = reply
    return again


def _refresh(client: Any) -> None:
    # no node answers yet: the next call's own refresh tries again
    with contextlib.suppress(redis.RedisError):
        client.nodes_manager.initialize()


class _Redirected:
    """A call a cluster node did not run: its slot is elsewhere, or moving."""


def _round_trip(client: Any, calls: list[Call], replicas: int, timeout_ms: int, action: str) -> list[Any]:
    with store_errors(action or "run scripts"):
        pipe = client.pipeline(transaction=False)
        _queue(pipe, calls, replicas, timeout_ms)
        replies = pipe.execute(raise_on_error=False)
        missing = unloaded(calls, replies)
        if missing:
            for script in {calls[i].script.sha: calls[i].script for i in missing}.values():
                client.script_load(script.text)
            again = _round_trip(client, [calls[i] for i in missing], replicas, timeout_ms, action)
            return splice(interpret(calls, replies, replicas, timeout_ms, action), missing, again)
    return interpret(calls, replies, replicas, timeout_ms, action)


async def run_together_async(
    client: Any, calls: Sequence[Call], *, replicas: int = 0, replica_timeout_ms: int = 1000, action: str = ""
) -> list[Any]:
    """``run_together`` for a redis.asyncio client of one Redis (or a Sentinel's master): the same
    calls in one round trip, the same replies and errors."""
    if not calls:
        return []
    calls = list(calls)
    with store_errors(action or "run scripts"):
        pipe = client.pipeline(transaction=False)
        _queue(pipe, calls, replicas, replica_timeout_ms)
        replies = await pipe.execute(raise_on_error=False)
        missing = unloaded(calls, replies)
        if missing:
            for script in {calls[i].script.sha: calls[i].script for i in missing}.values():
                await client.script_load(script.text)
            again = await run_together_async(client, [calls[i] for i in missing], replicas=replicas,
                                             replica_timeout_ms=replica_timeout_ms, action=action)  # fmt: skip
            return splice(interpret(calls, replies, replicas, replica_timeout_ms, action), missing, again)
    return interpret(calls, replies, replicas, replica_timeout_ms, action)


def _queue(pipe: Any, calls: list[Call], replicas: int, timeout_ms: int) -> None:
    for call in calls:
        call.script.queue(pipe, call.keys, call.args)
    if replicas:
        pipe.execute_command("WAIT", replicas, timeout_ms)


def unloaded(calls: Sequence[Call], replies: Sequence[Any]) -> list[int]:
    """The calls Redis did not run because it lacked their script (NOSCRIPT): safe to run again."""
    return [i for i, reply in zip(range(len(calls)), replies, strict=False) if isinstance(reply, NoScriptError)]


def splice(results: list[Any], indices: list[int], again: list[Any]) -> list[Any]:
    """``results`` with the calls at ``indices`` replaced by their replies when run again."""
    out = list(results)
    for i, reply in zip(indices, again, strict=True):
        out[i] = reply
    return out


def interpret(calls: Sequence[Call], replies: list[Any], replicas: int, timeout_ms: int, action: str) -> list[Any]:
    """What each call's reply means: the reply, a call to run again elsewhere (redirected), the
    error of the tree it ended with, or NotReplicated when WAIT counted too few replicas."""
    replies = list(replies)
    waited = replies.pop() if replicas else 0
    confirmed = 0 if isinstance(waited, Exception) else int(waited)
    out: list[Any] = []
    for call, reply in zip(calls, replies, strict=True):
        if isinstance(reply, (MovedError, AskError, TryAgainError)):
            out.append(_Redirected())
        elif isinstance(reply, NoScriptError):
            out.append(reply)  # replaced by the caller's second run
        elif isinstance(reply, redis.RedisError):
            out.append(call.script.error(reply, action))
        elif replicas and confirmed < replicas:
            out.append(NotReplicated(action or call.script.name, confirmed, replicas, timeout_ms))
        else:
            out.append(reply)
    return out
