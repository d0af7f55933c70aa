"""No Redis script's work grows with a backlog: a hot user's deferred updates cost the others nothing."""

from __future__ import annotations

import pytest

from bench.backlog import SLOW_US, run
from worker.devtools.local_redis import LocalRedis


@pytest.mark.timeout(300)
def test_a_hot_users_backlog_keeps_every_script_short_and_the_others_fast() -> None:
    # Given one user with 100,000 updates deferred by the budget and 100,000 other updates queued,
    # in one shard of a redis-server of the test's own (its SLOWLOG sees nothing else)
    with LocalRedis() as server:
        baseline = run(server.url, hot=0, others=100_000)
        loaded = run(server.url, hot=100_000, others=100_000)
        again = run(server.url, hot=0, others=100_000)
    # Then the hot user's updates all wait, no script call took 5 ms or more, and the others were
    # drained at least 0.8 times as fast as without the backlog (the better of two baselines, the
    # machine being shared)
    assert loaded.waiting == 100_000 - 20
    assert loaded.delivered == baseline.delivered == 100_000
    assert loaded.slow_calls == [], f"script calls over {SLOW_US} us: {loaded.slow_calls[:5]}"
    assert loaded.per_s >= 0.8 * min(baseline.per_s, again.per_s), (loaded.per_s, baseline.per_s, again.per_s)
