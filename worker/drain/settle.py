"""A settlement: what one answer changes, written in one script (worker/lua/settle.lua).

Records delivered leave ``inflight`` from its head (``trim``); on the rare paths that change it
otherwise (a record dead-lettered in the middle, a user held, attempts counted) ``replace`` gives
what it holds from now on, bounded by the claim.  Dead letters get their id there (``<shard>-<n>``),
users that must wait are parked among their waiting updates (worker/drain/waiting.py), and the
counters ``status`` reads move with them, all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script


@dataclass
class DeadLetter:
    reason: str
    json: bytes
    #: Whose record it is (None when the entry could not be decoded).
    user_key: str | None = None


@dataclass
class Parking:
    user_key: str
    hold_ms: int
    reason: str
    #: The user's entries as ``waiting`` members (worker/drain/waiting.py), in any order.
    members: list[bytes]


@dataclass
class Settlement:
    """What one answer changes: records delivered, done or changed in flight, dead-lettered, parked.

    ``trim`` entries at the head of inflight are done; ``replace``, when given, is what inflight
    holds from now on instead (see ``inflight_change``).
    """

    delivered: int = 0
    requests: int = 0
    trim: int = 0
    replace: list[bytes] | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    parked: list[Parking] = field(default_factory=list)
    #: When the dead letters failed (Redis's clock, ms).
    failed_ms: int = 0
    #: A one-line description of what went wrong, shown by `status` as the last error.
    error: str = ""
    #: The HTTP status of the request settled (``no_answer`` for a timeout or a refused connection),
    #: counted per status beside ``requests``: `status --json` and the console show them.
    status: str = ""


def inflight_change(current: list[bytes], desired: list[bytes]) -> tuple[int, list[bytes] | None]:
    """How a settle turns inflight from ``current`` into ``desired``: (entries dropped at the head,
    None) when ``desired`` is what is left of ``current`` after them, else (0, ``desired``)."""
    done = len(current) - len(desired)
    if done >= 0 and current[done:] == desired:
        return done, None
    return 0, desired


class Settlements:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = Script(client, "worker", "settle")

    def settle(self, shard: int, token: str, s: Settlement) -> list[str]:
        """Apply one answer's settlement; returns the ids given to its dead letters."""
        k = self.keys.shard(shard)
        keys = [
            k.lease, k.inflight, k.total, k.stats, k.state, k.dlq_entries, k.dlq_index, k.dlq_counts, k.parked,
            k.parked_why, k.waiting, k.dlq_seq, k.minutes,
        ]  # fmt: skip
        args: list[Any] = [token, shard, s.delivered, s.requests, s.error, s.failed_ms, s.trim]
        if s.replace is None:
            args.append(-1)
        else:
            args += [len(s.replace), *s.replace]
        args.append(len(s.dead))
        for d in s.dead:
            args += [d.reason, d.json]
        args.append(len(s.parked))
        for p in s.parked:
            args += [p.user_key, p.hold_ms, p.reason, len(p.members), *p.members]
        args.append(s.status)
        keys += [k.fingerprint(u) for u in {d.user_key for d in s.dead if d.user_key is not None}]
        ids = self._script(keys, args, action="settle")
        return [i.decode() for i in ids]
