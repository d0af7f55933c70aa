"""An import job: its name, the progress Redis keeps for it, and whether a run starts, resumes or stops.

Identity.  ``--job NAME`` names a job.  Without it, a file's job is named after the file and a
digest of its absolute path, size and modification time (``users.csv-3f2a9c1e04b7``): running the
same unchanged file again is the same job, and tonight's new export is a new one.  Stdin has no
such identity: without ``--job`` its progress is not recorded and it cannot be resumed.

Progress.  The hash ``Keys.import_progress(job)`` holds the lines and bytes of input consumed, the
counts (enqueued, rejected, skipped), the state (``running`` or ``finished``), what the input was
(path, size, mtime, format) and the token of the run that owns the job.  Every chunk's enqueue
script call updates it in the same atomic step that appends the chunk (see ``producer.py``), so
after a ``kill -9`` at any moment the recorded position is exactly what is in the queue.  The hash
expires ``JOB_TTL_MS`` after its last update.

What a run does (``decide``, a table in the tests):

    recorded   --resume       --restart     neither
    nothing    start          start         start
    running    resume (*)     start over    refuse: say --resume or --restart
    finished   nothing to do  start over    start over

(*) only on the same input: a file whose path, size or mtime changed is refused.  "Start over"
re-enqueues the lines an earlier run enqueued; that is what --restart and re-running a finished
job ask for (with --skip-unchanged, what did not change is left out).

A run takes the job by writing a fresh token with a compare-and-set script, so two runs cannot both go on from the
same position: the one taken over gets ImportJobError at its next chunk.
"""

from __future__ import annotations

import enum
import os
import re
import secrets
from dataclasses import dataclass
from hashlib import blake2b

import redis

from producers.contract.connection import store_errors
from producers.contract.entry import now_ms
from producers.contract.errors import ImportJobError
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.topology import Call, run_together
from producers.importer.source import SourceInfo

JOB_TTL_MS = 30 * 86_400_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def default_job_name(info: SourceInfo) -> str | None:
    """``<file name>-<12 hex digits of path, size, mtime>``; None for stdin (which needs --job)."""
    if info.path is None:
        return None
    digest = blake2b(f"{info.path}\0{info.size}\0{info.mtime_ns}".encode(), digest_size=6).hexdigest()
    return f"{_UNSAFE.sub('_', os.path.basename(info.path))[:80]}-{digest}"


@dataclass(frozen=True)
class JobState:
    """A job's progress as Redis holds it."""

    run: str
    state: str
    line: int = 0
    offset: int = 0
    enqueued: int = 0
    rejected: int = 0
    skipped: int = 0
    source: str = ""
    size: str = ""
    mtime_ns: str = ""
    format: str = ""
    started_ms: int = 0
    updated_ms: int = 0

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> JobState | None:
        if not raw:
            return None
        text = {k.decode(): v.decode() for k, v in raw.items()}
        ints = ("line", "offset", "enqueued", "rejected", "skipped", "started_ms", "updated_ms")
        return cls(
            run=text.get("run", ""),
            state=text.get("state", "running"),
            source=text.get("source", ""),
            size=text.get("size", ""),
            mtime_ns=text.get("mtime_ns", ""),
            format=text.get("format", ""),
            **{name: int(text.get(name) or 0) for name in ints},
        )

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def identity(info: SourceInfo, fmt: str) -> dict[str, str]:
    """What the job records about its input, to refuse resuming on another one."""
    return {"source": info.path or "-", "size": _text(info.size), "mtime_ns": _text(info.mtime_ns), "format": fmt}


class Action(enum.Enum):
    START = "start"
    RESUME = "resume"
    DONE = "done"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: Said to the operator before the run (empty when there is nothing worth saying).
    note: str = ""


def decide(job: str, stored: JobState | None, current: dict[str, str], *, resume: bool, restart: bool) -> Decision:
    """What a run of ``job`` does, given its recorded progress; ImportJobError when it must not run."""
    if stored is None:
        note = f"job {job}: no progress recorded, starting from the beginning" if resume else ""
        return Decision(Action.START, note)
    at = f"line {stored.line:,} ({stored.enqueued:,} enqueued)"
    if restart:
        return Decision(Action.START, f"job {job}: starting over (an earlier run had reached {at})")
    if stored.finished:
        if resume:
            return Decision(Action.DONE, f"job {job} finished earlier ({stored.line:,} lines): nothing to resume")
        return Decision(Action.START, f"job {job} finished earlier; starting over")
    if not resume:
        raise ImportJobError(f"job {job} was interrupted at {at}: pass --resume to go on from there, "
                             "or --restart to import everything again")  # fmt: skip
    was = {k: getattr(stored, k) for k in current}
    if was != current:
        raise ImportJobError(f"job {job} was reading {_describe(was)}, not {_describe(current)}: resuming "
                             "would skip the wrong lines; --restart imports this input from the start")  # fmt: skip
    return Decision(Action.RESUME, f"job {job}: resuming after {at}")


class JobStore:
    """A job's hash (global: its input, owning run, state, and the line every shard has) and its
    progress in each shard (written by the enqueue script with the shard's records).

    A chunk's records go to their shards first (each shard records the chunk's end line with them),
    then ``advance`` records the line in the job's hash.  A run stopped between the two resumes
    from the job's line, and each shard leaves out the lines it already has: every line is
    enqueued once, on one Redis and on a Redis Cluster alike.
    """

    def __init__(self, client: redis.Redis, keys: Keys, shards: int) -> None:
        self._redis = client
        self._keys = keys
        self._shards = shards
        self._take = Script(client, "producers", "import_take")  # producers/lua/import_take.lua
        self._withdraw = Script(client, "producers", "import_withdraw")
        self._claim = Script(client, "producers", "import_claim")
        self._advance = Script(client, "producers", "import_advance")

    def key(self, job: str) -> str:
        return self._keys.import_job(job)

    def advance(self, job: str, token: str, *, line: int, offset: int, enqueued: int, skipped: int, rejected: int,
                finished: bool) -> None:  # fmt: skip
        """Record that every shard has the job's records up to ``line``, with the chunk's counts."""
        state = "finished" if finished else "running"
        args = [token, line, offset, enqueued, skipped, rejected, state, JOB_TTL_MS]
        self._advance([self.key(job)], args, action="record the import's progress")

    def _claim_shards(self, job: str, token: str, *, fresh: bool) -> None:
        """Take the job's progress in every shard, so that a run this one took over stops at its next chunk."""
        calls = [Call(self._claim, [self._keys.shard(s).import_progress(job)], [token, JOB_TTL_MS, int(fresh)])
                 for s in range(self._shards)]  # fmt: skip
        for reply in run_together(self._redis, calls, action="take the import job's shards"):
            if isinstance(reply, Exception):
                raise reply

    def read(self, job: str) -> JobState | None:
        with store_errors("read import progress"):
            raw: dict[bytes, bytes] = self._redis.hgetall(self.key(job))  # type: ignore[assignment]
        return JobState.from_hash(raw)

    def withdraw(self, job: str, token: str) -> None:
        """Forget a job this run started and stopped before any line (a flag naming no column...),
        so that the next run is a fresh start, not the resumption of an interruption."""
        self._withdraw([self.key(job)], [token], action="withdraw the import job")

    def begin(self, job: str, current: dict[str, str], *, resume: bool,
              restart: bool) -> tuple[Decision, JobState | None, str]:  # fmt: skip
        """Decide and take the job atomically: (decision, progress to go on from, this run's token)."""
        token = secrets.token_hex(8)
        while True:
            stored = self.read(job)
            decision = decide(job, stored, current, resume=resume, restart=restart)
            expected = [stored.run, stored.line, stored.state] if stored else ["", "", ""]
            action = {Action.START: "start", Action.RESUME: "resume", Action.DONE: "keep"}[decision.action]
            fresh: list[str | int] = []
            if decision.action is Action.START:
                stamp = now_ms()
                fields: dict[str, str | int] = {"state": "running", "line": 0, "offset": 0, "enqueued": 0,
                                                "rejected": 0, "skipped": 0, "started_ms": stamp,
                                                "updated_ms": stamp, **current}  # fmt: skip
                fresh = [part for pair in fields.items() for part in pair]
            taken = self._take(
                [self.key(job)], [*expected, action, token, JOB_TTL_MS, *fresh], action="take the import job"
            )
            if taken:
                if decision.action is not Action.DONE:
                    self._claim_shards(job, token, fresh=decision.action is Action.START)
                return decision, (None if decision.action is Action.START else stored), token
            # Another run's chunk landed between the read and the take: decide again on what it wrote.


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _describe(ident: dict[str, str]) -> str:
    if ident.get("source") == "-":
        return f"stdin as {ident.get('format')}"
    return f"{ident.get('source')} (size {ident.get('size')}, mtime_ns {ident.get('mtime_ns')}, {ident.get('format')})"
