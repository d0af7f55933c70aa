"""No Redis script's work grows with a backlog: a hot user's deferred updates cost the others nothing."""

from __future__ import annotations

import pytest

from bench.backlog import SLOW_US, Run, run
from worker.devtools.local_redis import LocalRedis

#: The machine is shared: a script preempted mid-run looks slow to SLOWLOG, a neighbour slows a
#: drain.  The scenario runs again, up to this many times, until a run has met each target; a
#: design whose scripts grow with the backlog misses them every time (the first version: 100 ms).
ATTEMPTS = 5
#: How much longer a call may take beside the backlog than the same script beside a tenth of it.
#: A call whose work grows with the backlog takes ten times as long (a claim releasing every
#: waiting update at once: 225 ms against 20); one bounded by a claim's size still grows with the
#: logarithm of the sorted set it adds to and with a bigger set's cache misses: up to 2.5x here,
#: on a day this machine ran slow.
GROWTH = 4


def short(loaded: Run, tenth: Run) -> bool:
    """No call beside the backlog took SLOW_US or more, unless the same script (or command) took at
    least 1/GROWTH as long beside a tenth of it, whatever else in the run was slow."""
    return all(us < SLOW_US or us <= GROWTH * tenth.longest.get(kind, 0) for kind, us in loaded.longest.items())


@pytest.mark.timeout(300)
def test_a_hot_users_backlog_keeps_every_script_short_and_the_others_fast() -> None:
    # Given one user with 100,000 updates deferred by the budget and 100,000 other updates queued,
    # in one shard of a redis-server of the test's own (its SLOWLOG sees nothing else)
    tries: list[tuple[Run, Run, Run, Run]] = []
    with LocalRedis() as server:
        for _ in range(ATTEMPTS):
            baseline = run(server.url, hot=0, others=100_000)
            # the same kinds of calls (claims, deferrals, releases) beside a tenth of the backlog
            tenth = run(server.url, hot=10_000, others=10_000)
            loaded = run(server.url, hot=100_000, others=100_000)
            again = run(server.url, hot=0, others=100_000)
            tries.append((baseline, tenth, loaded, again))
            # Then the hot user's updates all wait, and the others were all delivered
            assert loaded.waiting == 100_000 - 20
            assert loaded.delivered == baseline.delivered == 100_000
            fast = [h.per_s >= 0.8 * min(b.per_s, a.per_s) for b, _, h, a in tries]
            if any(short(h, t) for _, t, h, _ in tries) and any(fast):
                return
    # and, in one run at least, no script call took 5 ms or more, or (on a day the machine runs slow
    # and calls of a claim's size take that long) none took more than GROWTH times the same
    # script's longest call beside a tenth of the backlog; in one run at least the others were drained at
    # least 0.8 times as fast as without the backlog (the slower of the two runs without it, one
    # before and one after)
    report = [(f"{b.per_s:,.0f}/s", f"{h.per_s:,.0f}/s", f"{a.per_s:,.0f}/s", h.slow_calls[:3],
               f"beside a tenth: {t.longest}") for b, t, h, a in tries]  # fmt: skip
    pytest.fail(f"no run met the targets (calls under {SLOW_US} us or {GROWTH}x the same script's beside a tenth, "
                f"ratio 0.8): {report}")  # fmt: skip
