"""The drain_begin script (worker/lua/drain_begin.lua) against a real redis-server: what a drain
reads from the global keys before it claims: whether a configuration error blocks sending, whether
this drain is the probe (and holds the next one back), and the request size a 413 taught."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from tests.support import redis_ms, snapshot, text_hash
from worker.drain.claim import Begin, Beginnings

PROBE_HOLD_MS = 60_000


@pytest.fixture
def beginnings(redis_client: redis.Redis, keys: Keys) -> Beginnings:
    return Beginnings(redis_client, keys, PROBE_HOLD_MS)


def test_the_reply_is_now_wait_probe_and_the_learned_size(redis_client: redis.Redis, keys: Keys,
                                                          namespace: str) -> None:  # fmt: skip
    before_state = snapshot(redis_client, namespace)
    before = redis_ms(redis_client)
    reply = Script(redis_client, "worker", "drain_begin")([keys.blocked, keys.meta], [PROBE_HOLD_MS])
    after = redis_ms(redis_client)
    assert len(reply) == 5 and before <= reply[0] <= after
    assert reply[1:] == [0, 0, 0, 0]
    assert snapshot(redis_client, namespace) == before_state


# (blocked hash: next_probe_ms relative to now, None for no field; None for not blocked),
# (learned size, learned how long ago, or None), then what the drain is told: waits (ms before the
# next probe, as an offset of now), is the probe, and whether the next probe is pushed back
CASES: list[tuple[str, Any, Any, int | None, bool]] = [
    ("not blocked", None, None, None, False),
    ("not blocked, a size learned", None, (5000, 1000), None, False),
    ("blocked, probe not due", 8000, None, 8000, False),
    ("blocked, probe due", -1, None, None, True),
    ("blocked, never probed", "absent", None, None, True),
    ("blocked, probe not due, a size learned", 8000, (4000, 250), 8000, False),
    ("blocked, probe due, a size learned", -1, (4000, 250), None, True),
]


@pytest.mark.parametrize(("case", "next_probe", "learned", "wait", "probe"), CASES, ids=[c[0] for c in CASES])
def test_a_drain_learns_whether_it_may_send_probes_and_what_size_was_learned(
    beginnings: Beginnings, redis_client: redis.Redis, keys: Keys, namespace: str,
    case: str, next_probe: Any, learned: Any, wait: int | None, probe: bool,
) -> None:  # fmt: skip
    now = redis_ms(redis_client)
    if next_probe is not None:
        redis_client.hset(keys.blocked, mapping={"reason": "HTTP 400 Invalid API key", "since_ms": now - 10})
        if next_probe != "absent":
            redis_client.hset(keys.blocked, "next_probe_ms", now + next_probe)
    if learned is not None:
        bytes_, ago = learned
        redis_client.hset(keys.meta, mapping={"max_request_bytes": bytes_, "max_request_bytes_ms": now - ago})
    blocked_before = text_hash(redis_client, keys.blocked)
    meta_before = text_hash(redis_client, keys.meta)
    others = {k: v for k, v in snapshot(redis_client, namespace).items() if k != keys.blocked.encode()}

    begin = beginnings.begin()

    assert now <= begin.now_ms
    if wait is not None:
        # not before the next probe: wait until then, not the probe
        assert begin.wait_ms == now + wait - begin.now_ms and 0 < begin.wait_ms <= wait
    else:
        assert begin.wait_ms == 0
    assert begin.probe is probe
    if learned is None:
        assert (begin.learned_request_bytes, begin.learned_age_ms) == (0, 0)
    else:
        assert begin.learned_request_bytes == learned[0]
        assert begin.learned_age_ms == begin.now_ms - (now - learned[1])
    # the probe holds the next one back by the hold; nothing else is written, meta never
    if probe:
        held_back = {**blocked_before, "next_probe_ms": str(begin.now_ms + PROBE_HOLD_MS)}
        assert text_hash(redis_client, keys.blocked) == held_back
    else:
        assert text_hash(redis_client, keys.blocked) == blocked_before
    assert text_hash(redis_client, keys.meta) == meta_before
    assert {k: v for k, v in snapshot(redis_client, namespace).items() if k != keys.blocked.encode()} == others


def test_one_drain_probes_at_a_time(beginnings: Beginnings, redis_client: redis.Redis, keys: Keys) -> None:
    # Given sending blocked and the next probe due
    now = redis_ms(redis_client)
    redis_client.hset(keys.blocked, mapping={"reason": "HTTP 400 Invalid API key", "next_probe_ms": now - 1})
    # When two drains begin, one after the other
    first, second = beginnings.begin(), beginnings.begin()
    # Then the first is the probe, and the second waits out the probe's hold
    assert (first.probe, first.wait_ms) == (True, 0)
    assert second == Begin(second.now_ms, first.now_ms + PROBE_HOLD_MS - second.now_ms, False, 0, 0)
    assert PROBE_HOLD_MS - 1000 < second.wait_ms <= PROBE_HOLD_MS
