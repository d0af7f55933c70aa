"""Group commit's decisions: how many calls a group waits for, and which calls a reply fails."""

from __future__ import annotations

from typing import Any

import pytest

from producers.contract.errors import QueueFull, QueueMismatch, StoreError
from producers.contract.settings import QueueConfig
from producers.grouping import gather_target, take
from producers.producer import LAYOUT_VERSION, EnqueuePlan, ProducerCore


@pytest.mark.parametrize(
    ("last_group", "pending", "max_items", "target"),
    [
        (0, 1, 512, 0),  # the first call ever goes at once
        (1, 1, 512, 0),  # after a call alone: a lone caller never waits
        (32, 1, 512, 32),  # 32 callers were released together: wait for them to come back
        (32, 32, 512, 0),  # they are all back
        (32, 40, 512, 0),
        (2000, 3, 512, 512),  # never more than one group holds
    ],
)
def test_a_group_waits_for_as_many_calls_as_the_last_one_carried(
    last_group: int, pending: int, max_items: int, target: int
) -> None:
    assert gather_target(last_group, pending, max_items) == target


@pytest.mark.parametrize(("pending", "max_items", "taken"), [(1, 512, 1), (511, 512, 511), (2000, 512, 512)])
def test_a_group_takes_every_pending_call_up_to_the_bound(pending: int, max_items: int, taken: int) -> None:
    assert take(pending, max_items) == taken


def core(cluster: bool) -> ProducerCore:
    return ProducerCore(QueueConfig(shards=4, max_queued=100), None, cluster=cluster)


WRITTEN = [1, 1, 0, 0]
mismatch_reply = QueueMismatch.from_fields({"shards": "8", "layout": LAYOUT_VERSION})
unreachable = StoreError("enqueue: Redis is unreachable")


@pytest.mark.parametrize(
    ("cluster", "parts", "replies", "expected"),
    [
        # one Redis: one part holds every record, and its reply is every call's
        (False, [[0, 1, 2]], [WRITTEN], [None, None, None]),
        (False, [[0, 1, 2]], [[0, -1, 100]], [QueueFull] * 3),
        (False, [[0, 1, 2]], [mismatch_reply], [QueueMismatch] * 3),
        # Redis unreachable (or a permission missing, the wake-ups' included): every call says so
        (False, [[0, 1, 2]], [unreachable], [StoreError] * 3),
        # a Redis Cluster: a part per shard, and a refused part fails its own records only
        (True, [[0, 2], [1]], [WRITTEN, [0, 3, 25]], [None, QueueFull, None]),
        (True, [[0], [1, 2]], [unreachable, WRITTEN], [StoreError, None, None]),
    ],
)
def test_a_failure_reaches_exactly_the_calls_it_concerns(
    cluster: bool, parts: list[list[int]], replies: list[Any], expected: list[Any]
) -> None:
    plan = EnqueuePlan(calls=[], parts=parts, shards=[str(i) for i in range(len(parts))])
    count = sum(len(p) for p in parts)
    outcomes = core(cluster).group_outcomes(plan, replies, count)
    assert [type(o) if o is not None else None for o in outcomes] == expected


def test_queue_full_of_a_group_names_the_cap_the_call_could_check() -> None:
    plan = EnqueuePlan(calls=[], parts=[[0]], shards=["3"])
    [full] = core(True).group_outcomes(plan, [[0, 3, 25]], 1)
    assert isinstance(full, QueueFull) and (full.shard, full.queued, full.cap, full.enqueued) == (3, 25, 25, 0)
