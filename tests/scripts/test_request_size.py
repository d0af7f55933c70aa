"""The request size a 413 taught (worker/lua/request_size.lua) against a real redis-server: it is
only lowered, unless what was learned is older than the quiet period."""

from __future__ import annotations

import pytest
import redis

from producers.contract.keys import Keys
from tests.support import redis_ms, text_hash
from worker.drain.request_size import RequestSizes

QUIET_MS = 3_600_000


@pytest.mark.parametrize(
    ("stored", "age_ms", "asked", "in_force", "rewritten"),
    [
        (None, 0, 40_000, 40_000, True),  # nothing learned yet
        (40_000, 1000, 20_000, 20_000, True),  # lower: always
        (40_000, 1000, 80_000, 40_000, False),  # higher within the quiet period: the lower stays
        (40_000, 1000, 40_000, 40_000, False),  # the same: its time is not renewed
        (40_000, QUIET_MS, 80_000, 80_000, True),  # higher after a quiet period: the size recovered
    ],
)
def test_the_request_size_is_lowered_only_unless_quiet_for_long(
    redis_client: redis.Redis, keys: Keys, stored: int | None, age_ms: int, asked: int, in_force: int,
    rewritten: bool,
) -> None:  # fmt: skip
    now = redis_ms(redis_client)
    if stored is not None:
        redis_client.hset(keys.meta, mapping={"shards": 8, "max_request_bytes": stored,
                                              "max_request_bytes_ms": now - age_ms})  # fmt: skip
    assert RequestSizes(redis_client, keys).lower(asked, QUIET_MS) == in_force
    after = redis_ms(redis_client)
    meta = text_hash(redis_client, keys.meta)
    assert meta["max_request_bytes"] == str(in_force)
    if rewritten:
        assert now <= int(meta["max_request_bytes_ms"]) <= after
    else:
        assert meta["max_request_bytes_ms"] == str(now - age_ms)
    if stored is not None:
        assert meta["shards"] == "8"  # the rest of meta is left alone
