"""What an import tells its operator: progress while it runs, each rejected line, a summary at the end.

On a terminal, a tqdm bar over the input's bytes (compressed bytes for gzip) gives rate and ETA;
elsewhere (cron, CI, a log file) a plain line every ``--progress-every`` seconds does.  Rejected
lines go to stderr (``line 7: user_id: ...``) and, with ``--rejects PATH``, to a JSON Lines file.
tqdm is imported only when a bar is shown, so ``producers`` still needs only redis and orjson.
The text is built by pure functions (tested with tables); the classes only write it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import orjson

from producers.contract.errors import InvalidRecord


@dataclass(frozen=True)
class Snapshot:
    """Where an import stands.  Counts are the job's (earlier runs included); rates are this run's."""

    lines: int
    enqueued: int
    rejected: int
    skipped: int
    #: Lines this run read, and the seconds it has taken.
    lines_this_run: int
    elapsed_s: float
    #: Bytes of the source as stored (compressed, for gzip) read so far, at this run's start, and in all.
    consumed: int = 0
    consumed_at_start: int = 0
    total: int | None = None


def rate(snap: Snapshot) -> float:
    return snap.lines_this_run / snap.elapsed_s if snap.elapsed_s > 0 else 0.0


def eta_s(snap: Snapshot) -> float | None:
    """Seconds left at this run's speed over the source's bytes; None when it cannot be told."""
    done = snap.consumed - snap.consumed_at_start
    if snap.total is None or done <= 0 or snap.elapsed_s <= 0:
        return None
    return max(0.0, snap.total - snap.consumed) * snap.elapsed_s / done


def duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h04m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_line(snap: Snapshot) -> str:
    parts = [f"progress: {snap.lines:,} lines read, {snap.enqueued:,} enqueued, {snap.rejected:,} rejected, "
             f"{snap.skipped:,} skipped unchanged; {rate(snap):,.0f} lines/s"]  # fmt: skip
    if snap.total:
        parts.append(f"{min(100.0, 100 * snap.consumed / snap.total):.1f}% of {snap.total:,} bytes")
    left = eta_s(snap)
    if left is not None:
        parts.append(f"ETA {duration(left)}")
    return "; ".join(parts)


def summary_line(snap: Snapshot, job: str | None, resumed_from: int) -> str:
    """The last line of an import.  Its start is a stable interface: "N enqueued, N rejected, N lines read"."""
    text = (f"{snap.enqueued} enqueued, {snap.rejected} rejected, {snap.lines} lines read, "
            f"{snap.skipped} skipped unchanged; {duration(snap.elapsed_s)} ({rate(snap):,.0f} lines/s)")  # fmt: skip
    if resumed_from:
        text += f"; resumed after line {resumed_from}, {snap.lines_this_run} lines this run"
    if job:
        text += f"; job {job}"
    return text


def reject_entry(line: int, error: InvalidRecord, text: bytes) -> bytes:
    """One line of the rejects file.  Bytes that are not UTF-8 show as U+FFFD in ``text``."""
    doc = {"line": line, "field": error.field, "rule": error.rule, "reason": error.detail,
           "text": text.decode("utf-8", "replace").rstrip("\r\n")}  # fmt: skip
    return orjson.dumps(doc) + b"\n"


class Display(Protocol):
    def start(self, total: int | None, initial: int) -> None:
        """The input is open: ``total`` bytes in all (None for stdin), ``initial`` already behind (a resume)."""

    def update(self, snap: Snapshot) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class LineDisplay:
    """Not a terminal: a progress line every ``every_s`` seconds (and every note as it comes)."""

    def __init__(self, stream: TextIO, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._every = every_s
        self._clock = clock
        self._last = clock()

    def start(self, total: int | None, initial: int) -> None:
        pass

    def update(self, snap: Snapshot) -> None:
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self.note(progress_line(snap))

    def note(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


class QuietDisplay(LineDisplay):
    """``--progress none``: notes (rejections, waits) only."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream, float("inf"))


class BarDisplay:
    """A terminal: tqdm over the source's bytes (rate, ETA), or over lines for stdin."""

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm  # only here: a bar is the only reason producers would need tqdm

        self._tqdm = tqdm
        self._stream = stream
        self._bar: Any = None
        self._by_bytes = False

    def start(self, total: int | None, initial: int) -> None:
        self._by_bytes = total is not None
        options: dict[str, Any] = (
            {"unit": "B", "unit_scale": True, "unit_divisor": 1024} if total else {"unit": " lines"}
        )
        self._bar = self._tqdm(total=total, initial=initial, file=self._stream, dynamic_ncols=True, smoothing=0.1,
                               **options)  # fmt: skip

    def update(self, snap: Snapshot) -> None:
        self._bar.set_postfix_str(f"{snap.lines:,} lines, {snap.enqueued:,} enqueued, {snap.rejected:,} rejected, "
                                  f"{snap.skipped:,} unchanged, {rate(snap):,.0f} lines/s", refresh=False)  # fmt: skip
        self._bar.update((snap.consumed if self._by_bytes else snap.lines) - self._bar.n)

    def note(self, text: str) -> None:
        self._tqdm.write(text, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def make_display(mode: str, stream: TextIO, *, every_s: float = 5.0) -> Display:
    """``auto`` is a bar on a terminal and plain lines elsewhere (TERM=dumb counts as elsewhere)."""
    if mode == "auto":
        terminal = stream.isatty() and os.environ.get("TERM") != "dumb"
        mode = "bar" if terminal else "lines"
    if mode == "bar":
        return BarDisplay(stream)
    if mode == "lines":
        return LineDisplay(stream, every_s)
    return QuietDisplay(stream)


class RejectsFile:
    """``--rejects PATH``: each rejected line as JSON (line, field, rule, reason, text).

    A fresh job truncates the file.  A resumed job keeps the entries of lines up to where it
    resumes and drops later ones, which a killed run may have written before its chunk committed:
    lines are written (and flushed) before the chunk that holds them, so none is missing either.
    """

    def __init__(self, path: str, *, resume_after: int | None = None) -> None:
        self.path = path
        if resume_after is not None and os.path.exists(path):
            _keep_through(path, resume_after)
            self._file = open(path, "ab")  # noqa: SIM115  # closed by close()
        else:
            self._file = open(path, "wb")  # noqa: SIM115

    def write(self, line: int, error: InvalidRecord, text: bytes) -> None:
        self._file.write(reject_entry(line, error, text))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _keep_through(path: str, last_line: int) -> None:
    """Rewrite the rejects file with only entries of lines <= last_line, a line at a time."""
    temporary = f"{path}.resume-tmp"
    with open(path, "rb") as old, open(temporary, "wb") as new:
        for raw in old:
            try:
                keep = orjson.loads(raw)["line"] <= last_line
            except (orjson.JSONDecodeError, KeyError, TypeError):
                keep = False  # a line cut short by the crash
            if keep:
                new.write(raw)
    os.replace(temporary, path)
