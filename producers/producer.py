"""IdentifyProducer: validate identifications and append them to their user's shard in Redis.

A call returns only after Redis has the records (the enqueue script has run).  Nothing invalid is
written: records are validated in this process first.  The cap on queued records
(``IDENTIFY_MAX_QUEUED``) is checked and raised in the same script that appends, so concurrent
producers cannot overshoot it.  Producers never import Celery; a worker finds new records through
the ``wakeups`` set the script updates.

The same script serves the bulk import (``importer.py``): ``enqueue_chunk`` can also record an
import job's position after the chunk, and compare and store per-user fingerprints to skip
unchanged records, in that one atomic call, so neither can disagree with what was appended.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from producers import entry
from producers.config import QueueConfig
from producers.errors import ImportJobError, InvalidRecord, QueueFull, QueueMismatch, StoreError
from producers.keys import Keys
from producers.record import ValidRecord, validate
from producers.redis_conn import connect, store_errors

#: Entry format version, stored in the meta hash beside the shard count.
LAYOUT_VERSION = "2"

# KEYS: meta, total, wakeups, kick; then two keys per shard group: its queue and its sequence counter;
#       then, with fingerprints, one fingerprint key per entry (in entry order); then, with a job, the
#       job's progress key.
# ARGV: 1 shards, 2 layout, 3 cap, 4 count, 5 groups, 6 fingerprint TTL ms (0: no fingerprints),
#       7 job run token ('': no job), 8 line, 9 offset, 10 rejected (in this chunk), 11 job state,
#       12 job TTL ms; then per group: shard id, number of entries, the entries' tails (entry.tail);
#       then, with fingerprints, one value per entry: its fingerprint, or '' for a record never skipped.
# Each appended entry gets its head here: the shard's next sequence number and Redis's clock.
# Returns {1, total, appended} when written, {0, total, 0} when the cap refuses the chunk (nothing
# written, the job's progress included).
ENQUEUE_LUA = """
local shards, layout = ARGV[1], ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 'shards', 'layout', 'linger_ms')
if not stored[1] then
  redis.call('HSET', KEYS[1], 'shards', shards, 'layout', layout)
elseif stored[1] ~= shards or stored[2] ~= layout then
  return redis.error_reply('QUEUE_MISMATCH shards=' .. stored[1] .. ' layout=' .. tostring(stored[2]))
end
local cap, count, groups = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fp_ttl, run = tonumber(ARGV[6]), ARGV[7]
local job = nil
if run ~= '' then
  job = KEYS[#KEYS]
  if redis.call('HGET', job, 'run') ~= run then
    return redis.error_reply('IMPORT_TAKEN another run of this import job has taken it over')
  end
end
-- With fingerprints, an entry equal to what was last enqueued for its user is left out.  A user can
-- appear twice in one chunk, so the decision follows the chunk's own writes ('current').
local keep, appended = nil, count
local current, pending, touched = {}, {}, {}
local fp_keys, fp_values = 4 + 2 * groups, 12 + 2 * groups + count
if fp_ttl > 0 then
  keep, appended = {}, 0
  -- one MGET per thousand keys: a redis.call per key costs more than the lookup itself
  local before, i = {}, 1
  while i <= count do
    local j = math.min(i + 999, count)
    local got = redis.call('MGET', unpack(KEYS, fp_keys + i, fp_keys + j))
    for n = 1, #got do
      before[i + n - 1] = got[n]
    end
    i = j + 1
  end
  for j = 1, count do
    local key, value = KEYS[fp_keys + j], ARGV[fp_values + j]
    local now = current[key]
    if now == nil then
      now = before[j] or ''
    end
    if value ~= '' and value == now then
      keep[j] = false
    else
      keep[j] = true
      appended = appended + 1
      if pending[key] == nil then
        touched[#touched + 1] = key
      end
      pending[key] = value
    end
    current[key] = value
  end
end
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
if total + appended > cap then
  return {0, total, 0}
end
if appended > 0 then
  total = redis.call('INCRBY', KEYS[2], appended)
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now_ms + tonumber(stored[3] or '0')
local stamp = '|' .. now_ms .. '|'
-- number the tails values[first..last] from the shard's counter and append them, in slices:
-- Lua's C stack takes a few thousand values at most
local function push(key, seq_key, values, first, last)
  local n = last - first + 1
  if n <= 0 then return 0 end
  local seq = redis.call('INCRBY', seq_key, n) - n
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    local slice = {}
    for x = i, j do
      seq = seq + 1
      slice[#slice + 1] = '2|' .. seq .. stamp .. values[x]
    end
    redis.call('RPUSH', key, unpack(slice))
    i = j + 1
  end
  return n
end
local a, e = 13, 0
for g = 1, groups do
  local queue, seq_key = KEYS[3 + 2 * g], KEYS[4 + 2 * g]
  local shard, n = ARGV[a], tonumber(ARGV[a + 1])
  local first, last = a + 2, a + 1 + n
  local pushed
  if keep then
    local kept = {}
    for i = first, last do
      e = e + 1
      if keep[e] then
        kept[#kept + 1] = ARGV[i]
      end
    end
    pushed = push(queue, seq_key, kept, 1, #kept)
  else
    pushed = push(queue, seq_key, ARGV, first, last)
  end
  -- LT: never postpone a drain that is already due earlier (a retry or hold keeps its own time)
  if pushed > 0 then
    redis.call('ZADD', KEYS[3], 'LT', due, shard)
  end
  a = last + 1
end
for _, key in ipairs(touched) do
  if pending[key] == '' then
    redis.call('DEL', key)
  else
    redis.call('SET', key, pending[key], 'PX', fp_ttl)
  end
end
if appended > 0 and redis.call('LLEN', KEYS[4]) == 0 then
  redis.call('RPUSH', KEYS[4], '1')
end
if job then
  redis.call('HSET', job, 'line', ARGV[8], 'offset', ARGV[9], 'state', ARGV[11], 'updated_ms', now_ms)
  redis.call('HINCRBY', job, 'enqueued', appended)
  redis.call('HINCRBY', job, 'skipped', count - appended)
  redis.call('HINCRBY', job, 'rejected', tonumber(ARGV[10]))
  redis.call('PEXPIRE', job, ARGV[12])
end
return {1, total, appended}
"""


@dataclass(frozen=True)
class JobProgress:
    """Where an import job stands after a chunk; written by the same script call that appends it.

    ``line`` and ``offset`` are the lines and bytes of the input consumed once the chunk is in;
    ``rejected`` is the number of the chunk's lines that were refused (added to the job's count).
    ``run`` must be the token the job's progress holds: a run another one has taken over stops.
    ``ttl_ms``: the progress expires this long after its last update.
    """

    job: str
    run: str
    line: int
    offset: int
    rejected: int = 0
    finished: bool = False
    ttl_ms: int = 30 * 86_400_000  # import_job.JOB_TTL_MS, passed by the importer


@dataclass(frozen=True)
class ChunkResult:
    """What one enqueue script call did: records appended, records skipped as unchanged, queued total."""

    enqueued: int
    skipped: int
    queued: int


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
        self._shard_keys = [(k.queue, k.seq) for k in map(self.keys.shard, range(self.config.shards))]

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

    @property
    def client(self) -> redis.Redis:
        """The Redis client this producer uses (the importer keeps its job's progress through it)."""
        return self._redis

    def enqueue_valid(self, records: Sequence[ValidRecord]) -> int:
        """Append already-validated records in one atomic script; all of them or none."""
        if not records:
            return 0
        return self.enqueue_chunk(records).enqueued

    def enqueue_chunk(
        self,
        records: Sequence[ValidRecord],
        *,
        fingerprints: Sequence[bytes] | None = None,
        fingerprint_ttl_ms: int = 0,
        progress: JobProgress | None = None,
    ) -> ChunkResult:
        """Append records, their users' fingerprints and an import job's progress in one script call.

        With ``fingerprints`` (one per record, aligned), a record whose fingerprint equals its
        user's stored one is skipped; every appended record stores its own (``b""``: the record
        must never be skipped, and clears its user's).  Either everything is written or nothing:
        QueueFull leaves the records, the fingerprints and the progress as they were.
        """
        if fingerprints is not None and (len(fingerprints) != len(records) or fingerprint_ttl_ms <= 0):
            raise ValueError("fingerprints need one value per record and a positive fingerprint_ttl_ms")
        shards = self.config.shards
        groups: dict[int, list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            groups[entry.shard_of(rec.user_key, shards)].append(i)
        keys = [self.keys.meta, self.keys.total, self.keys.wakeups, self.keys.kick]
        args: list[Any] = [shards, LAYOUT_VERSION, self.config.max_queued, len(records), len(groups)]
        args += [fingerprint_ttl_ms if fingerprints is not None else 0]
        if progress is None:
            args += ["", 0, 0, 0, "", 0]
        else:
            state = "finished" if progress.finished else "running"
            args += [progress.run, progress.line, progress.offset, progress.rejected, state, progress.ttl_ms]
        order: list[int] = []
        for shard, indices in groups.items():
            keys += self._shard_keys[shard]
            args += [shard, len(indices)]
            args += [entry.tail(records[i].user_key, records[i].data) for i in indices]
            order += indices
        if fingerprints is not None:
            keys += [self.keys.fingerprint(records[i].user_key) for i in order]
            args += [fingerprints[i] for i in order]
        if progress is not None:
            keys.append(self.keys.import_progress(progress.job))
        ok, total, appended = self._run_enqueue(keys, args)
        if not ok:
            raise QueueFull(int(total), self.config.max_queued)
        return ChunkResult(int(appended), len(records) - int(appended), int(total))

    def _run_enqueue(self, keys: list[str], args: list[Any]) -> list[int]:
        try:
            with store_errors("enqueue"):
                result: list[int] = self._enqueue(keys=keys, args=args)
                return result
        except StoreError as exc:
            if "QUEUE_MISMATCH" in str(exc):
                stored = str(exc).split("QUEUE_MISMATCH", 1)[1].strip(" )")
                raise QueueMismatch(
                    f"IDENTIFY_SHARDS is {self.config.shards}, but the queue in Redis was created with "
                    f"{stored}; use the same IDENTIFY_SHARDS for every producer and worker"
                ) from None
            if "IMPORT_TAKEN" in str(exc):
                raise ImportJobError(
                    "another run of this import job has taken it over (started with --resume or --restart); "
                    "this run stops here, and everything it enqueued is recorded in the job's progress"
                ) from None
            raise

    def queued(self) -> int:
        """Records accepted and not yet delivered or dead-lettered."""
        with store_errors("read queued count"):
            return int(self._redis.get(self.keys.total) or 0)
