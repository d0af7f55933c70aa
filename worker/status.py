"""What is queued, in flight, held, failing and why: read from Redis in one pipeline.

The JSON form is a stable interface (``identify-queue status --json``); fields are only added.
"""

from __future__ import annotations

from typing import Any

import redis

from producers.contract.connection import store_errors
from producers.contract.errors import QueueMismatch
from producers.contract.keys import Keys
from producers.producer import LAYOUT_VERSION, mismatch
from worker.drain.waiting import waiting_count

#: A worker whose dispatcher has not written a heartbeat for this long is shown as gone.
WORKER_STALE_S = 30


def gather(client: redis.Redis, keys: Keys, shards: int) -> dict[str, Any]:
    per_read = 10
    with store_errors("read status"):
        # A plain pipeline: on a cluster redis-py sends each node its shards' reads.
        pipe = client.pipeline(transaction=False)
        for s in range(shards):
            k = keys.shard(s)
            pipe.llen(k.queue)
            pipe.llen(k.inflight)
            pipe.hgetall(k.state)
            pipe.exists(k.lease)
            pipe.hgetall(k.parked_why)
            pipe.get(k.total)
            pipe.hlen(k.dlq_entries)
            pipe.hgetall(k.dlq_counts)
            pipe.hgetall(k.stats)
            pipe.hgetall(k.minutes)
        pipe.hgetall(keys.blocked)
        pipe.zrange(keys.workers, 0, -1, withscores=True)
        pipe.hmget(keys.meta, ["shards", "layout"])
        replies = pipe.execute()
        sec, usec = client.time()  # apart: a cluster's pipeline refuses TIME
    blocked, workers, layout = replies[per_read * shards :]
    now_ms = int(sec) * 1000 + int(usec) // 1000
    rows = [replies[per_read * s : per_read * (s + 1)] for s in range(shards)]
    parked = _parked_counts(client, keys, [_text_map(row[4]) for row in rows])
    per_shard = []
    total = dlq_len = delivered = dead_lettered = replayed = requests = 0
    dlq_counts: dict[str, int] = {}
    by_status: dict[str, int] = {}
    last_delivery_ms: int | None = None
    last_error: tuple[int, str] | None = None
    recent = 0
    for s, (queued, in_flight, raw_state, leased, _, shard_total, dlq, counts, stats, minutes) in enumerate(rows):
        state = _text_map(raw_state)
        per_shard.append({
            "shard": s,
            "queued": int(queued),
            "in_flight": int(in_flight),
            "held": parked[s].get("held", 0),
            "deferred": parked[s].get("deferred", 0),
            "replayed_waiting": parked[s].get("replayed", 0),
            "draining": bool(leased),
            "retry_at_ms": int(state["retry_at"]) if "retry_at" in state else None,
        })  # fmt: skip
        total += int(shard_total or 0)
        dlq_len += int(dlq)
        for reason, n in _text_map(counts).items():
            dlq_counts[reason] = dlq_counts.get(reason, 0) + int(n)
        st = _text_map(stats)
        delivered += int(st.get("delivered", 0))
        dead_lettered += int(st.get("dead_lettered", 0))
        replayed += int(st.get("replayed", 0))
        requests += int(st.get("requests", 0))
        for name, value in st.items():
            if name.startswith("status:"):
                by_status[name[7:]] = by_status.get(name[7:], 0) + int(value)
        if "last_delivery_ms" in st:
            last_delivery_ms = max(last_delivery_ms or 0, int(st["last_delivery_ms"]))
        if "last_error" in st:
            candidate = (int(st.get("last_error_ms", 0)), st["last_error"])
            last_error = max(last_error, candidate) if last_error else candidate
        recent += _delivered_since(_text_map(minutes), now_ms // 60000 - 1)
    # this minute so far and the whole one before it: the last minute and a bit
    rate_window_s = 60 + (now_ms % 60000) / 1000
    return {
        "queued": sum(p["queued"] for p in per_shard),
        "in_flight": sum(p["in_flight"] for p in per_shard),
        "held": sum(p["held"] for p in per_shard),
        "deferred": sum(p["deferred"] for p in per_shard),
        # replayed dead letters waiting for their user's turn (usually for a moment only)
        "replayed_waiting": sum(p["replayed_waiting"] for p in per_shard),
        "dead_letter": dlq_len,
        "dead_letter_by_reason": dlq_counts,
        "accepted_not_done": total,
        # every record a producer was told is accepted: still here, delivered, or dead-lettered
        # (a replayed one is counted again when it comes back)
        "enqueued": total + delivered + dead_lettered - replayed,
        "delivered": delivered,
        "dead_lettered": dead_lettered,
        "replayed": replayed,
        "delivery_rate_per_s": round(recent / rate_window_s, 1),
        "requests": requests,
        # HTTP status (or no_answer) -> requests; counted since the workers that write it were deployed
        "requests_by_status": dict(sorted(by_status.items())),
        "last_delivery_ms": last_delivery_ms,
        "last_error": last_error[1] if last_error else None,
        "last_error_ms": last_error[0] if last_error else None,
        # what the queue's meta says it was created with (None: no producer or worker has used it)
        "layout": {"shards": _int_or_none(layout[0]), "format": layout[1].decode() if layout[1] else None},
        "queue_found": queue_found(layout[0] is not None, total, dlq_len, delivered),
        "blocked": _blocked(_text_map(blocked)),
        "workers": [
            {"name": name.decode(), "last_seen_s": round((now_ms - score) / 1000, 1)}
            for name, score in workers
            if now_ms - score < WORKER_STALE_S * 1000
        ],
        "shards": per_shard,
        "time_ms": now_ms,
    }


def _int_or_none(value: bytes | None) -> int | None:
    return int(value) if value is not None else None


def queue_found(has_meta: bool, accepted_not_done: int, dead_letter: int, delivered: int) -> bool:
    """Whether the namespace holds a queue at all: laid out by a producer or worker, or holding
    anything (a queue whose meta was deleted by hand still has its records)."""
    return has_meta or accepted_not_done > 0 or dead_letter > 0 or delivered > 0


def layout_mismatch(status: dict[str, Any], shards: int) -> QueueMismatch | None:
    """The refusal `status` gives, as `enqueue` and `worker` do, when IDENTIFY_SHARDS or the entry
    format differ from the queue's: with another shard count it would read a part of the queue."""
    stored = status["layout"]
    if stored["shards"] is None:
        return None
    fields = {"shards": str(stored["shards"]), "layout": stored["format"] or LAYOUT_VERSION}
    if stored["shards"] != shards or fields["layout"] != LAYOUT_VERSION:
        return mismatch(shards, fields)
    return None


def age(ms: int, now_ms: int) -> str:
    """How long ago, for people: seconds, minutes, hours or days."""
    seconds = max(0, now_ms - ms) / 1000
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _delivered_since(ring: dict[str, str], first_minute: int) -> int:
    """Records delivered from ``first_minute`` on, read from a shard's ring of per-minute counts."""
    return sum(int(ring.get(f"d{i}", 0)) for i in range(64) if int(ring.get(f"m{i}", -1)) >= first_minute)


def _parked_counts(client: redis.Redis, keys: Keys, why: list[dict[str, str]]) -> list[dict[str, int]]:
    """Updates waiting per shard, by why their user waits (held after a 429, deferred, replayed)."""
    out: list[dict[str, int]] = []
    for s, users in enumerate(why):
        counts: dict[str, int] = {}
        for reason, n in zip(users.values(), waiting_count(client, keys.shard(s), list(users)), strict=True):
            counts[reason] = counts.get(reason, 0) + n
        out.append(counts)
    return out


def _blocked(fields: dict[str, str]) -> dict[str, Any] | None:
    """Why sending is blocked, with its numbers as numbers (None when it is not)."""
    if not fields:
        return None
    out: dict[str, Any] = dict(fields)
    for name in ("since_ms", "probes", "next_probe_ms", "status"):
        if out.get(name, "").isdigit():
            out[name] = int(out[name])
    return out


def _text_map(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def render(status: dict[str, Any], namespace: str = "") -> str:
    """The status as a table for people."""
    lines = []
    if not status.get("queue_found", True):
        lines.append(f"no queue in namespace {namespace!r}: no producer or worker has used it yet (is "
                     "IDENTIFY_NAMESPACE right?)")  # fmt: skip
    lines += [
        f"{'queued':<14}{status['queued']:>12,}",
        f"{'in flight':<14}{status['in_flight']:>12,}",
        f"{'held':<14}{status['held']:>12,}   (users paused after a 429)",
        f"{'deferred':<14}{status['deferred']:>12,}   (users past their hourly budget)",
        f"{'dead letter':<14}{status['dead_letter']:>12,}",
    ]
    for reason, count in sorted(status["dead_letter_by_reason"].items()):
        lines.append(f"  {reason:<12}{count:>12,}")
    lines.append(f"{'delivered':<14}{status['delivered']:>12,}   in {status['requests']:,} requests, "
                 f"{status['delivery_rate_per_s']:,.1f}/s over the last minute")  # fmt: skip
    lines.append(f"{'enqueued':<14}{status['enqueued']:>12,}   ever; {status['dead_lettered']:,} dead-lettered, "
                 f"{status['replayed']:,} replayed")  # fmt: skip
    if status["last_delivery_ms"]:
        ago = (status["time_ms"] - status["last_delivery_ms"]) / 1000
        lines.append(f"{'last delivery':<14}{ago:>11.1f}s ago")
    if status["blocked"]:
        blocked = status["blocked"]
        since = (status["time_ms"] - int(blocked.get("since_ms", status["time_ms"]))) / 1000
        lines.append(f"BLOCKED for {since:.0f} s, nothing is sent: {blocked.get('reason', '?')}")
    if status["last_error"]:
        when = status.get("last_error_ms")
        ago = f"{age(when, status['time_ms'])}: " if when else ""
        recovered = bool(when and status["last_delivery_ms"] and status["last_delivery_ms"] > when)
        after = " (delivered since)" if recovered else ""
        lines.append(f"{'last error':<14}{ago}{status['last_error']}{after}")
    workers = ", ".join(w["name"] for w in status["workers"]) or f"none seen in the last {WORKER_STALE_S} s"
    lines.append(f"{'workers':<14}{workers}")
    busy = [p for p in status["shards"] if p["queued"] or p["in_flight"] or p["held"] or p["deferred"]]
    if busy:
        lines.append("")
        lines.append(f"{'shard':>5} {'queued':>10} {'in flight':>10} {'held':>8} {'deferred':>9}  state")
        for p in busy:
            state = "draining" if p["draining"] else ""
            if p["retry_at_ms"] and p["retry_at_ms"] > status["time_ms"]:
                state = f"retry in {(p['retry_at_ms'] - status['time_ms']) / 1000:.1f}s"
            lines.append(
                f"{p['shard']:>5} {p['queued']:>10,} {p['in_flight']:>10,} {p['held']:>8,} {p['deferred']:>9,}  {state}"
            )
        idle = len(status["shards"]) - len(busy)
        if idle:
            lines.append(f"({idle} other shards empty)")
    return "\n".join(lines)


def history(client: redis.Redis, keys: Keys, shards: int, minutes: int = 60) -> list[tuple[int, int, int]]:
    """Records delivered and enqueued per minute over the last ``minutes`` (at most 63), oldest first:
    (minute since the epoch, delivered, enqueued), summed over the shards' ``minutes`` rings."""
    minutes = min(minutes, 63)
    with store_errors("read the per-minute history"):
        pipe = client.pipeline(transaction=False)
        for s in range(shards):
            pipe.hgetall(keys.shard(s).minutes)
        replies = pipe.execute()
        now_minute = int(client.time()[0]) // 60
    delivered: dict[int, int] = {}
    enqueued: dict[int, int] = {}
    for ring in replies:
        fields = _text_map(ring)
        for i in range(64):
            minute = int(fields.get(f"m{i}", -1))
            if now_minute - minutes < minute <= now_minute:
                delivered[minute] = delivered.get(minute, 0) + int(fields.get(f"d{i}", 0))
                enqueued[minute] = enqueued.get(minute, 0) + int(fields.get(f"e{i}", 0))
    return [(m, delivered.get(m, 0), enqueued.get(m, 0)) for m in range(now_minute - minutes + 1, now_minute + 1)]
