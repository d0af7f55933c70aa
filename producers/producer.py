"""IdentifyProducer: validate identifications and append them to their user's shard in Redis.

A call returns only after Redis has the records (the enqueue script has run).  Nothing invalid is
written: records are validated in this process first.  The cap on queued records
(``IDENTIFY_MAX_QUEUED``) is split evenly over the shards and checked in the script that appends,
per shard, so concurrent producers cannot overshoot it (on one Redis and on a Redis Cluster
alike; a very hot shard may be refused before the whole queue reaches the cap).  Producers never
import Celery; a worker finds new records through the ``wakeups`` set (enqueue.lua, wake.lua).

The same script serves the bulk import (``importer/``): ``enqueue_chunk`` can also record an
import job's progress in each shard, and compare and store per-user fingerprints to skip unchanged
records, in the call that appends, so neither can disagree with what was appended.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from producers.contract import entry
from producers.contract.connection import connect, store_errors
from producers.contract.errors import ImportAhead, InvalidRecord, QueueFull, QueueMismatch, StoreError
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.contract.topology import Call, is_cluster, run_together
from producers.grouping import GroupCommit, Outcomes
from producers.record import ValidRecord, validate

#: Entry format version, stored in the meta hash beside the shard count.
LAYOUT_VERSION = "2"


@dataclass(frozen=True)
class JobProgress:
    """Where an import job stands after a chunk; written by the same script call that appends it.

    ``line`` and ``offset`` are the lines and bytes of the input consumed once the chunk is in;
    ``rejected`` is the number of the chunk's lines that were refused (added to the job's count).
    ``run`` must be the token the job's progress holds: a run another one has taken over stops.
    ``ttl_ms``: the progress expires this long after its last update.  ``start``: the line the
    chunk starts after (the previous chunk's ``line``).
    """

    job: str
    run: str
    line: int
    offset: int
    rejected: int = 0
    finished: bool = False
    ttl_ms: int = 30 * 86_400_000  # import_job.JOB_TTL_MS, passed by the importer
    start: int = 0


@dataclass(frozen=True)
class ChunkResult:
    """What an enqueue did: records appended, skipped as unchanged, and left out because their
    shard already had their line of the import job (an earlier run enqueued them)."""

    enqueued: int
    skipped: int
    already: int = 0


@dataclass
class EnqueueReport:
    """What ``identify_many`` did: how many records were enqueued, and which were refused, why."""

    enqueued: int = 0
    rejected: list[InvalidRecord] = field(default_factory=list)


@dataclass(frozen=True)
class EnqueuePlan:
    """The script calls that append a chunk: one per part (all the shards on one Redis, one shard
    on a Redis Cluster).  On one Redis the call wakes the shards' drains too."""

    calls: list[Call]
    #: Per part, the indices of the records it carries.
    parts: list[list[int]]
    #: The shards the chunk writes to (on a Redis Cluster, the order of its parts).
    shards: list[str]


class ProducerCore:
    """What IdentifyProducer and AsyncIdentifyProducer share: validation, the script calls an
    enqueue makes and what their replies mean.  Only the round trips differ (sync or asyncio)."""

    def __init__(self, config: QueueConfig | None, sync_client: redis.Redis | None, *, cluster: bool) -> None:
        """``sync_client``: the blocking client, which runs the scripts' own calls (None: asyncio)."""
        self.config = config or QueueConfig()
        self.keys = Keys(self.config.namespace)
        self._cluster = cluster
        self._enqueue = Script(sync_client, "producers", "enqueue")  # producers/lua/enqueue.lua
        self._wake_script = Script(sync_client, "producers", "wake")
        self._layout = f"{self.config.shards}|{LAYOUT_VERSION}"
        self._layout_checked = False
        self._layout_recorded = False
        # built once: building a shard's key names per record cost more than the rest of a call
        self._shard_keys = [self.keys.shard(s) for s in range(self.config.shards)]
        self._totals = [k.total for k in self._shard_keys]

    def validate(self, record: Any) -> ValidRecord:
        return validate(record, min_id_length=self.config.min_id_length, max_record_bytes=self.config.max_record_bytes)

    def _merged(self, record: Mapping[str, Any] | None, fields: dict[str, Any]) -> ValidRecord:
        return self.validate({**(record or {}), **fields})

    def _chunks(
        self, records: Iterable[Mapping[str, Any]], chunk_size: int, errors: str, report: EnqueueReport
    ) -> Iterator[list[ValidRecord]]:
        """The valid records in chunks to enqueue; with ``errors="raise"`` the chunk before an
        invalid record is given out first, then its InvalidRecord raised."""
        chunk: list[ValidRecord] = []
        for index, record in enumerate(records):
            try:
                chunk.append(self.validate(record))
            except InvalidRecord as exc:
                if errors == "raise":
                    if chunk:
                        yield chunk
                    raise exc.at(index) from None
                report.rejected.append(exc.at(index))
                continue
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _plan(
        self,
        records: Sequence[ValidRecord],
        fingerprints: Sequence[bytes] | None = None,
        fingerprint_ttl_ms: int = 0,
        progress: JobProgress | None = None,
        lines: Sequence[int] | None = None,
    ) -> EnqueuePlan:
        if fingerprints is not None and (len(fingerprints) != len(records) or fingerprint_ttl_ms <= 0):
            raise ValueError("fingerprints need one value per record and a positive fingerprint_ttl_ms")
        groups: dict[int, list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            groups[entry.shard_of(rec.user_key, self.config.shards)].append(i)
        parts = [list(groups.items())] if not self._cluster else [[item] for item in groups.items()]
        calls = [self._enqueue_call(part, records, fingerprints, fingerprint_ttl_ms, progress=progress, lines=lines)
                 for part in parts]  # fmt: skip
        woken = [str(shard) for shard in groups]
        indices = [[i for _, part_indices in part for i in part_indices] for part in parts]
        return EnqueuePlan(calls, indices, woken)

    def _enqueue_call(
        self, part: list[tuple[int, list[int]]], records: Sequence[ValidRecord], fingerprints: Sequence[bytes] | None,
        fingerprint_ttl_ms: int, *, progress: JobProgress | None, lines: Sequence[int] | None,
    ) -> Call:  # fmt: skip
        keys: list[str] = []
        args: list[Any] = [self._layout, self._cap(), len(part)]
        args.append(fingerprint_ttl_ms if fingerprints is not None else 0)
        if progress is None:
            args += ["", 0, 0, 0]
        else:
            args += [progress.run, progress.ttl_ms, progress.line, progress.offset]
        # One Redis: the whole queue's cap, and the script wakes the drains itself (a Redis Cluster
        # keeps the wake-ups in another slot: _wake_done wakes them after)
        whole = not self._cluster
        args += [self.config.shards, 1] if whole else [0, 0]
        # a job's lines, when sent: without them, the chunk's start stands for them (IMPORT_AHEAD)
        record_lines = lines if progress is not None else None
        args.append("" if record_lines is not None or progress is None else progress.start)
        for shard, indices in part:
            k = self._shard_keys[shard]
            keys += [k.layout, k.queue, k.seq, k.total, k.minutes]
            if progress is not None:
                keys.append(k.import_progress(progress.job))
            if fingerprints is not None:
                keys += [k.fingerprint(records[i].user_key) for i in indices]
            args += [shard, len(indices)]
            if record_lines is None and fingerprints is None:
                args += [entry.tail(records[i].user_key, records[i].data) for i in indices]
                continue
            for i in indices:
                if record_lines is not None:
                    args.append(record_lines[i])
                if fingerprints is not None:
                    args.append(fingerprints[i])
                args.append(entry.tail(records[i].user_key, records[i].data))
        if whole:
            keys += [*self._totals, self.keys.meta, self.keys.wakeups, self.keys.kick]
        return Call(self._enqueue, keys, args)

    def _cap(self) -> int:
        """IDENTIFY_MAX_QUEUED as one call can check it: the whole queue's on one Redis; on a Redis
        Cluster, where a call sees one shard, each shard's even share (rounded up)."""
        if not self._cluster:
            return self.config.max_queued
        return -(-self.config.max_queued // self.config.shards)

    def _wake_call(self, shards: list[str]) -> Call:
        args: list[Any] = ["LT"]
        for shard in shards:
            args += [shard, "linger"]
        return Call(self._wake_script, [self.keys.meta, self.keys.wakeups, self.keys.kick], args)

    def _result(self, plan: EnqueuePlan, replies: list[Any]) -> ChunkResult:
        """What the calls of a chunk did; a part refused raises, telling what the written parts did
        and which records they did not carry (``left``), so that only those are sent again."""
        enqueued = skipped = already = 0
        full: QueueFull | None = None
        failed: Exception | None = None
        left: list[int] = []
        for indices, reply in zip(plan.parts, replies, strict=True):
            if isinstance(reply, QueueMismatch):
                raise mismatch(self.config.shards, reply.fields)
            if isinstance(reply, Exception):
                failed = failed or reply
                left += indices
                continue
            if int(reply[0]) == 0:
                shard = int(reply[1])
                full = QueueFull(int(reply[2]), self._cap(), shard=shard if shard >= 0 else None)
                left += indices
                continue
            enqueued += int(reply[1])
            skipped += int(reply[2])
            already += int(reply[3])
        written = len(left) < sum(len(indices) for indices in plan.parts)
        if isinstance(failed, ImportAhead) and written:
            failed.enqueued, failed.skipped, failed.already, failed.left = enqueued, skipped, already, sorted(left)
        if failed is not None:
            raise failed
        if full is not None:
            raise QueueFull(full.queued, full.cap, enqueued, skipped=skipped, already=already, shard=full.shard,
                            left=sorted(left) if written else None)  # fmt: skip
        return ChunkResult(enqueued, skipped, already)

    def group_outcomes(self, plan: EnqueuePlan, replies: list[Any], count: int) -> Outcomes:
        """Each grouped record's outcome: None when Redis holds it, else the error its call raises.
        A part refused (QueueFull, a mismatch, its node unreachable) fails its own records only."""
        outcomes: Outcomes = [None] * count
        for indices, reply in zip(plan.parts, replies, strict=True):
            error: BaseException | None = None
            if isinstance(reply, QueueMismatch):
                error = mismatch(self.config.shards, reply.fields)
            elif isinstance(reply, Exception):
                error = reply
            elif int(reply[0]) == 0:
                shard = int(reply[1])
                error = QueueFull(int(reply[2]), self._cap(), shard=shard if shard >= 0 else None)
            for i in indices:
                outcomes[i] = error
        return outcomes

    def _layout_fields(self) -> list[tuple[str, str]]:
        return [("shards", str(self.config.shards)), ("layout", LAYOUT_VERSION)]

    def _layout_verdict(self, stored: list[Any]) -> None:
        """Refuse a queue laid out otherwise (from ``meta``'s shards and layout, as stored)."""
        shards, layout = (v.decode() if isinstance(v, bytes) else v for v in stored)
        if shards is not None and (shards != str(self.config.shards) or layout != LAYOUT_VERSION):
            raise mismatch(self.config.shards, {"shards": shards, "layout": layout or ""})


class IdentifyProducer(ProducerCore):
    """Enqueue identifications for delivery to Amplitude's Identify API.

    >>> producer = IdentifyProducer.from_env()
    >>> producer.identify(user_id="user-42", user_properties={"$set": {"plan": "pro"}})

    ``identify`` is safe to call from many threads at once: calls that arrive while an enqueue is
    under way go together in the next one (IDENTIFY_GROUP_COMMIT, producers/grouping.py).
    """

    def __init__(self, config: QueueConfig | None = None, *, client: redis.Redis | None = None) -> None:
        config = config or QueueConfig()
        self._redis = client or connect(config.redis_url)
        super().__init__(config, self._redis, cluster=is_cluster(self._redis))
        self._group: GroupCommit[ValidRecord] = GroupCommit(self._enqueue_group)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IdentifyProducer:
        return cls(QueueConfig.from_env(env))

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> IdentifyProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def identify(self, record: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """Validate and enqueue one identification, given as a mapping, keywords, or both."""
        valid = self._merged(record, fields)
        if self.config.group_commit:
            self._group.submit(valid)
        else:
            self.enqueue_valid([valid])

    @property
    def groups(self) -> int:
        """Grouped enqueues run so far by ``identify``."""
        return self._group.groups

    def _enqueue_group(self, records: list[ValidRecord]) -> Outcomes:
        try:
            self._check_layout()
            plan = self._plan(records)
            replies = self._run(plan)
            self._wake_done(plan, replies)
        except Exception as exc:
            return [exc] * len(records)
        outcomes = self.group_outcomes(plan, replies, len(records))
        if None in outcomes:
            self._record_layout()
        return outcomes

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
        the chunk that would pass the cap was not enqueued (on a Redis Cluster, its shards' parts
        that had room were); ``QueueFull.enqueued`` counts what was.
        """
        report = EnqueueReport()
        for chunk in self._chunks(records, chunk_size, errors, report):
            try:
                report.enqueued += self.enqueue_valid(chunk)
            except QueueFull as full:
                raise QueueFull(full.queued, full.cap, report.enqueued + full.enqueued, shard=full.shard) from None
        return report

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
        lines: Sequence[int] | None = None,
    ) -> ChunkResult:
        """Append records, with their users' fingerprints and an import job's progress, and wake the
        shards' drains (producers/lua/enqueue.lua, wake.lua).

        With ``fingerprints`` (one per record, aligned), a record whose fingerprint equals its
        user's stored one is skipped; every appended record stores its own (``b""``: the record
        must never be skipped, and clears its user's).  With ``progress``, ``lines`` gives each
        record's line, and a shard that already has a line of the job leaves it out; without
        ``lines``, a shard that has a line past ``progress.start`` refuses the call (ImportAhead):
        the lines are worth sending only where a shard may have some of them.

        On one Redis the chunk is one script call: everything is written or nothing (QueueFull leaves
        the records, the fingerprints and the progress as they were).  On a Redis Cluster it is one
        call per shard, run in parallel across the nodes: each shard's part is whole or nothing, and
        QueueFull or ImportAhead may leave other shards' parts written: the error says what they
        did and which records they did not carry (``left``), the only ones to send again.
        """
        plan = self._plan(records, fingerprints, fingerprint_ttl_ms, progress, lines)
        self._check_layout()
        replies = self._run(plan)
        self._wake_done(plan, replies)
        result = self._result(plan, replies)
        if result.enqueued:
            self._record_layout()
        return result

    def _run(self, plan: EnqueuePlan) -> list[Any]:
        return run_together(self._redis, plan.calls, replicas=self.config.min_replicas,
                            replica_timeout_ms=self.config.replica_timeout_ms, action="enqueue")  # fmt: skip

    def _wake_done(self, plan: EnqueuePlan, replies: list[Any]) -> None:
        """On a Redis Cluster, wake the drains of the shards whose part was written (the wake-up's
        keys are in another slot, so it cannot go in the parts' round trips)."""
        if not self._cluster or not plan.calls:
            return
        # on a cluster each part is one shard, in the order of plan.shards
        done = [shard for shard, reply in zip(plan.shards, replies, strict=True)
                if not isinstance(reply, Exception) and int(reply[0]) == 1]  # fmt: skip
        if done:
            self._wake_script([self.keys.meta, self.keys.wakeups, self.keys.kick], self._wake_call(done).args,
                              action="wake the drains")  # fmt: skip

    def _check_layout(self) -> None:
        """Refuse a queue laid out otherwise, once per producer: every shard script checks its own
        shard's layout too, but a producer with another shard count may write to shards the queue
        never had, so the global layout is read first."""
        if self._layout_checked:
            return
        with store_errors("read the queue layout"):
            stored = self._redis.hmget(self.keys.meta, ["shards", "layout"])
        self._layout_verdict(stored)
        self._layout_checked = True

    def _record_layout(self) -> None:
        """The first producer or worker of a queue records its layout, once it has written to it
        (a refused enqueue writes nothing); everyone after is checked against it.  The records are
        in Redis by then: a failure here is tried again at the next enqueue, never the caller's."""
        if self._layout_recorded:
            return
        with contextlib.suppress(StoreError), store_errors("record the queue layout"):
            pipe = self._redis.pipeline(transaction=False)
            for field, value in self._layout_fields():
                pipe.hsetnx(self.keys.meta, field, value)
            pipe.execute()
            self._layout_recorded = True

    def queued(self) -> int:
        """Records accepted and not yet delivered or dead-lettered."""
        with store_errors("read queued count"):
            pipe = self._redis.pipeline(transaction=False)
            for s in range(self.config.shards):
                pipe.get(self.keys.shard(s).total)
            return sum(int(v or 0) for v in pipe.execute())


def mismatch(shards: int, stored: dict[str, str]) -> QueueMismatch:
    """The error for a queue laid out otherwise than this process's settings, naming both."""
    layout = stored.get("layout", LAYOUT_VERSION)
    if stored.get("shards", str(shards)) != str(shards):
        return QueueMismatch(
            f"IDENTIFY_SHARDS is {shards}, but the queue in Redis was created with {stored['shards']} shards; "
            "use the same IDENTIFY_SHARDS for every producer and worker",
            stored,
        )
    return QueueMismatch(
        f"the queue in Redis has entry format {layout}, this version writes {LAYOUT_VERSION}: drain it with the "
        "version that wrote it (or use another IDENTIFY_NAMESPACE) before switching",
        stored,
    )
