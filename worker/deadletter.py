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
(worker/drain/waiting.py), placed by its ``seq``, and due at once unless the user is held or deferred
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

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, cast

import orjson
import redis

from producers.contract import entry as entries
from producers.contract.connection import connect, store_errors
from producers.contract.entry import Entry
from producers.contract.errors import QueueFull, QueueMismatch
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.producer import LAYOUT_VERSION, mismatch
from worker.drain.settle import DeadLetter

REASONS = ("invalid", "too_large", "expired", "undecodable", "poison")


def dead_letter(
    e: Entry, reason: str, failed_ms: int, *, detail: str = "", status: int | None = None, response: str = ""
) -> DeadLetter:
    """A dead-letter entry for a decoded queue entry; the record is embedded as it was enqueued."""
    doc = {
        "reason": reason,
        "detail": detail,
        "status": status,
        "response": response,  # already an excerpt (worker/drain/outcome.py), with the API key masked
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


@dataclass(frozen=True)
class Selection:
    """Which entries an operation applies to; all criteria must hold."""

    reason: str | None = None
    since_ms: int | None = None
    ids: tuple[str, ...] = ()

    def matches(self, doc: dict[str, Any]) -> bool:
        return self.reason is None or doc.get("reason") == self.reason


class DeadLetterQueue:
    """List, show, export, replay and purge dead-lettered records (the `identify-queue dlq` commands).

    Each shard keeps its own dead letters (keys.py), so every operation touches one shard's keys at
    a time; listing merges the shards' indexes by failure time.
    """

    def __init__(self, config: QueueConfig, client: redis.Redis | None = None, chunk: int = 500) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self._redis = client or connect(config.redis_url)
        self._chunk = chunk
        self._replay = Script(self._redis, "worker", "dlq_replay", replicas=config.min_replicas,
                              replica_timeout_ms=config.replica_timeout_ms)  # worker/lua/dlq_replay.lua  # fmt: skip
        self._purge = Script(self._redis, "worker", "dlq_purge")
        self._wake = Script(self._redis, "producers", "wake")
        self._layout = f"{config.shards}|{LAYOUT_VERSION}"

    def count(self) -> int:
        with store_errors("count dead letters"):
            pipe = self._redis.pipeline(transaction=False)
            for s in range(self.config.shards):
                pipe.hlen(self.keys.shard(s).dlq_entries)
            return sum(int(n) for n in pipe.execute())

    def show(self, entry_id: str) -> dict[str, Any] | None:
        shard = _shard_of_id(entry_id, self.config.shards)
        if shard is None:
            return None
        with store_errors("read dead letter"):
            raw = self._redis.hget(self.keys.shard(shard).dlq_entries, entry_id)
        return _doc(entry_id, raw) if raw else None

    def entries(self, selection: Selection = Selection()) -> Iterator[dict[str, Any]]:
        """Matching entries, oldest failure first (across shards), read a chunk at a time."""
        if selection.ids:
            by_shard: dict[int, list[str]] = {}
            for entry_id in selection.ids:
                shard = _shard_of_id(entry_id, self.config.shards)
                if shard is not None:
                    by_shard.setdefault(shard, []).append(entry_id)
            for shard, ids in sorted(by_shard.items()):
                for start in range(0, len(ids), self._chunk):
                    yield from self._load(shard, ids[start : start + self._chunk], selection)
            return
        streams = [self._shard_entries(s, selection) for s in range(self.config.shards)]
        yield from heapq.merge(*streams, key=lambda d: (d["failed_at_ms"], d["id"]))

    def _shard_entries(self, shard: int, selection: Selection) -> Iterator[dict[str, Any]]:
        low = selection.since_ms if selection.since_ms is not None else "-inf"
        index = self.keys.shard(shard).dlq_index
        offset = 0
        while True:
            with store_errors("list dead letters"):
                found = cast(list[bytes], self._redis.zrangebyscore(index, low, "+inf", start=offset, num=self._chunk))
            if not found:
                return
            offset += len(found)
            yield from self._load(shard, [i.decode() for i in found], selection)

    def _load(self, shard: int, ids: list[str], selection: Selection) -> Iterator[dict[str, Any]]:
        with store_errors("read dead letters"):
            raws = self._redis.hmget(self.keys.shard(shard).dlq_entries, ids)
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
        keys = [k.dlq_entries, k.dlq_index, k.dlq_counts, k.total, k.stats, k.layout, k.waiting, k.parked,
                k.parked_why]  # fmt: skip
        args: list[Any] = [max(1, self.config.max_queued // self.config.shards), self._layout]
        for doc in docs:
            # seq 0 for an entry dead-lettered before entries had one: older than anything queued
            raw = entries.encode(doc["user_key"], orjson.dumps(doc["record"]), doc.get("seq") or 0,
                                 doc["first_enqueued_ms"])  # fmt: skip
            args += [doc["id"], doc["reason"], doc["user_key"], raw]
        try:
            moved, queued = self._replay(keys, args, action="replay dead letters")
        except QueueMismatch as exc:
            raise mismatch(self.config.shards, exc.fields) from None
        if not moved and queued:
            raise QueueFull(int(queued), max(1, self.config.max_queued // self.config.shards), shard=shard)
        if moved:
            self._wake([self.keys.meta, self.keys.wakeups, self.keys.kick], ["LT", shard, 0], action="wake the shard")
        return int(moved)

    def purge(self, selection: Selection) -> int:
        removed = 0
        docs = sorted(self.entries(selection), key=lambda d: _shard_of_id(d["id"], self.config.shards) or 0)
        for shard, group in groupby(docs, key=lambda d: _shard_of_id(d["id"], self.config.shards)):
            if shard is None:
                continue
            of_shard = list(group)
            k = self.keys.shard(shard)
            for start in range(0, len(of_shard), self._chunk):
                args: list[Any] = []
                for doc in of_shard[start : start + self._chunk]:
                    args += [doc["id"], doc["reason"]]
                removed += int(self._purge([k.dlq_entries, k.dlq_index, k.dlq_counts], args,
                                           action="purge dead letters"))  # fmt: skip
        return removed


def _shard_of_id(entry_id: str, shards: int) -> int | None:
    """The shard a dead letter's id (``<shard>-<n>``) names; None for an id of another form."""
    head, dash, _ = entry_id.partition("-")
    if not dash or not head.isdigit() or int(head) >= shards:
        return None
    return int(head)


def _doc(entry_id: str | bytes, raw: bytes | str) -> dict[str, Any]:
    """An entry as the commands show it: its id (the hash field) first, then what the worker wrote."""
    return {"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, **orjson.loads(raw)}
