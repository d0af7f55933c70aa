"""How long a shard waits before retrying: a pure function, as dramatiq's compute_backoff."""

from __future__ import annotations

import math
import random


def retry_delay_s(attempts: int, base_s: float, cap_s: float, rand: float | None = None) -> float:
    """Capped exponential backoff with jitter, for the ``attempts``-th failure in a row (1, 2, ...).

    The wait is drawn between half and all of ``min(cap, base * 2**(attempts-1))`` ("equal
    jitter"): never shorter than half the step, so a failing endpoint gets its breathing room, and
    spread so that shards that failed together do not retry together.
    """
    step = min(cap_s, math.ldexp(base_s, min(max(attempts, 1) - 1, 62)))
    fraction = random.random() if rand is None else rand
    return step / 2 + step / 2 * fraction
