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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from producers.errors import LeaseLost, StoreError
from producers.keys import Keys
from producers.redis_conn import store_errors

#: Users whose hold ended, released by one claim (their entries all go into that claim).
RELEASED_USERS_PER_CLAIM = 100

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

# KEYS: lease, queue, inflight, state, parked, blocked, meta, parked_why
# ARGV: token, max entries, probe hold ms, parked-list key prefix, max users released per claim
# Returns {recoveries, users still parked, wait ms, wait is a retry (0/1), probe (0/1), learned
# max request bytes (0: none), entries...}.  A wait means nothing was claimed: the shard's own
# retry time has not come (a task sent again meanwhile must not retry early), or sending is
# blocked.
# Users whose hold has ended are released first: all of their waiting entries move into inflight
# ahead of anything from the queue, since they are older than that user's queued ones.
# While sending is blocked (a configuration error), nothing is claimed until the next probe is
# due; the first claim after that is the probe, and pushes the next probe back by `probe hold`, so
# that one request probes at a time.
CLAIM_LUA = f"""
{_FENCE}
{_NOW_MS}
local learned = tonumber(redis.call('HGET', KEYS[7], 'max_request_bytes') or '0')
local parked = redis.call('ZCARD', KEYS[5])
local in_flight = redis.call('LLEN', KEYS[3])
local due_users = {{}}
if parked > 0 then
  due_users = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
end
if in_flight == 0 and #due_users == 0 and redis.call('LLEN', KEYS[2]) == 0 then
  return {{0, parked, 0, 0, 0, learned}}
end
local retry_at = tonumber(redis.call('HGET', KEYS[4], 'retry_at') or '0')
if retry_at > now then
  return {{0, parked, retry_at - now, 1, 0, learned}}
end
local probe = 0
if redis.call('EXISTS', KEYS[6]) == 1 then
  local next_probe = tonumber(redis.call('HGET', KEYS[6], 'next_probe_ms') or '0')
  if now < next_probe then
    return {{0, parked, next_probe - now, 0, 0, learned}}
  end
  redis.call('HSET', KEYS[6], 'next_probe_ms', now + tonumber(ARGV[3]))
  probe = 1
end
if in_flight > 0 then
  -- read again first: left by a clean release (waiting to retry), or by a drainer that died
  local rec = 0
  if redis.call('HGET', KEYS[4], 'kept') then
    redis.call('HDEL', KEYS[4], 'kept')
  else
    rec = redis.call('HINCRBY', KEYS[4], 'recoveries', 1)
  end
  local out = {{rec, parked, 0, 0, probe, learned}}
  for _, e in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = e end
  return out
end
local out = {{0, 0, 0, 0, probe, learned}}
local taken = 0
for _, user in ipairs(due_users) do
  local key = ARGV[4] .. user
  for _, e in ipairs(redis.call('LRANGE', key, 0, -1)) do
    redis.call('RPUSH', KEYS[3], e)
    out[#out + 1] = e
    taken = taken + 1
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[5], user)
  redis.call('HDEL', KEYS[8], user)
end
out[2] = redis.call('ZCARD', KEYS[5])
local room = tonumber(ARGV[2]) - taken
if room > 0 then
  local items = redis.call('LRANGE', KEYS[2], 0, room - 1)
  if #items > 0 then
    redis.call('LTRIM', KEYS[2], #items, -1)
    redis.call('RPUSH', KEYS[3], unpack(items))
    for _, e in ipairs(items) do out[#out + 1] = e end
  end
end
return out
"""

# KEYS: blocked; ARGV: reason, detail, status, backoff base ms, cap ms, jitter (0..1)
# Returns {newly blocked (0/1), probes so far, ms until the next probe}.
BLOCK_LUA = f"""
{_NOW_MS}
local new = redis.call('EXISTS', KEYS[1]) == 0
if new then redis.call('HSET', KEYS[1], 'since_ms', now, 'probes', 0) end
local probes = redis.call('HINCRBY', KEYS[1], 'probes', 1)
local step = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ math.min(probes - 1, 40))
local delay = math.floor(step / 2 + step / 2 * tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'detail', ARGV[2], 'status', ARGV[3], 'next_probe_ms', now + delay)
return {{new and 1 or 0, probes, delay}}
"""

# KEYS: blocked, wakeups, kick.  Returns how long sending was blocked (ms), or -1 if it was not.
UNBLOCK_LUA = f"""
{_NOW_MS}
local since = redis.call('HGET', KEYS[1], 'since_ms')
if not since then return -1 end
redis.call('DEL', KEYS[1])
-- every shard waiting for the next probe can go now
local waiting = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, shard in ipairs(waiting) do redis.call('ZADD', KEYS[2], 'XX', now, shard) end
if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], '1') end
return now - tonumber(since)
"""

# KEYS: meta; ARGV: bytes.  The request size every worker uses from now on, never raised here.
LOWER_MAX_BYTES_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], 'max_request_bytes') or '0')
if current == 0 or tonumber(ARGV[1]) < current then
  redis.call('HSET', KEYS[1], 'max_request_bytes', ARGV[1])
  return tonumber(ARGV[1])
end
return current
"""

# KEYS: lease, inflight, total, stats, state, dlq_entries, dlq_index, dlq_counts, parked, parked_why,
#       delivery-rate bucket, then one parked-list key per parked user (in ARGV order), then the import
#       fingerprint of each dead-lettered record's user: deleted, so that `import --skip-unchanged`
#       sends that user's update again instead of skipping it as already sent
# ARGV: token, delivered, requests, last error ('' for none),
#       n_keep, keep entries...,
#       n_dead, dead (id, failed_ms, reason, json) x n_dead,
#       n_park, per parked user: user key, hold ms (from now, Redis's clock), reason ('': unchanged),
#               n, entries...
SETTLE_LUA = f"""
{_FENCE}
{_NOW_MS}
local delivered, reqs = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], 'last_error', ARGV[4], 'last_error_ms', now) end
local a = 5
local function take_list(key)
  -- RPUSH the next n arguments onto key, in slices (Lua's C stack takes a few thousand values)
  local n = tonumber(ARGV[a])
  local i, last = a + 1, a + n
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('RPUSH', key, unpack(ARGV, i, j))
    i = j + 1
  end
  a = last + 1
  return n
end
redis.call('DEL', KEYS[2])
if take_list(KEYS[2]) == 0 then redis.call('HDEL', KEYS[5], 'recoveries') end
local n_dead = tonumber(ARGV[a])
a = a + 1
for d = 1, n_dead do
  redis.call('HSET', KEYS[6], ARGV[a], ARGV[a + 3])
  redis.call('ZADD', KEYS[7], ARGV[a + 1], ARGV[a])
  redis.call('HINCRBY', KEYS[8], ARGV[a + 2], 1)
  a = a + 4
end
local n_park = tonumber(ARGV[a])
a = a + 1
for p = 1, n_park do
  local user, release, reason = ARGV[a], now + tonumber(ARGV[a + 1]), ARGV[a + 2]
  a = a + 3
  take_list(KEYS[11 + p])
  -- GT: a new hold may extend a user's wait, never shorten it (it also adds a new user)
  redis.call('ZADD', KEYS[9], 'GT', release, user)
  if reason ~= '' then redis.call('HSET', KEYS[10], user, reason) end
end
for f = 12 + n_park, #KEYS do redis.call('DEL', KEYS[f]) end
local done = delivered + n_dead
if done > 0 then redis.call('DECRBY', KEYS[3], done) end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[4], 'delivered', delivered)
  redis.call('HSET', KEYS[4], 'last_delivery_ms', now)
  redis.call('INCRBY', KEYS[11], delivered)
  redis.call('PEXPIRE', KEYS[11], 120000)
end
if n_dead > 0 then redis.call('HINCRBY', KEYS[4], 'dead_lettered', n_dead) end
if reqs > 0 then redis.call('HINCRBY', KEYS[4], 'requests', reqs) end
return 1
"""


# KEYS: lease, queue, inflight, parked, wakeups, kick, state
# ARGV: token, shard, retry_in_ms, wake_in_ms, clean (0/1)
# With retry_in_ms the shard itself must wait (its batch failed): nothing of it is sent before.
# With wake_in_ms it is only looked at again then (sending is blocked for everyone: when the block
# lifts, every wake-up is pulled forward).  With neither, it is woken as soon as it has work.
# A clean release marks records left in flight as kept on purpose; without the mark, the next
# claim counts a recovery (the drainer died or failed), which is how poison records are found.
RELEASE_LUA = f"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
{_NOW_MS}
redis.call('DEL', KEYS[1])
if ARGV[5] == '1' and redis.call('LLEN', KEYS[3]) > 0 then redis.call('HSET', KEYS[7], 'kept', '1') end
local due = 0
local retry_in, wake_in = tonumber(ARGV[3]), tonumber(ARGV[4])
if retry_in > 0 then
  due = now + retry_in
  redis.call('HSET', KEYS[7], 'retry_at', due)
else
  redis.call('HDEL', KEYS[7], 'retry_at')
  if wake_in > 0 then
    due = now + wake_in
  elseif redis.call('LLEN', KEYS[2]) > 0 or redis.call('LLEN', KEYS[3]) > 0 then
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

# KEYS: blocked, wakeups, kick.  A worker that starts may bring the fix for a configuration error:
# probe at once, and look at every waiting shard now.
PROBE_NOW_LUA = f"""
{_NOW_MS}
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'next_probe_ms', 0)
for _, shard in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do redis.call('ZADD', KEYS[2], 'XX', now, shard) end
if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], '1') end
return 1
"""


@dataclass
class Claim:
    entries: list[bytes]
    recoveries: int
    parked_users: int
    #: Nothing was claimed: ask again this much later, because the shard waits to retry
    #: (``wait_is_retry``) or because a configuration error blocks sending.
    wait_ms: int = 0
    wait_is_retry: bool = False
    #: This claim is the probe of a blocked sender: its answer decides whether sending resumes.
    probe: bool = False
    #: A request size learned from a 413, smaller than the configured one (0: none learned).
    max_request_bytes: int = 0


@dataclass
class Block:
    newly_blocked: bool
    probes: int
    next_probe_in_ms: int


@dataclass
class DeadLetter:
    id: str
    failed_ms: int
    reason: str
    json: bytes
    #: Whose record it is (None when the entry could not be decoded).
    user_key: str | None = None


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
    dead: list[DeadLetter] = field(default_factory=list)
    parked: list[Parking] = field(default_factory=list)
    #: A one-line description of what went wrong, shown by `status` as the last error.
    error: str = ""


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
        self._block = client.register_script(BLOCK_LUA)
        self._unblock = client.register_script(UNBLOCK_LUA)
        self._lower_max_bytes = client.register_script(LOWER_MAX_BYTES_LUA)
        self._probe_now = client.register_script(PROBE_NOW_LUA)

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
        keys = [k.lease, k.queue, k.inflight, k.state, k.parked, self.keys.blocked, self.keys.meta, k.parked_why]
        args = [token, max_entries, self._ttl_ms, k.parked_user_prefix, RELEASED_USERS_PER_CLAIM]
        reply = self._run(self._claim, keys, args, "claim")
        return Claim(
            entries=reply[6:], recoveries=int(reply[0]), parked_users=int(reply[1]), wait_ms=int(reply[2]),
            wait_is_retry=reply[3] == 1, probe=reply[4] == 1, max_request_bytes=int(reply[5]),
        )  # fmt: skip

    def block(
        self, reason: str, detail: str, status: int | None, *, base_s: float, cap_s: float, jitter: float
    ) -> Block:
        """Stop every worker from sending (a configuration error); returns when to probe again."""
        args = [reason, detail, status or "", int(base_s * 1000), int(cap_s * 1000), jitter]
        with store_errors("block sending"):
            new, probes, delay = self._block(keys=[self.keys.blocked], args=args)
        return Block(bool(new), int(probes), int(delay))

    def unblock(self) -> int:
        """Let every worker send again; how long sending was blocked (ms), or -1 if it was not."""
        with store_errors("unblock sending"):
            blocked_ms: int = self._unblock(keys=[self.keys.blocked, self.keys.wakeups, self.keys.kick])
        return int(blocked_ms)

    def probe_now(self) -> bool:
        """If sending is blocked, probe at once (a worker starting may bring the fix)."""
        with store_errors("probe now"):
            return bool(self._probe_now(keys=[self.keys.blocked, self.keys.wakeups, self.keys.kick]))

    def lower_max_request_bytes(self, limit: int) -> int:
        """Lower the request size every worker uses (never raises it); returns the size in force."""
        with store_errors("lower the request size"):
            current: int = self._lower_max_bytes(keys=[self.keys.meta], args=[limit])
        return int(current)

    def settle(self, shard: int, token: str, s: Settlement) -> None:
        k = self.keys.shard(shard)
        keys = [
            k.lease, k.inflight, self.keys.total, self.keys.stats, k.state, self.keys.dlq_entries,
            self.keys.dlq_index, self.keys.dlq_counts, k.parked, k.parked_why,
            self.keys.delivered_in(int(time.time()) // 10),
        ]  # fmt: skip
        args: list[Any] = [token, s.delivered, s.requests, s.error, len(s.keep), *s.keep, len(s.dead)]
        for d in s.dead:
            args += [d.id, d.failed_ms, d.reason, d.json]
        args.append(len(s.parked))
        for p in s.parked:
            keys.append(k.parked_user(p.user_key))
            args += [p.user_key, p.hold_ms, p.reason, len(p.entries), *p.entries]
        keys += [self.keys.fingerprint(u) for u in {d.user_key for d in s.dead if d.user_key is not None}]
        self._run(self._settle, keys, args, "settle")

    def release(self, shard: int, token: str, *, retry_in_ms: int = 0, wake_in_ms: int = 0, clean: bool = True) -> None:
        """Give the shard back.  With ``retry_in_ms`` the whole shard waits that long (Redis's clock);
        otherwise it is woken as soon as it has work, or when its first parked user is released."""
        k = self.keys.shard(shard)
        keys = [k.lease, k.queue, k.inflight, k.parked, self.keys.wakeups, self.keys.kick, k.state]
        with store_errors("release lease"):
            self._release(keys=keys, args=[token, shard, retry_in_ms, wake_in_ms, 1 if clean else 0])

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
