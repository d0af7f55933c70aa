"""Users whose updates wait: held after a 429, deferred by the hourly budget, or replayed.

The invariant, which every path that makes an update wait keeps:

    Everything of a user that waits is older than everything of that user still in the queue,
    and waits in enqueue order.

"Older" is the entry's per-shard sequence number (``producers/contract/entry.py``), which the enqueue
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

worker/lua/lib/waiting.lua is the only code that writes ``waiting``; the claim, settle and replay
scripts use it (``--! uses: waiting``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import redis

from producers.contract.connection import store_errors
from producers.contract.entry import Entry
from producers.contract.keys import Keys, ShardKeys
from producers.contract.scripts import Script

#: Why a user waits, as ``parked_why`` says.
HELD, DEFERRED, REPLAYED = "held", "deferred", "replayed"

SEQ_DIGITS = 15


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


class WaitingUsers:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._client = client
        self._oldest = Script(client, "worker", "waiting_oldest")

    def oldest(self, shard: int, users: list[str], waiting: int | None = None) -> dict[str, int]:
        """For the users among ``users`` that wait: the seq of their oldest waiting update.

        ``waiting``: how many users of the shard wait, as the claim saw it.  When that is no more
        than ``users``, the waiting users are read first (at most one more than ``users``, so the
        read stays bounded by the claim) and only the claim's users among them are asked about:
        sending Redis every user of a claim cost the drainer more than the lookup, and one hot
        user's backlog made everybody else's drain a fifth slower (bench/backlog.py).
        """
        k = self.keys.shard(shard)
        if waiting is not None and waiting <= len(users):
            with store_errors("read waiting users"):
                parked = cast(list[bytes], self._client.zrange(k.parked, 0, len(users)))
            if len(parked) <= len(users):  # else more wait than the claim has users: ask about each
                names = {p.decode() for p in parked}
                users = [u for u in users if u in names]
                if not users:
                    return {}
        reply = self._oldest([k.parked, k.waiting], users, action="read waiting users")
        return {users[int(reply[i])]: int(reply[i + 1]) for i in range(0, len(reply), 2)}


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
