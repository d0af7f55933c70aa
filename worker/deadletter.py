"""The dead-letter queue: records that cannot be delivered, each with the reason, and their replay.

An entry keeps the identification exactly as it was enqueued, the reason (``invalid``,
``too_large``, ``expired``, ``undecodable``, ``poison``), the HTTP status and a bounded excerpt of
the response, the number of attempts, its user, its place in the shard (``seq``), and the
enqueued and failed-at times (both Redis's clock).  Never the API key (responses are redacted
before they get here) and never the request body.

Ids are ``<shard>-<n>``, ``n`` counted per shard by the settle script that dead-letters the
record: unique by construction, and in the order records failed.  Entries live in a hash
(id -> JSON) with an index sorted by failure time, and are never trimmed or evicted.

Replay puts each user's records back in their original order, ahead of that user's records still
queued or waiting (they are older): a replayed record becomes a waiting update of its user
(worker/waiting.py), placed by its ``seq``, and due at once unless the user is held or deferred
(then it waits with the others).  What replay cannot undo is what was delivered meanwhile: a user
whose newer updates reached Amplitude after the record failed gets the old update applied after
them (an old ``$set`` replayed after a newer one wins).  ``dlq list`` and ``show`` give each
entry's enqueue time beside its failure time, so an operator can choose what to replay.

``replay`` and ``purge`` work in Lua scripts of bounded size, each on one shard, so a crash between
two scripts leaves every entry either still dead-lettered or queued again: never both, never
neither.  Replay goes through each user's records in ``seq`` order, so an interrupted replay has
put back the oldest ones; the rest, replayed later, still come after them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, cast

import orjson
import redis

from producers import entry as entries
from producers.config import QueueConfig
from producers.entry import Entry
from producers.errors import QueueFull, QueueMismatch, StoreError
from producers.keys import Keys
from producers.redis_conn import connect, store_errors
from worker.shard_store import DeadLetter
from worker.waiting import REPLAYED, WAITING_LUA

REASONS = ("invalid", "too_large", "expired", "undecodable", "poison")


def dead_letter(
    e: Entry, reason: str, failed_ms: int, *, detail: str = "", status: int | None = None, response: str = ""
) -> DeadLetter:
    """A dead-letter entry for a decoded queue entry; the record is embedded as it was enqueued."""
    doc = {
        "reason": reason,
        "detail": detail,
        "status": status,
        "response": response,  # already an excerpt (worker/outcome.py), with the API key masked
        "attempts": e.attempts,
        "seq": e.seq,
        "first_enqueued_ms": e.enqueued_ms,
        "failed_at_ms": failed_ms,
        "user_key": e.user_key,
        "record": orjson.Fragment(e.data),
    }
    return DeadLetter(reason, orjson.dumps(doc), user_key=e.user_key)


def dead_letter_raw(raw: bytes, failed_ms: int, detail: str) -> DeadLetter:
    """A dead-letter entry for a queue entry that cannot be decoded: its bytes, as text."""
    doc = {
        "reason": "undecodable",
        "detail": detail,
        "status": None,
        "response": "",
        "attempts": 0,
        "seq": None,
        "first_enqueued_ms": None,
        "failed_at_ms": failed_ms,
        "user_key": None,
        "record": None,
        "raw": raw[:4096].decode("utf-8", "replace"),
    }
    return DeadLetter("undecodable", orjson.dumps(doc))


# KEYS: dlq_entries, dlq_index, dlq_counts, total, wakeups, kick, stats, meta, then the shard's
#       waiting, parked, parked_why
# ARGV: cap, shards, shard, then per entry: id, reason, user key, queue entry (with its seq)
# Returns the number moved, or an error when the queue cap would be passed or the shard count is not
# the queue's (a user's records in two shards would lose their order); nothing is moved then.
REPLAY_LUA = f"""
{WAITING_LUA}
local stored = redis.call('HGET', KEYS[8], 'shards')
if stored and stored ~= ARGV[2] then
  return redis.error_reply('QUEUE_MISMATCH shards=' .. stored)
end
local n = (#ARGV - 3) / 4
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
if total + n > tonumber(ARGV[1]) then
  return redis.error_reply('QUEUE_FULL ' .. total)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for i = 0, n - 1 do
  local id, reason, user, raw = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i], ARGV[7 + 4 * i]
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HINCRBY', KEYS[3], reason, -1) <= 0 then redis.call('HDEL', KEYS[3], reason) end
    local seq = entry_user(raw)
    wait_add(KEYS[9], user, seq, raw)
    -- due now, unless the user already waits (held, deferred): then with the others
    if redis.call('ZADD', KEYS[10], 'NX', now, user) == 1 then redis.call('HSET', KEYS[11], user, '{REPLAYED}') end
    redis.call('INCR', KEYS[4])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('ZADD', KEYS[5], 'LT', now, ARGV[3])
  redis.call('HINCRBY', KEYS[7], 'replayed', moved)
  if redis.call('LLEN', KEYS[6]) == 0 then redis.call('RPUSH', KEYS[6], '1') end
end
return moved
"""

# KEYS: dlq_entries, dlq_index, dlq_counts; ARGV: per entry: id, reason
PURGE_LUA = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    if redis.call('HINCRBY', KEYS[3], ARGV[i + 1], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[i + 1]) end
    removed = removed + 1
  end
end
return removed
"""


@dataclass(frozen=True)
class Selection:
    """Which entries an operation applies to; all criteria must hold."""

    reason: str | None = None
    since_ms: int | None = None
    ids: tuple[str, ...] = ()

    def matches(self, doc: dict[str, Any]) -> bool:
        return self.reason is None or doc.get("reason") == self.reason


class DeadLetterQueue:
    """List, show, export, replay and purge dead-lettered records (the `identify-queue dlq` commands)."""

    def __init__(self, config: QueueConfig, client: redis.Redis | None = None, chunk: int = 500) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self._redis = client or connect(config.redis_url)
        self._chunk = chunk
        self._replay = self._redis.register_script(REPLAY_LUA)
        self._purge = self._redis.register_script(PURGE_LUA)

    def count(self) -> int:
        with store_errors("count dead letters"):
            return int(self._redis.hlen(self.keys.dlq_entries))

    def show(self, entry_id: str) -> dict[str, Any] | None:
        with store_errors("read dead letter"):
            raw = self._redis.hget(self.keys.dlq_entries, entry_id)
        return _doc(entry_id, raw) if raw else None

    def entries(self, selection: Selection = Selection()) -> Iterator[dict[str, Any]]:
        """Matching entries, oldest failure first, read a chunk at a time."""
        if selection.ids:
            for chunk_start in range(0, len(selection.ids), self._chunk):
                ids = list(selection.ids[chunk_start : chunk_start + self._chunk])
                yield from self._load(ids, selection)
            return
        low = selection.since_ms if selection.since_ms is not None else "-inf"
        offset = 0
        while True:
            with store_errors("list dead letters"):
                found = cast(
                    list[bytes],
                    self._redis.zrangebyscore(self.keys.dlq_index, low, "+inf", start=offset, num=self._chunk),
                )
            if not found:
                return
            offset += len(found)
            yield from self._load([i.decode() for i in found], selection)

    def _load(self, ids: list[str], selection: Selection) -> Iterator[dict[str, Any]]:
        with store_errors("read dead letters"):
            raws = self._redis.hmget(self.keys.dlq_entries, ids)
        for entry_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            doc = _doc(entry_id, raw)
            if selection.matches(doc) and (selection.since_ms is None or doc["failed_at_ms"] >= selection.since_ms):
                yield doc

    def replay(self, selection: Selection) -> int:
        """Put matching entries back, each user's in their original order, atomically per chunk."""
        moved = 0
        # Materialise the ids first: replaying while iterating the index would shift its offsets.
        docs = [d for d in self.entries(selection) if d.get("record") is not None]
        for doc in docs:
            doc["shard"] = entries.shard_of(doc["user_key"], self.config.shards)
        # Each user's oldest first, across chunks too: an interrupted replay has put back the
        # oldest, and whatever is replayed after still comes after them.
        docs.sort(key=lambda d: (d["shard"], d["user_key"], d.get("seq") or 0))
        for shard, group in groupby(docs, key=lambda d: int(d["shard"])):
            of_shard = list(group)
            for start in range(0, len(of_shard), self._chunk):
                moved += self._replay_chunk(shard, of_shard[start : start + self._chunk])
        return moved

    def _replay_chunk(self, shard: int, docs: Sequence[dict[str, Any]]) -> int:
        k = self.keys.shard(shard)
        keys = [self.keys.dlq_entries, self.keys.dlq_index, self.keys.dlq_counts, self.keys.total,
                self.keys.wakeups, self.keys.kick, self.keys.stats, self.keys.meta,
                k.waiting, k.parked, k.parked_why]  # fmt: skip
        args: list[Any] = [self.config.max_queued, self.config.shards, shard]
        for doc in docs:
            # seq 0 for an entry dead-lettered before entries had one: older than anything queued
            raw = entries.encode(doc["user_key"], orjson.dumps(doc["record"]), doc.get("seq") or 0,
                                 doc["first_enqueued_ms"])  # fmt: skip
            args += [doc["id"], doc["reason"], doc["user_key"], raw]
        try:
            with store_errors("replay dead letters"):
                return int(self._replay(keys=keys, args=args))
        except StoreError as exc:
            if "QUEUE_FULL" in str(exc):
                queued = int(str(exc).rsplit(" ", 1)[-1].rstrip(")"))
                raise QueueFull(queued, self.config.max_queued) from None
            if "QUEUE_MISMATCH" in str(exc):
                raise QueueMismatch(
                    f"IDENTIFY_SHARDS is {self.config.shards}, but the queue in Redis was created with another "
                    f"shard count ({exc}); replay with the same IDENTIFY_SHARDS as the producers and workers"
                ) from None
            raise

    def purge(self, selection: Selection) -> int:
        removed = 0
        docs = list(self.entries(selection))
        for start in range(0, len(docs), self._chunk):
            args: list[Any] = []
            for doc in docs[start : start + self._chunk]:
                args += [doc["id"], doc["reason"]]
            with store_errors("purge dead letters"):
                removed += int(
                    self._purge(keys=[self.keys.dlq_entries, self.keys.dlq_index, self.keys.dlq_counts], args=args)
                )
        return removed


def _doc(entry_id: str | bytes, raw: bytes | str) -> dict[str, Any]:
    """An entry as the commands show it: its id (the hash field) first, then what the worker wrote."""
    return {"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, **orjson.loads(raw)}
