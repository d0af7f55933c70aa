"""Users whose updates wait: held after a 429, deferred by the hourly budget, or replayed.

The invariant, which every path that makes an update wait keeps:

    Everything of a user that waits is older than everything of that user still in the queue,
    and waits in enqueue order.

"Older" is the entry's per-shard sequence number (``producers/entry.py``), which the enqueue
script gives in the order Redis accepts records; a user always lives in one shard, so ``seq``
orders each user's updates.  Waiting entries live in one sorted set per shard, ``waiting``, every
member at score 0, so the set is ordered by the member's bytes:

    <user key length>:<user key>|<seq, 15 digits>|<entry>

A user's waiting entries are one contiguous run of that order, oldest first, whichever way they
came in.  That is what makes the invariant hold by construction rather than by care:

- from in flight (a 429 holds the user, the budget defers it, or replay brings a dead letter back):
  the entries are older than what the user has in the queue, and take their place by ``seq``, so
  they go ahead of those already waiting that are newer (which is all of them, but for replayed
  ones);
- from the queue (the claim finds an entry of a user that waits): the entry is newer than all the
  user waits with, and its ``seq`` puts it last;
- release (the claim, once the user's time has come) takes the user's oldest waiting entries
  first, at most as many as the next requests can carry; the user stays waiting (and due) until
  its run is empty, so nothing of it in the queue can overtake what still waits.

Each step touches only the entries it moves: O(log n) per entry in a set of n, never a walk over
a user's backlog (a hot user with 100,000 deferred updates costs a claim what its batch costs).

``parked`` (user -> release time, Redis's clock) says when each waiting user may go, and
``parked_why`` why it waits.  A new hold may extend a user's wait, never shorten it.

The Lua functions below are the only code that reads or writes ``waiting``; the claim, settle and
replay scripts include them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import redis

from producers.entry import Entry
from producers.keys import ShardKeys
from producers.redis_conn import store_errors

#: Why a user waits, as ``parked_why`` says.
HELD, DEFERRED, REPLAYED = "held", "deferred", "replayed"

SEQ_DIGITS = 15

#: Lua, included at the top of every script that touches waiting users.
WAITING_LUA = r"""
local function wait_prefix(user)
  return #user .. ':' .. user .. '|'
end
-- An entry's seq (as text) and user key, read from its head; nil for an entry that is not ours.
local function entry_user(raw)
  local seq, klen, pos = string.match(raw, '^2|(%d+)|%d+|%d+|(%d+)|()')
  if not seq then return nil end
  return seq, string.sub(raw, pos, pos + tonumber(klen) - 1)
end
-- Queue an entry among the user's waiting ones, by its seq.
local function wait_add(waiting, user, seq, raw)
  redis.call('ZADD', waiting, 0, wait_prefix(user) .. string.rep('0', 15 - #seq) .. seq .. '|' .. raw)
end
-- Queue members (built by worker/waiting.py) at values[first..last], in slices of one ZADD each.
local function wait_add_members(waiting, values, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + 499, last)
    local pairs_ = {}
    for x = i, j do
      pairs_[#pairs_ + 1] = 0
      pairs_[#pairs_ + 1] = values[x]
    end
    redis.call('ZADD', waiting, unpack(pairs_))
    i = j + 1
  end
end
-- The user waits until release_ms at least (GT: a hold extends a wait, never shortens it).
local function wait_until(parked, why, user, release_ms, reason)
  redis.call('ZADD', parked, 'GT', release_ms, user)
  if reason ~= '' then redis.call('HSET', why, user, reason) end
end
-- Take up to n of a user's waiting entries, oldest first; a user with none left waits no more.
local function wait_take(waiting, parked, why, user, n)
  local prefix = wait_prefix(user)
  local low, high = '[' .. prefix, '[' .. prefix .. '\255'
  local members = redis.call('ZRANGEBYLEX', waiting, low, high, 'LIMIT', 0, n)
  local out = {}
  for i, m in ipairs(members) do out[i] = string.sub(m, #prefix + 17) end
  if #members > 0 then redis.call('ZREMRANGEBYLEX', waiting, '[' .. members[1], '[' .. members[#members]) end
  if #members < n or #redis.call('ZRANGEBYLEX', waiting, low, high, 'LIMIT', 0, 1) == 0 then
    redis.call('ZREM', parked, user)
    redis.call('HDEL', why, user)
  end
  return out
end
"""


# KEYS: parked, waiting; ARGV: user keys.  Returns, per user, the seq of its oldest waiting
# update, or -1 for a user that does not wait.
OLDEST_LUA = (
    WAITING_LUA
    + r"""
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
local out = {}
for i, user in ipairs(ARGV) do
  out[i] = -1
  if scores[i] then
    local prefix = wait_prefix(user)
    local first = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. prefix, '[' .. prefix .. '\255', 'LIMIT', 0, 1)[1]
    if first then out[i] = tonumber(string.sub(first, #prefix + 1, #prefix + 15)) end
  end
end
return out
"""
)


def split(decoded: Sequence[Entry], oldest: Mapping[str, int]) -> tuple[list[Entry], dict[str, list[bytes]]]:
    """What of a claim may be sent now, and what must wait, as members by user.

    ``oldest`` maps each waiting user to the seq of its oldest waiting update.  An entry goes now
    if its user does not wait or it is older than everything its user has waiting.
    """
    send: list[Entry] = []
    back: dict[str, list[bytes]] = {}
    for e in decoded:
        first = oldest.get(e.user_key)
        if first is None or e.seq < first:
            send.append(e)
        else:
            back.setdefault(e.user_key, []).append(member(e))
    return send, back


def prefix(user_key: str) -> bytes:
    key = user_key.encode()
    return b"%d:%b|" % (len(key), key)


def member(e: Entry) -> bytes:
    """The ``waiting`` member for an entry: its user's run, then its place in it."""
    return b"%b%0*d|%b" % (prefix(e.user_key), SEQ_DIGITS, e.seq, e.raw)


def entry_of(member_bytes: bytes, user_key: str) -> bytes:
    return member_bytes[len(prefix(user_key)) + SEQ_DIGITS + 1 :]


def members(entries: Sequence[Entry]) -> list[bytes]:
    return [member(e) for e in entries]


def waiting_count(client: redis.Redis, keys: ShardKeys, users: Sequence[str]) -> list[int]:
    """How many updates each user has waiting (for `status`)."""
    with store_errors("count waiting updates"):
        pipe = client.pipeline(transaction=False)
        for user in users:
            p = prefix(user)
            pipe.zlexcount(keys.waiting, b"[" + p, b"[" + p + b"\xff")
        return [int(n) for n in pipe.execute()]


def waiting_entries(client: redis.Redis, keys: ShardKeys, user_key: str, chunk: int = 1000) -> Iterator[bytes]:
    """A user's waiting entries, oldest first, read a chunk at a time."""
    p = prefix(user_key)
    low, high = b"[" + p, b"[" + p + b"\xff"
    offset = 0
    while True:
        with store_errors("read waiting updates"):
            found = cast(list[bytes], client.zrangebylex(keys.waiting, low, high, start=offset, num=chunk))
        yield from (entry_of(m, user_key) for m in found)
        if len(found) < chunk:
            return
        offset += len(found)
