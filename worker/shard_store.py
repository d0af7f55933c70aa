"""Every Redis operation a drainer performs on its shard, each one atomic and fenced by the lease.

A drainer owns a shard through ``lease`` (a random token with a TTL).  Every script below first
checks that the lease still holds the caller's token and refuses (LeaseLost) otherwise, so a
drainer that stalled past its TTL can never acknowledge, park or dead-letter records that a newer
owner is working on.

The life of a claim:

    claim    inflight empty: release the oldest waiting updates of users whose time has come, then
             move entries from the head of ``queue``, at most what the next request can carry,
             into ``inflight``; inflight not empty: return it as it is (a crashed owner's batch is
             read again first).  The drainer then puts back what belongs behind a user's waiting
             updates (worker/waiting.py) before it sends anything.
    settle   after each answer: drop what is done from the head of ``inflight`` (or, on the rare
             paths that change it otherwise, replace it), add dead-letter entries, park entries of
             held or deferred users, and count what was delivered, in one script.
    release  give the shard back and say when it next needs a drain (now, at a retry time, at
             the first hold's end) in the ``wakeups`` set the dispatcher watches.

No script's work grows with a backlog: a claim reads at most what one request carries, a settle
touches only what it changes, and waiting users are reached by their key, never by a walk.
Every time a script needs is Redis's (``TIME``); a claim returns it, so that the drainer's own
decisions (ages, budget slots, failure times) are on the same clock (``RedisClock``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from producers.errors import LeaseLost, StoreError
from producers.keys import Keys
from producers.redis_conn import store_errors
from worker.waiting import OLDEST_LUA, WAITING_LUA

#: Users whose wait ended, released by one claim (each gives its oldest entries first).
RELEASED_USERS_PER_CLAIM = 100

_NOW_MS = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
_FENCE = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end"
# RPUSH values[first..last] onto key, in slices: Lua's C stack takes a few thousand values at most.
_PUSH = """
local function push(key, values, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + 999, last)
    redis.call('RPUSH', key, unpack(values, i, j))
    i = j + 1
  end
end
"""

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

# KEYS: lease, queue, inflight, state, parked, parked_why, waiting, blocked, meta
# ARGV: token, max entries, max bytes, probe hold ms, max users released per claim
# Returns {now ms, recoveries, wait ms, wait is a retry (0/1), probe (0/1), learned max request
# bytes (0: none), its age ms, users that wait, entries...}.  A wait means nothing was claimed: the shard's own retry
# time has not come (a task sent again meanwhile must not retry early), or sending is blocked.
# While sending is blocked (a configuration error), nothing is claimed until the next probe is
# due; the first claim after that is the probe, and pushes the next probe back by `probe hold`, so
# that one request probes at a time.
# When the queue has entries too, released users take at most half the claim, so that a user with
# a long wait behind it cannot stall everybody else's updates.
CLAIM_LUA = f"""
{_FENCE}
{_NOW_MS}
{WAITING_LUA}
{_PUSH}
local learned = redis.call('HMGET', KEYS[9], 'max_request_bytes', 'max_request_bytes_ms')
local learned_bytes = tonumber(learned[1] or '0')
local learned_age = learned[2] and now - tonumber(learned[2]) or 0
local function header(rec, wait, retry, probe)
  return {{now, rec, wait, retry, probe, learned_bytes, learned_age, redis.call('ZCARD', KEYS[5])}}
end
local in_flight = redis.call('LLEN', KEYS[3])
local due_users = {{}}
if redis.call('ZCARD', KEYS[5]) > 0 then
  due_users = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
end
local queued = redis.call('LLEN', KEYS[2])
if in_flight == 0 and #due_users == 0 and queued == 0 then
  return header(0, 0, 0, 0)
end
local retry_at = tonumber(redis.call('HGET', KEYS[4], 'retry_at') or '0')
if retry_at > now then
  return header(0, retry_at - now, 1, 0)
end
local probe = 0
if redis.call('EXISTS', KEYS[8]) == 1 then
  local next_probe = tonumber(redis.call('HGET', KEYS[8], 'next_probe_ms') or '0')
  if now < next_probe then
    return header(0, next_probe - now, 0, 0)
  end
  redis.call('HSET', KEYS[8], 'next_probe_ms', now + tonumber(ARGV[4]))
  probe = 1
end
local previous = redis.call('HGET', KEYS[4], 'claimer')
redis.call('HSET', KEYS[4], 'claimer', ARGV[1])
if in_flight > 0 then
  -- read again first: left by a clean release (waiting to retry), or by a drainer that died
  local rec = 0
  if redis.call('HGET', KEYS[4], 'kept') then
    redis.call('HDEL', KEYS[4], 'kept')
  else
    rec = redis.call('HINCRBY', KEYS[4], 'recoveries', 1)
    if previous then redis.call('HSET', KEYS[4], 'recovered_from', previous) end
  end
  local out = header(rec, 0, 0, probe)
  for _, e in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = e end
  return out
end
local out = header(0, 0, 0, probe)
local room, bytes, max_bytes = tonumber(ARGV[2]), 0, tonumber(ARGV[3])
local release_room = room
if queued > 0 then release_room = math.ceil(room / 2) end
for _, user in ipairs(due_users) do
  if release_room <= 0 or bytes >= max_bytes then break end
  local taken = wait_take(KEYS[7], KEYS[5], KEYS[6], user, release_room)
  for _, e in ipairs(taken) do
    out[#out + 1] = e
    bytes = bytes + #e
  end
  release_room = release_room - #taken
  room = room - #taken
end
if room > 0 and queued > 0 and bytes < max_bytes then
  local items = redis.call('LRANGE', KEYS[2], 0, room - 1)
  local n = 0
  for i, e in ipairs(items) do
    if bytes > 0 and bytes + #e > max_bytes then break end
    bytes = bytes + #e
    n = i
  end
  redis.call('LTRIM', KEYS[2], n, -1)
  for i = 1, n do out[#out + 1] = items[i] end
end
out[8] = redis.call('ZCARD', KEYS[5])  -- after the releases
if #out > 8 then push(KEYS[3], out, 9, #out) end
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

# KEYS: meta; ARGV: bytes, quiet ms.  The request size every worker uses from now on: lowered,
# never raised here, unless the size learned before is older than the quiet period (by then
# workers have been probing upward from it, worker/batcher.py).
LOWER_MAX_BYTES_LUA = f"""
{_NOW_MS}
local stored = redis.call('HMGET', KEYS[1], 'max_request_bytes', 'max_request_bytes_ms')
local current, at = tonumber(stored[1] or '0'), tonumber(stored[2] or '0')
local bytes = tonumber(ARGV[1])
if current == 0 or bytes < current or now - at >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'max_request_bytes', bytes, 'max_request_bytes_ms', now)
  return bytes
end
return current
"""

# KEYS: lease, inflight, total, stats, state, dlq_entries, dlq_index, dlq_counts, parked, parked_why,
#       waiting, delivery-rate bucket, dlq_seq, then the import fingerprint of each dead-lettered
#       record's user: deleted, so that `import --skip-unchanged` sends that user's update again
#       instead of skipping it as already sent
# ARGV: token, shard, delivered, requests, last error ('' for none), failed-at ms,
#       trim (entries done at the head of inflight), replace (-1: inflight stays as trimmed; n: it
#       becomes the n entries that follow),
#       n_dead, dead (reason, json) x n_dead,
#       n_park, per parked user: user key, hold ms (from now, Redis's clock), reason ('': unchanged),
#               n, waiting members (worker/waiting.py) ...
# Returns the ids given to the dead letters, in order.
SETTLE_LUA = f"""
{_FENCE}
{_NOW_MS}
{_PUSH}
{WAITING_LUA}
local delivered, reqs = tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], 'last_error', ARGV[5], 'last_error_ms', now) end
local trim, replace = tonumber(ARGV[7]), tonumber(ARGV[8])
local a = 9
if replace >= 0 then
  redis.call('DEL', KEYS[2])
  push(KEYS[2], ARGV, a, a + replace - 1)
  a = a + replace
elseif trim > 0 then
  redis.call('LTRIM', KEYS[2], trim, -1)
end
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('HDEL', KEYS[5], 'recoveries', 'recovered_from') end
local n_dead = tonumber(ARGV[a])
a = a + 1
local ids = {{}}
for d = 1, n_dead do
  local id = ARGV[2] .. '-' .. redis.call('INCR', KEYS[13])
  redis.call('HSET', KEYS[6], id, ARGV[a + 1])
  redis.call('ZADD', KEYS[7], ARGV[6], id)
  redis.call('HINCRBY', KEYS[8], ARGV[a], 1)
  ids[d] = id
  a = a + 2
end
local n_park = tonumber(ARGV[a])
a = a + 1
for p = 1, n_park do
  local user, release, reason, n = ARGV[a], now + tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  wait_add_members(KEYS[11], ARGV, a, a + n - 1)
  a = a + n
  -- GT: a new hold may extend a user's wait, never shorten it (it also adds a new user)
  redis.call('ZADD', KEYS[9], 'GT', release, user)
  if reason ~= '' then redis.call('HSET', KEYS[10], user, reason) end
end
for f = 14, #KEYS do redis.call('DEL', KEYS[f]) end
local done = delivered + n_dead
if done > 0 then redis.call('DECRBY', KEYS[3], done) end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[4], 'delivered', delivered)
  redis.call('HSET', KEYS[4], 'last_delivery_ms', now)
  redis.call('INCRBY', KEYS[12], delivered)
  redis.call('PEXPIRE', KEYS[12], 120000)
end
if n_dead > 0 then redis.call('HINCRBY', KEYS[4], 'dead_lettered', n_dead) end
if reqs > 0 then redis.call('HINCRBY', KEYS[4], 'requests', reqs) end
return ids
"""

# KEYS: lease, state; ARGV: the token of a drainer that found its lease lost.
# A lost lease is not a crash: it must not count toward dead-lettering a record as poison.  If a
# newer owner has already counted the claim as recovered from this drainer, that count is taken
# back; if nobody owns the shard yet, the claim is marked as kept, as a clean release would.
LOST_LUA = """
local st = redis.call('HMGET', KEYS[2], 'recovered_from', 'claimer', 'recoveries')
if st[1] == ARGV[1] then
  if tonumber(st[3] or '0') > 0 then redis.call('HINCRBY', KEYS[2], 'recoveries', -1) end
  redis.call('HDEL', KEYS[2], 'recovered_from')
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 and st[2] == ARGV[1] then
  redis.call('HSET', KEYS[2], 'kept', '1')
  return 2
end
return 0
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
    #: Redis's clock when the claim ran (ms).
    now_ms: int
    recoveries: int
    #: Nothing was claimed: ask again this much later, because the shard waits to retry
    #: (``wait_is_retry``) or because a configuration error blocks sending.
    wait_ms: int = 0
    wait_is_retry: bool = False
    #: This claim is the probe of a blocked sender: its answer decides whether sending resumes.
    probe: bool = False
    #: A request size learned from a 413 (0: none learned), and how long ago it was learned.
    learned_request_bytes: int = 0
    learned_age_ms: int = 0
    #: How many users of the shard wait (held, deferred, replayed); 0 spares the drainer a look.
    waiting_users: int = 0


@dataclass
class Block:
    newly_blocked: bool
    probes: int
    next_probe_in_ms: int


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
    #: The user's entries as ``waiting`` members (worker/waiting.py), in any order.
    members: list[bytes]


@dataclass
class Settlement:
    """What one answer changes: records delivered, done or changed in flight, dead-lettered, parked.

    ``trim`` entries at the head of inflight are done; ``replace``, when given, is what inflight
    holds from now on instead (worker/drain.py chooses, see ``inflight_change``).
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


def inflight_change(current: list[bytes], desired: list[bytes]) -> tuple[int, list[bytes] | None]:
    """How a settle turns inflight from ``current`` into ``desired``: (entries dropped at the head,
    None) when ``desired`` is what is left of ``current`` after them, else (0, ``desired``)."""
    done = len(current) - len(desired)
    if done >= 0 and current[done:] == desired:
        return done, None
    return 0, desired


class RedisClock:
    """Redis's clock as last read by a claim, carried forward by this process's monotonic clock.

    Every time a drainer decides on (a record's age, the budget's slot, when a record failed) is
    read from here, so workers and producers with skewed clocks decide alike.
    """

    def __init__(self) -> None:
        self._redis_ms = 0
        self._at = 0.0

    def sync(self, redis_ms: int) -> None:
        self._redis_ms, self._at = redis_ms, time.monotonic()

    def now_ms(self) -> int:
        return self._redis_ms + int((time.monotonic() - self._at) * 1000)


class ShardStore:
    def __init__(self, client: redis.Redis, keys: Keys, lease_ttl_s: float) -> None:
        self._redis = client
        self.keys = keys
        self._ttl_ms = int(lease_ttl_s * 1000)
        self.clock = RedisClock()
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._lost = client.register_script(LOST_LUA)
        self._block = client.register_script(BLOCK_LUA)
        self._unblock = client.register_script(UNBLOCK_LUA)
        self._lower_max_bytes = client.register_script(LOWER_MAX_BYTES_LUA)
        self._probe_now = client.register_script(PROBE_NOW_LUA)
        self._oldest = client.register_script(OLDEST_LUA)

    def acquire(self, shard: int) -> str | None:
        """Take the shard's lease; None when another drainer holds it."""
        token = secrets.token_hex(8)
        k = self.keys.shard(shard)
        with store_errors("acquire lease"):
            ok = self._acquire(keys=[k.lease, k.state], args=[token, self._ttl_ms])
        return token if ok else None

    def renew(self, shard: int, token: str) -> None:
        self._run(self._renew, [self.keys.shard(shard).lease], [token, self._ttl_ms], "renew lease")

    def claim(self, shard: int, token: str, max_entries: int, max_bytes: int) -> Claim:
        """Take what the next request can carry: at most ``max_entries`` and about ``max_bytes``."""
        k = self.keys.shard(shard)
        keys = [k.lease, k.queue, k.inflight, k.state, k.parked, k.parked_why, k.waiting, self.keys.blocked,
                self.keys.meta]  # fmt: skip
        args = [token, max_entries, max_bytes, self._ttl_ms, RELEASED_USERS_PER_CLAIM]
        reply = self._run(self._claim, keys, args, "claim")
        self.clock.sync(int(reply[0]))
        return Claim(
            entries=reply[8:], now_ms=int(reply[0]), recoveries=int(reply[1]), wait_ms=int(reply[2]),
            wait_is_retry=reply[3] == 1, probe=reply[4] == 1, learned_request_bytes=int(reply[5]),
            learned_age_ms=int(reply[6]), waiting_users=int(reply[7]),
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

    def lower_max_request_bytes(self, limit: int, quiet_ms: int) -> int:
        """Lower the request size every worker uses; returns the size in force."""
        with store_errors("lower the request size"):
            current: int = self._lower_max_bytes(keys=[self.keys.meta], args=[limit, quiet_ms])
        return int(current)

    def settle(self, shard: int, token: str, s: Settlement) -> list[str]:
        """Apply one answer's settlement; returns the ids given to its dead letters."""
        k = self.keys.shard(shard)
        keys = [
            k.lease, k.inflight, self.keys.total, self.keys.stats, k.state, self.keys.dlq_entries,
            self.keys.dlq_index, self.keys.dlq_counts, k.parked, k.parked_why, k.waiting,
            self.keys.delivered_in(self.clock.now_ms() // 10_000), k.dlq_seq,
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
        keys += [self.keys.fingerprint(u) for u in {d.user_key for d in s.dead if d.user_key is not None}]
        ids = self._run(self._settle, keys, args, "settle")
        return [i.decode() for i in ids]

    def release(self, shard: int, token: str, *, retry_in_ms: int = 0, wake_in_ms: int = 0, clean: bool = True) -> None:
        """Give the shard back.  With ``retry_in_ms`` the whole shard waits that long (Redis's clock);
        otherwise it is woken as soon as it has work, or when its first parked user is released."""
        k = self.keys.shard(shard)
        keys = [k.lease, k.queue, k.inflight, k.parked, self.keys.wakeups, self.keys.kick, k.state]
        with store_errors("release lease"):
            self._release(keys=keys, args=[token, shard, retry_in_ms, wake_in_ms, 1 if clean else 0])

    def oldest_waiting(self, shard: int, users: list[str]) -> dict[str, int]:
        """For the users among ``users`` that wait: the seq of their oldest waiting update."""
        k = self.keys.shard(shard)
        with store_errors("read waiting users"):
            reply = self._oldest(keys=[k.parked, k.waiting], args=users)
        return {u: int(seq) for u, seq in zip(users, reply, strict=True) if int(seq) >= 0}

    def lost(self, shard: int, token: str) -> None:
        """Say that this drainer lost its lease (it did not crash): no recovery is counted for it."""
        k = self.keys.shard(shard)
        with store_errors("report a lost lease"):
            self._lost(keys=[k.lease, k.state], args=[token])

    def _run(self, script: Any, keys: list[str], args: list[Any], action: str) -> Any:
        try:
            with store_errors(action):
                return script(keys=keys, args=args)
        except StoreError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost(f"{action}: the shard's lease expired and may belong to another drainer") from None
            raise
