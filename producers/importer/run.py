"""Bulk import: stream a file of identifications into the queue, resumably, in constant memory.

    from producers import IdentifyProducer
    from producers.importer.run import Importer, ImportOptions

    with IdentifyProducer.from_env() as producer:
        report = Importer(producer, ImportOptions(skip_unchanged=True)).run("users.csv.gz")

The input (``import_source.py``: a file, gzip by its magic bytes, or stdin) is read a line at a
time and parsed (``import_parse.py``: JSON Lines, or CSV by ``csv_columns.py``'s rules); every
``chunk_size`` lines, the chunk's valid records go to Redis in one enqueue script call that also
records the job's position after the chunk (``import_job.py``) and, with ``skip_unchanged``, leaves
out records equal to their user's last one (``fingerprint.py``).  Nothing but one chunk is held.

- Exactly once across interruptions: the position is written by the same atomic script call as
  the chunk, so a run killed at any moment has enqueued precisely the lines its recorded position
  covers, and ``resume`` continues from there.
- Backpressure: when the queue is at its cap (QueueFull) the same chunk is retried after a
  capped, doubling wait (``full_wait_s``) until the workers make room; the import never fails for it.
- Rejected lines do not stop the import: each is reported (stderr, and the rejects file) with its
  line number, and counted in the job's progress.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from producers.contract.errors import ConfigError, IdentifyQueueError, QueueFull
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
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
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


class _Run:
    """One pass over the input: chunks, commits with the job's position, waits while the queue is full."""

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
        self.consumed_at_start = source.consumed()
        self.display.start(info.size, self.consumed_at_start)
        #: Whether a chunk of this run reached Redis (then the job's record holds where it stopped).
        self.committed = False
        self.ttl_ms = int(self.options.fingerprint_ttl_s * 1000)

    def go(self, items: Iterator[Item]) -> None:
        records: list[ValidRecord] = []
        lines: list[int] = []
        fingerprints: list[bytes] | None = [] if self.options.skip_unchanged else None
        rejected = 0
        size = self.importer._chunk_size
        for item in items:
            if type(item) is Good:
                records.append(item.record)
                lines.append(self.source.line)  # the source stands right after the record
                if fingerprints is not None:
                    fingerprints.append(item.fingerprint or b"")
            else:
                assert type(item) is Rejected
                rejected += 1
                self.reject(item)
            if len(records) + rejected >= size:
                self.commit(records, lines, fingerprints, rejected, finished=False)
                records, lines, rejected = [], [], 0
                fingerprints = [] if fingerprints is not None else None
        self.commit(records, lines, fingerprints, rejected, finished=True)

    def reject(self, item: Rejected) -> None:
        self.display.note(f"line {item.line}: {item.error}")
        if self.rejects is not None:
            self.rejects.write(item.line, item.error, item.text)

    def commit(self, records: list[ValidRecord], lines: list[int], fingerprints: list[bytes] | None, rejected: int,
               *, finished: bool) -> None:  # fmt: skip
        """Enqueue the chunk (each shard records the chunk's end with its records), then the job's
        position after it; wait while the queue is full."""
        if self.rejects is not None:
            self.rejects.flush()  # before the chunk's position, so a crash cannot lose a rejection
        report, source = self.report, self.source
        progress = None
        if report.job is not None:
            progress = JobProgress(report.job, self.token, source.line, source.offset, rejected, finished, JOB_TTL_MS)
        enqueued = skipped = 0
        self.committed = True  # from here on Redis may hold part of the chunk
        if records:
            enqueued, skipped = self.enqueue_waiting(records, lines, fingerprints, progress)
        if report.job is not None:
            counts = {"enqueued": enqueued, "skipped": skipped, "rejected": rejected}
            self.importer._jobs.advance(report.job, self.token, line=source.line, offset=source.offset,
                                        finished=finished, **counts)  # fmt: skip
        report.lines = source.line
        report.enqueued += enqueued
        report.skipped += skipped
        report.rejected += rejected
        report.lines_this_run = source.line - self.first_line
        report.elapsed_s = self.importer._clock() - self.started
        self.display.update(report.snapshot(source.consumed(), self.consumed_at_start, self.info.size))

    def enqueue_waiting(self, records: list[ValidRecord], lines: list[int], fingerprints: list[bytes] | None,
                        progress: JobProgress | None) -> tuple[int, int]:  # fmt: skip
        attempt = 0
        noted = -FULL_NOTE_EVERY_S
        while True:
            try:
                result = self.producer.enqueue_chunk(records, fingerprints=fingerprints, fingerprint_ttl_ms=self.ttl_ms,
                                                     progress=progress, lines=lines)  # fmt: skip
            except QueueFull as full:
                now = self.importer._clock()
                if now - noted >= FULL_NOTE_EVERY_S:
                    noted = now
                    self.display.note(f"{full}; waiting for the workers to make room "
                                      f"(line {self.report.lines + 1:,} onwards)")  # fmt: skip
                self.importer._sleep(full_wait_s(attempt))
                attempt += 1
                continue
            if attempt:
                self.display.note("queue has room again; going on")
            # Lines a shard already had were enqueued by an earlier run of the job that stopped before
            # the job's hash recorded them (only lines past it are read again): enqueued for the job,
            # and counted now, once.
            return result.enqueued + result.already, result.skipped
