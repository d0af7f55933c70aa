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

from producers.contract import entry
from producers.contract.connection import connect, store_errors
from producers.contract.errors import InvalidRecord, QueueFull, QueueMismatch
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.settings import QueueConfig
from producers.record import ValidRecord, validate

#: Entry format version, stored in the meta hash beside the shard count.
LAYOUT_VERSION = "2"


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
        self._enqueue = Script(
            self._redis,
            "producers",
            "enqueue",
            replicas=self.config.min_replicas,
            replica_timeout_ms=self.config.replica_timeout_ms,
        )  # producers/lua/enqueue.lua
        self._shard_keys = [(k.queue, k.seq, k.minutes) for k in map(self.keys.shard, range(self.config.shards))]

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
            result: list[int] = self._enqueue(keys, args, action="enqueue")
        except QueueMismatch as exc:
            raise mismatch(self.config.shards, exc.fields) from None
        return result

    def queued(self) -> int:
        """Records accepted and not yet delivered or dead-lettered."""
        with store_errors("read queued count"):
            return int(self._redis.get(self.keys.total) or 0)


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
