"""Every Redis operation a drainer performs on its shard, each one atomic and fenced by the lease.

A drainer owns a shard through ``lease`` (a random token with a TTL).  Every script below first
checks that the lease still holds the caller's token and refuses (LeaseLost) otherwise, so a
drainer that stalled past its TTL can never acknowledge, park or dead-letter records that a newer
owner is working on.

The life of a claim:

    claim    inflight empty: move up to N entries from the head of ``queue`` to ``inflight``;
             inflight not empty: return it as it is (a crashed owner's batch is read again first).
    settle   after each answer: replace ``inflight`` by what is still to be sent, add dead-letter
             entries, park entries of held users, and count what was delivered, in one script.
    release  give the shard back and say when it next needs a drain (now, at a retry time, at
             the first hold's end) in the ``wakeups`` set the dispatcher watches.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from producers.errors import LeaseLost, StoreError
from producers.keys import Keys, ShardKeys
from producers.redis_conn import store_errors

_NOW_MS = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
_FENCE = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end"

# KEYS: lease, state; ARGV: token, ttl_ms
# Whether or not the lease is free, the task that was sent for this shard has now come: clear the
# mark that stops the dispatcher from sending another.
ACQUIRE_LUA = """
redis.call('HDEL', KEYS[2], 'dispatched_at')
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# KEYS: lease; ARGV: token, ttl_ms
RENEW_LUA = f"""
{_FENCE}
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, queue, inflight, state, parked
# ARGV: token, max entries
# Returns {recovered (0/1), recoveries, parked users, entries...}
CLAIM_LUA = f"""
{_FENCE}
local parked = redis.call('ZCARD', KEYS[5])
if redis.call('LLEN', KEYS[3]) > 0 then
  local rec = 0
  if redis.call('HGET', KEYS[4], 'kept') then
    redis.call('HDEL', KEYS[4], 'kept')
  else
    rec = redis.call('HINCRBY', KEYS[4], 'recoveries', 1)
  end
  local out = {{1, rec, parked}}
  for _, e in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = e end
  return out
end
local items = redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[2], #items, -1)
  redis.call('RPUSH', KEYS[3], unpack(items))
end
local out = {{0, 0, parked}}
for _, e in ipairs(items) do out[#out + 1] = e end
return out
"""

# KEYS: lease, inflight, total, stats, state, dlq_entries, dlq_index, dlq_counts, parked,
#       then one parked-list key per parked user (in ARGV order)
# ARGV: token, delivered, requests, n_keep, n_dead, n_park_users, kept_flag,
#       keep entries..., dead (id, failed_ms, reason, json) x n_dead...,
#       per parked user: user key, hold_ms (from now, Redis's clock), reason, n, entries...
SETTLE_LUA = f"""
{_FENCE}
{_NOW_MS}
local delivered, reqs = tonumber(ARGV[2]), tonumber(ARGV[3])
local n_keep, n_dead, n_park = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local a = 8
redis.call('DEL', KEYS[2])
if n_keep > 0 then
  local i = a
  local last = a + n_keep - 1
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
    i = j + 1
  end
  a = last + 1
  if ARGV[7] == '1' then redis.call('HSET', KEYS[5], 'kept', '1') end
else
  redis.call('HDEL', KEYS[5], 'recoveries', 'kept')
end
for d = 1, n_dead do
  redis.call('HSET', KEYS[6], ARGV[a], ARGV[a + 3])
  redis.call('ZADD', KEYS[7], ARGV[a + 1], ARGV[a])
  redis.call('HINCRBY', KEYS[8], ARGV[a + 2], 1)
  a = a + 4
end
for p = 1, n_park do
  local user, release, reason, n = ARGV[a], now + tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local key = KEYS[9 + p]
  redis.call('RPUSH', key, unpack(ARGV, a + 4, a + 3 + n))
  -- GT: a new hold may extend a user's wait, never shorten it (it also adds a new user)
  redis.call('ZADD', KEYS[9], 'GT', release, user)
  redis.call('HINCRBY', KEYS[5], 'parked_' .. reason, n)
  a = a + 4 + n
end
local done = delivered + n_dead
if done > 0 then
  redis.call('DECRBY', KEYS[3], done)
end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[4], 'delivered', delivered)
  redis.call('HSET', KEYS[4], 'last_delivery_ms', now)
end
if n_dead > 0 then redis.call('HINCRBY', KEYS[4], 'dead_lettered', n_dead) end
if reqs > 0 then redis.call('HINCRBY', KEYS[4], 'requests', reqs) end
return 1
"""

# KEYS: lease, queue, inflight, parked, wakeups, kick, state
# ARGV: token, shard, retry_in_ms (0: no retry pending; wake as soon as there is work)
RELEASE_LUA = f"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
{_NOW_MS}
redis.call('DEL', KEYS[1])
local due = 0
local retry_in = tonumber(ARGV[3])
if retry_in > 0 then
  due = now + retry_in
  redis.call('HSET', KEYS[7], 'retry_at', due)
else
  redis.call('HDEL', KEYS[7], 'retry_at')
  if redis.call('LLEN', KEYS[2]) > 0 or redis.call('LLEN', KEYS[3]) > 0 then
    due = now
  else
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    if first[2] then due = tonumber(first[2]) end
  end
end
if due > 0 then
  redis.call('ZADD', KEYS[5], 'LT', due, ARGV[2])
  if redis.call('LLEN', KEYS[6]) == 0 then redis.call('RPUSH', KEYS[6], '1') end
end
return 1
"""


@dataclass
class Claim:
    entries: list[bytes]
    recovered: bool
    recoveries: int
    parked_users: int


@dataclass
class DeadLetter:
    id: str
    failed_ms: int
    reason: str
    json: bytes


@dataclass
class Parking:
    user_key: str
    hold_ms: int
    reason: str
    entries: list[bytes]


@dataclass
class Settlement:
    """What one answer changes: records delivered, still to send, dead-lettered, parked."""

    delivered: int = 0
    requests: int = 0
    keep: list[bytes] = field(default_factory=list)
    #: True when ``keep`` is left on purpose (waiting for a retry), so the next claim of it is not
    #: counted as a recovery from a crash.
    kept_on_purpose: bool = False
    dead: list[DeadLetter] = field(default_factory=list)
    parked: list[Parking] = field(default_factory=list)


class ShardStore:
    def __init__(self, client: redis.Redis, keys: Keys, lease_ttl_s: float) -> None:
        self._redis = client
        self.keys = keys
        self._ttl_ms = int(lease_ttl_s * 1000)
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def acquire(self, shard: int) -> str | None:
        """Take the shard's lease; None when another drainer holds it."""
        token = secrets.token_hex(8)
        k = self.keys.shard(shard)
        with store_errors("acquire lease"):
            ok = self._acquire(keys=[k.lease, k.state], args=[token, self._ttl_ms])
        return token if ok else None

    def renew(self, shard: int, token: str) -> None:
        self._run(self._renew, [self.keys.shard(shard).lease], [token, self._ttl_ms], "renew lease")

    def claim(self, shard: int, token: str, max_entries: int) -> Claim:
        k = self.keys.shard(shard)
        reply = self._run(self._claim, [k.lease, k.queue, k.inflight, k.state, k.parked], [token, max_entries], "claim")
        return Claim(entries=reply[3:], recovered=reply[0] == 1, recoveries=int(reply[1]), parked_users=int(reply[2]))

    def settle(self, shard: int, token: str, s: Settlement) -> None:
        k = self.keys.shard(shard)
        keys = [
            k.lease, k.inflight, self.keys.total, self.keys.stats, k.state,
            self.keys.dlq_entries, self.keys.dlq_index, self.keys.dlq_counts, k.parked,
        ]  # fmt: skip
        args: list[Any] = [
            token, s.delivered, s.requests, len(s.keep), len(s.dead), len(s.parked),
            "1" if s.kept_on_purpose else "0", *s.keep,
        ]  # fmt: skip
        for d in s.dead:
            args += [d.id, d.failed_ms, d.reason, d.json]
        for p in s.parked:
            keys.append(k.parked_user(p.user_key))
            args += [p.user_key, p.hold_ms, p.reason, len(p.entries), *p.entries]
        self._run(self._settle, keys, args, "settle")

    def release(self, shard: int, token: str, *, retry_in_ms: int = 0) -> None:
        """Give the shard back.  With ``retry_in_ms`` the whole shard waits that long (Redis's clock);
        otherwise it is woken as soon as it has work, or when its first parked user is released."""
        k = self.keys.shard(shard)
        keys = [k.lease, k.queue, k.inflight, k.parked, self.keys.wakeups, self.keys.kick, k.state]
        with store_errors("release lease"):
            self._release(keys=keys, args=[token, shard, retry_in_ms])

    def parked_release_times(self, shard: int, user_keys: Sequence[str]) -> list[float | None]:
        with store_errors("read parked users"):
            scores: list[float | None] = self._redis.zmscore(self.keys.shard(shard).parked, list(user_keys))
        return scores

    def _run(self, script: Any, keys: list[str], args: list[Any], action: str) -> Any:
        try:
            with store_errors(action):
                return script(keys=keys, args=args)
        except StoreError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost(f"{action}: the shard's lease expired and may belong to another drainer") from None
            raise

    def shard_keys(self, shard: int) -> ShardKeys:
        return self.keys.shard(shard)
