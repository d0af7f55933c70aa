"""IdentifyProducer: validate identifications and append them to their user's shard in Redis.

A call returns only after Redis has the records (the enqueue script has run).  Nothing invalid is
written: records are validated in this process first.  The cap on queued records
(``IDENTIFY_MAX_QUEUED``) is checked and raised in the same script that appends, so concurrent
producers cannot overshoot it.  Producers never import Celery; a worker finds new records through
the ``wakeups`` set the script updates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from producers import entry
from producers.config import QueueConfig
from producers.errors import InvalidRecord, QueueFull, QueueMismatch, StoreError
from producers.keys import Keys
from producers.record import ValidRecord, validate
from producers.redis_conn import connect, store_errors

#: Entry format version, stored in the meta hash beside the shard count.
LAYOUT_VERSION = "1"

# KEYS: meta, total, wakeups, kick, then one queue key per shard present in the chunk.
# ARGV: shards, layout, cap, count, then per shard: shard id, number of entries, the entries.
# Returns {1, total} when appended, {0, total} when the cap refuses the chunk (nothing written).
ENQUEUE_LUA = """
local shards, layout = ARGV[1], ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 'shards', 'layout', 'linger_ms')
if not stored[1] then
  redis.call('HSET', KEYS[1], 'shards', shards, 'layout', layout)
elseif stored[1] ~= shards or stored[2] ~= layout then
  return redis.error_reply('QUEUE_MISMATCH shards=' .. stored[1] .. ' layout=' .. tostring(stored[2]))
end
local cap, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
if total + count > cap then
  return {0, total}
end
total = redis.call('INCRBY', KEYS[2], count)
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(stored[3] or '0')
local a = 5
for k = 5, #KEYS do
  local shard, n = ARGV[a], tonumber(ARGV[a + 1])
  local first = a + 2
  local last = first + n - 1
  -- unpack in slices: Lua's C stack takes a few thousand values at most
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('RPUSH', KEYS[k], unpack(ARGV, i, j))
    i = j + 1
  end
  -- LT: never postpone a drain that is already due earlier (a retry or hold keeps its own time)
  redis.call('ZADD', KEYS[3], 'LT', due, shard)
  a = last + 1
end
if redis.call('LLEN', KEYS[4]) == 0 then
  redis.call('RPUSH', KEYS[4], '1')
end
return {1, total}
"""


@dataclass
class EnqueueReport:
    """What ``identify_many`` did: how many records were enqueued, and which were refused, why."""

    enqueued: int = 0
    rejected: list[InvalidRecord] = field(default_factory=list)


class IdentifyProducer:
    """Enqueue identifications for delivery to Amplitude's Identify API.

    >>> producer = IdentifyProducer.from_env()
    >>> producer.identify(user_id="user-42", user_properties={"$set": {"plan": "pro"}})
    """

    def __init__(self, config: QueueConfig | None = None, *, client: redis.Redis | None = None) -> None:
        self.config = config or QueueConfig()
        self.keys = Keys(self.config.namespace)
        self._redis = client or connect(self.config.redis_url)
        self._enqueue = self._redis.register_script(ENQUEUE_LUA)
        self._shard_keys = [self.keys.shard(s).queue for s in range(self.config.shards)]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IdentifyProducer:
        return cls(QueueConfig.from_env(env))

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> IdentifyProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def validate(self, record: Any) -> ValidRecord:
        return validate(record, min_id_length=self.config.min_id_length, max_record_bytes=self.config.max_record_bytes)

    def identify(self, record: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Validate and enqueue one identification, given as a mapping, keywords, or both."""
        merged = {**(record or {}), **fields}
        self.enqueue_valid([self.validate(merged)])

    def identify_many(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        chunk_size: int = 1000,
        errors: Literal["raise", "collect"] = "raise",
    ) -> EnqueueReport:
        """Validate and enqueue many identifications, pipelined in chunks of ``chunk_size``.

        With ``errors="raise"`` the first invalid record raises InvalidRecord (its ``index`` says
        which) after every valid record before it has been enqueued, and none after it.  With
        ``errors="collect"`` invalid records are skipped and listed in the report.  QueueFull means
        the chunk that would pass the cap was not enqueued; ``QueueFull.enqueued`` counts the rest.
        """
        report = EnqueueReport()
        chunk: list[ValidRecord] = []
        for index, record in enumerate(records):
            try:
                chunk.append(self.validate(record))
            except InvalidRecord as exc:
                if errors == "raise":
                    self._flush(chunk, report)
                    raise exc.at(index) from None
                report.rejected.append(exc.at(index))
                continue
            if len(chunk) >= chunk_size:
                self._flush(chunk, report)
        self._flush(chunk, report)
        return report

    def _flush(self, chunk: list[ValidRecord], report: EnqueueReport) -> None:
        if chunk:
            try:
                report.enqueued += self.enqueue_valid(chunk)
            except QueueFull as full:
                raise QueueFull(full.queued, full.cap, report.enqueued) from None
            chunk.clear()

    def enqueue_valid(self, records: Sequence[ValidRecord], enqueued_ms: int | None = None) -> int:
        """Append already-validated records in one atomic script; all of them or none."""
        if not records:
            return 0
        stamp = entry.now_ms() if enqueued_ms is None else enqueued_ms
        shards = self.config.shards
        groups: dict[int, list[bytes]] = defaultdict(list)
        for rec in records:
            groups[entry.shard_of(rec.user_key, shards)].append(entry.encode(rec.user_key, rec.data, stamp))
        keys = [self.keys.meta, self.keys.total, self.keys.wakeups, self.keys.kick]
        args: list[Any] = [shards, LAYOUT_VERSION, self.config.max_queued, len(records)]
        for shard, entries in groups.items():
            keys.append(self._shard_keys[shard])
            args += [shard, len(entries), *entries]
        try:
            with store_errors("enqueue"):
                ok, total = self._enqueue(keys=keys, args=args)
        except StoreError as exc:
            if "QUEUE_MISMATCH" in str(exc):
                raise QueueMismatch(
                    f"this producer is configured for {shards} shards, but the queue in Redis "
                    f"({exc}) was created differently; use the same IDENTIFY_SHARDS everywhere"
                ) from None
            raise
        if not ok:
            raise QueueFull(int(total), self.config.max_queued)
        return len(records)

    def queued(self) -> int:
        """Records accepted and not yet delivered or dead-lettered."""
        with store_errors("read queued count"):
            return int(self._redis.get(self.keys.total) or 0)
