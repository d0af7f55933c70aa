"""What the console's pages show, read from Redis with the readers `status` and `dlq` use.

Nothing here writes: replay and purge are ``worker.deadletter.DeadLetterQueue``'s, called by the
application as they are.  Times are Redis's clock (ms), as every reader of the queue uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import click
import redis

from producers.contract.connection import store_errors
from producers.contract.keys import Keys
from worker.cli.operate import parse_since
from worker.deadletter import REASONS, DeadLetterQueue, Selection
from worker.drain.waiting import waiting_count
from worker.status import gather, history

#: Minutes the overview's chart covers (the ``minutes`` rings keep 64).
CHART_MINUTES = 60


def overview(client: redis.Redis, keys: Keys, shards: int) -> dict[str, Any]:
    """``status --json``, each shard's lease (who drains it, until when), and the last hour per minute."""
    status = gather(client, keys, shards)
    with store_errors("read the shards' leases"):
        pipe = client.pipeline(transaction=False)
        for s in range(shards):
            pipe.get(keys.shard(s).lease)
            pipe.pttl(keys.shard(s).lease)
        replies = pipe.execute()
    for s, shard in enumerate(status["shards"]):
        token, ttl = replies[2 * s], int(replies[2 * s + 1])
        # The lease holds a drainer's random token, not a worker's name: it tells drainers apart
        # (a change of token is a new claim) without naming hosts.
        shard["lease"] = token.decode() if token else None
        shard["lease_expires_ms"] = status["time_ms"] + ttl if token and ttl > 0 else None
    status["history"] = [
        {"minute": m, "delivered": d, "enqueued": e} for m, d, e in history(client, keys, shards, CHART_MINUTES)
    ]
    return status


@dataclass(frozen=True)
class Chart:
    """The overview's chart as SVG coordinates: the server draws it, so the page needs no script to show it."""

    width: int
    height: int
    delivered: str
    enqueued: str
    peak: int
    first: str
    last: str


def chart(points: list[dict[str, Any]], width: int = 720, height: int = 180) -> Chart:
    peak = max([1, *(p["delivered"] for p in points), *(p["enqueued"] for p in points)])
    step = width / max(1, len(points) - 1)

    def line(field: str) -> str:
        return " ".join(f"{i * step:.1f},{height - p[field] * (height - 4) / peak:.1f}" for i, p in enumerate(points))

    first = points[0]["minute"] * 60_000 if points else 0
    last = points[-1]["minute"] * 60_000 if points else 0
    return Chart(width, height, line("delivered"), line("enqueued"), peak, clock(first), clock(last))


def waiting_users(client: redis.Redis, keys: Keys, shards: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Users whose updates wait (held after a 429, deferred by the budget, replayed), soonest release
    first, at most ``limit`` of them; and how many wait in all."""
    per_shard = max(1, limit)
    with store_errors("read waiting users"):
        pipe = client.pipeline(transaction=False)
        for s in range(shards):
            k = keys.shard(s)
            pipe.zcard(k.parked)
            pipe.zrange(k.parked, 0, per_shard - 1, withscores=True)
        replies = pipe.execute()
    users: list[dict[str, Any]] = []
    total = 0
    for s in range(shards):
        total += int(replies[2 * s])
        parked = cast(list[tuple[bytes, float]], replies[2 * s + 1])
        if not parked:
            continue
        k = keys.shard(s)
        names = [u.decode() for u, _ in parked]
        with store_errors("read waiting users"):
            why = cast(list[bytes | None], client.hmget(k.parked_why, names))
        counts = waiting_count(client, k, names)
        for (name, until), reason, n in zip(parked, why, counts, strict=True):
            users.append({"user_key": name.decode(), "shard": s, "until_ms": int(until),
                          "why": reason.decode() if reason else "?", "updates": n})  # fmt: skip
    users.sort(key=lambda u: (u["until_ms"], u["user_key"]))
    return users[:limit], total


def dead_letters_by_reason(client: redis.Redis, keys: Keys, shards: int) -> dict[str, int]:
    """The shards' dead-letter counts by reason, summed: what a filter by reason alone matches,
    known without reading the entries."""
    with store_errors("count dead letters"):
        pipe = client.pipeline(transaction=False)
        for s in range(shards):
            pipe.hgetall(keys.shard(s).dlq_counts)
        replies = pipe.execute()
    out: dict[str, int] = {}
    for counts in replies:
        for reason, n in counts.items():
            out[reason.decode()] = out.get(reason.decode(), 0) + int(n)
    return out


class BadFilter(ValueError):
    """A filter field the console cannot read; the message names the field."""


@dataclass(frozen=True)
class Filter:
    """The dead-letter list's filter: the reason, a prefix of the user (or device) id, a failure-time range."""

    reason: str = ""
    user: str = ""
    since: str = ""
    until: str = ""
    since_ms: int | None = None
    until_ms: int | None = None

    @classmethod
    def parse(cls, form: dict[str, str], now_ms: int) -> Filter:
        reason = form.get("reason", "").strip()
        if reason and reason not in REASONS:
            raise BadFilter(f"reason: one of {', '.join(REASONS)}, not {reason!r}")
        since, until = form.get("since", "").strip(), form.get("until", "").strip()
        return cls(reason=reason, user=form.get("user", "").strip(), since=since, until=until,
                   since_ms=_when(since, "since", now_ms), until_ms=_when(until, "until", now_ms))  # fmt: skip

    @property
    def selection(self) -> Selection:
        return Selection(reason=self.reason or None, since_ms=self.since_ms)

    @property
    def narrower_than_selection(self) -> bool:
        """Whether entries of ``selection`` must still be checked one by one (user prefix, end of range)."""
        return bool(self.user) or self.until_ms is not None

    @property
    def by_reason_only(self) -> bool:
        return not (self.user or self.since_ms is not None or self.until_ms is not None)

    def fields(self) -> dict[str, str]:
        return {"reason": self.reason, "user": self.user, "since": self.since, "until": self.until}

    def matches(self, doc: dict[str, Any]) -> bool:
        if self.until_ms is not None and int(doc.get("failed_at_ms") or 0) > self.until_ms:
            return False
        return not self.user or user_of(doc).startswith(self.user)

    def entries(self, queue: DeadLetterQueue) -> Iterator[dict[str, Any]]:
        return (doc for doc in queue.entries(self.selection) if self.matches(doc))


def _when(value: str, name: str, now_ms: int) -> int | None:
    try:
        return parse_since(value, now_ms)
    except click.BadParameter:
        raise BadFilter(f"{name}: an ISO 8601 time (UTC unless it says otherwise) or an age such as 30m, 2h, 7d; "
                        f"not {value!r}") from None  # fmt: skip


def redis_ms(client: redis.Redis) -> int:
    """Redis's clock: ages in a filter ("2h") count back from the same clock the failure times use."""
    with store_errors("read Redis's clock"):
        sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def user_of(doc: dict[str, Any]) -> str:
    """The id a dead letter's record is ordered by (its user_id, else its device_id), without the key's prefix."""
    key = doc.get("user_key") or ""
    return str(key[2:] if key[:2] in ("u:", "d:") else key)


def clock(ms: int | None) -> str:
    """A time for people: UTC, to the second."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
