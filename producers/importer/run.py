"""Bulk import: stream a file of identifications into the queue, resumably, in constant memory.

    from producers import IdentifyProducer
    from producers.importer.run import Importer, ImportOptions

    with IdentifyProducer.from_env() as producer:
        report = Importer(producer, ImportOptions(skip_unchanged=True)).run("users.csv.gz")

The input (``source.py``: a file, gzip by its magic bytes, or stdin) is read a line at a time and
parsed (``parse.py``: JSON Lines, or CSV by ``csv_columns.py``'s rules); every ``chunk_size``
lines, the chunk's valid records go to Redis in one enqueue script call that also records the job's
position after the chunk (``job.py``) and, with ``skip_unchanged``, leaves out records equal to
their user's last one (``fingerprint.py``).  A chunk commits on a thread of its own while the next
is read and parsed, one chunk at a time, in input order: nothing but two chunks is held.

- Exactly once across interruptions: the position is written by the same atomic script call as
  the chunk, so a run killed at any moment has enqueued precisely the lines its recorded position
  covers, and ``resume`` continues from there.
- Backpressure: when the queue is at its cap (QueueFull) the same chunk is retried after a
  capped, doubling wait (``full_wait_s``) until the workers make room; the import never fails for it.
- Rejected lines do not stop the import: each is reported (stderr, and the rejects file) with its
  line number as its chunk commits, and counted in the job's progress.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from producers.contract.errors import ConfigError, IdentifyQueueError, ImportAhead, QueueFull
from producers.importer.job import JOB_TTL_MS, Action, JobState, JobStore, default_job_name, identity
from producers.importer.options import ImportOptions, format_of
from producers.importer.parse import Good, Item, Rejected, csv_items, csv_plan, jsonl_items
from producers.importer.report import Display, QuietDisplay, RejectsFile, Snapshot
from producers.importer.source import LineSource, SourceInfo, describe_source
from producers.producer import IdentifyProducer, JobProgress
from producers.record import ValidRecord

__all__ = ["ImportOptions", "ImportReport", "Importer", "full_wait_s"]

FULL_WAIT_BASE_S = 0.1
FULL_WAIT_CAP_S = 5.0
#: While the queue stays full, say so again at most this often.
FULL_NOTE_EVERY_S = 30.0
#: The interpreter's switch interval while a run reads (see ``_Run.go``).
SWITCH_INTERVAL_S = 0.0005


def check_writable(path: str | None, flag: str) -> None:
    """ConfigError naming ``flag`` when ``path`` could not be created or written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{flag}: {path} is a directory")
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag}: cannot write {path}: no folder {folder}")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise ConfigError(f"{flag}: cannot write {path}: permission denied")


def full_wait_s(attempt: int) -> float:
    """Seconds to wait before retrying a chunk the queue refused for the ``attempt``-th time (0-based)."""
    return float(min(FULL_WAIT_CAP_S, FULL_WAIT_BASE_S * 2 ** min(attempt, 16)))


@dataclass
class ImportReport:
    """The job's counts (earlier runs of a resumed job included) and this run's share."""

    job: str | None
    lines: int = 0
    enqueued: int = 0
    rejected: int = 0
    skipped: int = 0
    #: The line this run started after (0: from the beginning).
    resumed_from: int = 0
    lines_this_run: int = 0
    elapsed_s: float = 0.0
    #: False only when the job had finished before and ``resume`` found nothing to do.
    ran: bool = True

    def snapshot(self, consumed: int = 0, consumed_at_start: int = 0, total: int | None = None) -> Snapshot:
        return Snapshot(self.lines, self.enqueued, self.rejected, self.skipped, self.lines_this_run,
                        self.elapsed_s, consumed, consumed_at_start, total)  # fmt: skip


class Importer:
    def __init__(self, producer: IdentifyProducer, options: ImportOptions | None = None, *,
                 display: Display | None = None, stdin: IO[bytes] | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """``sleep``: how a chunk the queue refused waits before it is tried again; by default a wait
        that Ctrl-C ends."""
        self.producer = producer
        self.options = options or ImportOptions()
        self.display = display or QuietDisplay(sys.stderr)
        self._stdin = stdin
        self._sleep = sleep
        self._clock = clock
        self._jobs = JobStore(producer.client, producer.keys, producer.config.shards)
        #: The job of the current run, once known (None: stdin without one).
        self.job: str | None = None
        config = producer.config
        # A chunk larger than the cap could never fit, however long the import waited.
        self._chunk_size = max(1, min(self.options.chunk_size, config.max_queued))
        self._limits = {"min_id_length": config.min_id_length, "max_record_bytes": config.max_record_bytes}

    def run(self, path: str) -> ImportReport:
        """Import ``path`` ("-": stdin); the report holds the job's counts.  Raises ConfigError,
        ImportJobError, SourceError, StoreError, QueueMismatch (see ``producers/contract/errors.py``).

        Everything that can be judged without the job's record (the flags, the input, a CSV header
        against ``--map``/``--type``/``--ignore``) is judged before the record is read or changed:
        a mistyped flag must not start over, nor mark interrupted, a job it never ran.
        """
        started = self._clock()
        info = describe_source(path)
        fmt = format_of(path, self.options.format)
        job = self.job = self.options.job or default_job_name(info)
        check_writable(self.options.rejects, "--rejects")
        with LineSource(info, stdin=self._stdin) as source:
            if fmt == "csv":
                csv_plan(source, self.options.csv)
            return self._run_job(source, info, fmt, job, started)

    def _run_job(self, source: LineSource, info: SourceInfo, fmt: str, job: str | None,
                 started: float) -> ImportReport:  # fmt: skip
        stored: JobState | None = None
        token = ""
        fresh = False
        if job is None:
            self.display.note("reading stdin without --job: progress is not recorded, so it cannot be resumed")
        else:
            decision, stored, token = self._jobs.begin(job, identity(info, fmt), resume=self.options.resume,
                                                       restart=self.options.restart)  # fmt: skip
            fresh = decision.action is Action.START
            if decision.note:
                self.display.note(decision.note)
            if decision.action is Action.DONE:
                assert stored is not None
                return ImportReport(job, stored.line, stored.enqueued, stored.rejected, stored.skipped,
                                    resumed_from=stored.line, ran=False)  # fmt: skip
        report = ImportReport(job)
        if stored is not None:
            report = ImportReport(job, stored.line, stored.enqueued, stored.rejected, stored.skipped, stored.line)
        run: _Run | None = None
        try:
            rejects = self._open_rejects(report.resumed_from if stored is not None else None)
            try:
                if stored is not None:
                    source.go_to(stored.line, stored.offset)
                run = _Run(self, source, info, report, token=token, rejects=rejects, started=started)
                run.go(self._items(source, fmt))
            finally:
                if rejects is not None:
                    rejects.close()
        except BaseException:
            # Stopped before its first chunk (an unreadable line, Ctrl-C at once): nothing was
            # imported, so a fresh job must not look interrupted to the next run, which would then
            # refuse to start without --resume.
            if job is not None and fresh and (run is None or not run.committed):
                with contextlib.suppress(IdentifyQueueError):
                    self._jobs.withdraw(job, token)
            raise
        return report

    def recorded(self) -> JobState | None:
        """The job's progress as Redis holds it (after an interruption: where --resume goes on)."""
        return None if self.job is None else self._jobs.read(self.job)

    def _open_rejects(self, resume_after: int | None) -> RejectsFile | None:
        if not self.options.rejects:
            return None
        try:
            return RejectsFile(self.options.rejects, resume_after=resume_after)
        except OSError as exc:
            raise ConfigError(f"--rejects: cannot write {self.options.rejects}: {exc.strerror or exc}") from None

    def _items(self, source: LineSource, fmt: str) -> Iterator[Item]:
        if fmt == "csv":
            return csv_items(source, self.options.csv, skip_unchanged=self.options.skip_unchanged, **self._limits)
        return jsonl_items(source, skip_unchanged=self.options.skip_unchanged, **self._limits)


@dataclass(frozen=True)
class _Chunk:
    """A chunk as the reading cut it, with all its commit needs.

    The source's position is taken when the chunk is cut: by the time the chunk commits, the
    reading has moved on into the next one.
    """

    records: list[ValidRecord]
    #: Each record's line: a shard leaves out the lines an earlier run of the job gave it.  Sent only
    #: when a shard has a line past ``start`` (IMPORT_AHEAD): after an interruption.
    lines: list[int]
    fingerprints: list[bytes] | None
    #: The chunk's rejected lines, in input order; told and written when the chunk commits, by the
    #: thread that writes the progress too (the display is not shared between threads).
    rejections: list[Rejected]
    #: The line the chunk starts after.
    start: int
    #: Lines and bytes (uncompressed) of input consumed once the chunk is in; bytes as stored, for progress.
    line: int
    offset: int
    consumed: int
    finished: bool


class _Stopped(Exception):
    """Ctrl-C while a chunk waited for room in the queue: nothing of it was written."""


class _Run:
    """One pass over the input: chunks, commits with the job's position, waits while the queue is full.

    A chunk commits on a thread of its own while this one reads and parses the next: a commit
    spends much of its time waiting for Redis, which runs on another core, and parsing is most of
    an import's work.  One chunk at most is in flight, and the next is handed over only once it
    has committed, so chunks reach Redis in input order: each user's order and the job's resume
    position depend on it.  A commit's error is raised here when the next chunk is handed over
    (at most one chunk of reading later), or at the end of the input.
    """

    def __init__(self, importer: Importer, source: LineSource, info: SourceInfo, report: ImportReport, *,
                 token: str, rejects: RejectsFile | None, started: float) -> None:  # fmt: skip
        self.importer = importer
        self.producer = importer.producer
        self.display = importer.display
        self.options = importer.options
        self.source = source
        self.info = info
        self.report = report
        self.token = token
        self.rejects = rejects
        self.started = started
        self.first_line = report.lines
        #: Where the next chunk starts: after the line the last one was cut at.
        self.cut_at = source.line
        self.consumed_at_start = source.consumed()
        self.display.start(info.size, self.consumed_at_start)
        #: Whether a chunk of this run reached Redis (then the job's record holds where it stopped).
        self.committed = False
        self.ttl_ms = int(self.options.fingerprint_ttl_s * 1000)
        #: The chunk handed over to commit, until its outcome has been taken.
        self.pending: Future[None] | None = None
        #: Set as the reading ends: a chunk waiting for room in the queue (after Ctrl-C) stops waiting.
        self.stopping = threading.Event()
        self.pause: Callable[[float], object] = importer._sleep or self.stopping.wait

    def go(self, items: Iterator[Item]) -> None:
        records: list[ValidRecord] = []
        lines: list[int] = []
        fingerprints: list[bytes] | None = [] if self.options.skip_unchanged else None
        rejections: list[Rejected] = []
        size = self.importer._chunk_size
        source = self.source
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identify-queue-import")
        # This thread holds the GIL while it parses; the committing thread needs it back after each of
        # its waits for Redis (the send, the reply, the job's advance), and CPython takes it from a busy
        # thread only after the switch interval: 5 ms by default, about a chunk's whole round trip,
        # which the commit would then spend waiting for this thread (bench.importer gained nothing
        # from the overlap at 5 ms, and about the same at anything from 0.2 to 2 ms).  Shorter for
        # the run (the setting is the process's), it costs nothing while only one thread runs.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
        try:
            for item in items:
                if type(item) is Good:
                    records.append(item.record)
                    lines.append(source.line)  # the source stands right after the record
                    if fingerprints is not None:
                        fingerprints.append(item.fingerprint or b"")
                else:
                    assert type(item) is Rejected
                    rejections.append(item)
                if len(records) + len(rejections) >= size:
                    self.hand_over(pool, self.cut(records, lines, fingerprints, rejections, finished=False))
                    records, lines, rejections = [], [], []
                    fingerprints = [] if fingerprints is not None else None
            self.hand_over(pool, self.cut(records, lines, fingerprints, rejections, finished=True))
            self.wait()
        except Exception:
            # The reading failed after the chunk in flight was cut: that chunk commits first, as it
            # did before the next one was read, and its own error, if it has one, is the one raised.
            self.wait()
            raise
        finally:
            sys.setswitchinterval(interval)
            # No commit goes on once run() has ended, so the job's recorded position is final when
            # the caller reads it (the --resume command after Ctrl-C): after Ctrl-C a chunk already
            # handed over commits, unless it waits for room in the queue, which it stops doing.
            self.stopping.set()
            pool.shutdown()

    def cut(self, records: list[ValidRecord], lines: list[int], fingerprints: list[bytes] | None,
            rejections: list[Rejected], *, finished: bool) -> _Chunk:  # fmt: skip
        source = self.source
        start, self.cut_at = self.cut_at, source.line
        return _Chunk(records, lines, fingerprints, rejections, start, source.line, source.offset, source.consumed(),
                      finished)  # fmt: skip

    def hand_over(self, pool: ThreadPoolExecutor, chunk: _Chunk) -> None:
        """Commit ``chunk`` on the pool's thread, once the chunk before it has committed."""
        self.wait()
        self.pending = pool.submit(self.commit, chunk)

    def wait(self) -> None:
        """Wait for the chunk in flight to commit; its error, if it failed, is raised here."""
        pending = self.pending
        if pending is None:
            return
        try:
            pending.result()
        finally:
            if pending.done():  # not when Ctrl-C came first: go() sees to the chunk then
                self.pending = None

    def commit(self, chunk: _Chunk) -> None:
        """Tell and write the chunk's rejections, enqueue its records (each shard records the chunk's
        end with them), then the job's position after it; wait while the queue is full."""
        for item in chunk.rejections:
            self.reject(item)
        if self.rejects is not None:
            # Before the chunk's position, so a crash cannot lose a rejection.  Only this thread writes
            # the file, a chunk at a time in order: the file never holds a line past the chunk being
            # committed, and a resume drops those past the recorded position (RejectsFile).
            self.rejects.flush()
        report = self.report
        rejected = len(chunk.rejections)
        progress = None
        if report.job is not None:
            progress = JobProgress(report.job, self.token, chunk.line, chunk.offset, rejected, chunk.finished,
                                   JOB_TTL_MS, chunk.start)  # fmt: skip
        enqueued = skipped = 0
        self.committed = True  # from here on Redis may hold part of the chunk
        if chunk.records:
            enqueued, skipped = self.enqueue_waiting(chunk, progress)
        if report.job is not None:
            counts = {"enqueued": enqueued, "skipped": skipped, "rejected": rejected}
            self.importer._jobs.advance(report.job, self.token, line=chunk.line, offset=chunk.offset,
                                        finished=chunk.finished, **counts)  # fmt: skip
        report.lines = chunk.line
        report.enqueued += enqueued
        report.skipped += skipped
        report.rejected += rejected
        report.lines_this_run = chunk.line - self.first_line
        report.elapsed_s = self.importer._clock() - self.started
        self.display.update(report.snapshot(chunk.consumed, self.consumed_at_start, self.info.size))

    def reject(self, item: Rejected) -> None:
        self.display.note(f"line {item.line}: {item.error}")
        if self.rejects is not None:
            self.rejects.write(item.line, item.error, item.text)

    def enqueue_waiting(self, chunk: _Chunk, progress: JobProgress | None) -> tuple[int, int]:
        attempt = 0
        noted = -FULL_NOTE_EVERY_S
        with_lines = False
        records, fingerprints, lines = chunk.records, chunk.fingerprints, chunk.lines
        # On a Redis Cluster a refused call may have written other shards' parts: what they did is
        # counted here, and only the records they did not carry are sent again (sent again, a
        # written part would be enqueued twice without a job, or counted again with one).
        enqueued = skipped = 0
        while True:
            try:
                result = self.producer.enqueue_chunk(records, fingerprints=fingerprints,
                                                     fingerprint_ttl_ms=self.ttl_ms, progress=progress,
                                                     lines=lines if with_lines else None)  # fmt: skip
            except (ImportAhead, QueueFull) as refused:
                if refused.left is not None:
                    enqueued += refused.enqueued + refused.already
                    skipped += refused.skipped
                    records = [records[i] for i in refused.left]
                    lines = [lines[i] for i in refused.left]
                    fingerprints = None if fingerprints is None else [fingerprints[i] for i in refused.left]
                if isinstance(refused, ImportAhead):
                    # An earlier run enqueued some of these lines before it stopped (nothing of the
                    # refusing shard's part was written): their lines tell that shard which it has
                    with_lines = True
                    continue
                now = self.importer._clock()
                if now - noted >= FULL_NOTE_EVERY_S:
                    noted = now
                    self.display.note(f"{refused}; waiting for the workers to make room "
                                      f"(line {self.report.lines + 1:,} onwards)")  # fmt: skip
                self.pause(full_wait_s(attempt))
                if self.stopping.is_set():
                    raise _Stopped from None
                attempt += 1
                continue
            if attempt:
                self.display.note("queue has room again; going on")
            # Lines a shard already had were enqueued by an earlier run of the job that stopped before
            # the job's hash recorded them (only lines past it are read again): enqueued for the job,
            # and counted now, once.
            return enqueued + result.enqueued + result.already, skipped + result.skipped
