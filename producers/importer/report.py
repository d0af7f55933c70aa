"""What an import tells its operator: progress while it runs, each rejected line, a summary at the end.

On a terminal, one line redrawn in place gives the rate, the counts, the ETA and a bar over the
input's bytes (compressed bytes for gzip), fitted to the terminal's width; elsewhere (cron, CI, a
log file) a plain line every ``--progress-every`` seconds does.  Rejected lines go to stderr
(``line 7: user_id: ...``) and, with ``--rejects PATH``, to a JSON Lines file.  Every number is
written with thousands separators, on every line.  The text is built by pure functions (tested
with tables); the classes only write it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

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
    text = (f"{snap.enqueued:,} enqueued, {snap.rejected:,} rejected, {snap.lines:,} lines read, "
            f"{snap.skipped:,} skipped unchanged; {duration(snap.elapsed_s)} ({rate(snap):,.0f} lines/s)")  # fmt: skip
    if resumed_from:
        text += f"; resumed after line {resumed_from:,}, {snap.lines_this_run:,} lines this run"
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


#: The width assumed when a terminal reports none (0 columns, or no size at all).
FALLBACK_WIDTH = 80
#: A bar narrower than this says nothing; the line shows the numbers alone.
MIN_BAR = 10


def terminal_width(columns: int | None) -> int:
    """The width to draw in: the terminal's, or ``FALLBACK_WIDTH`` when it reports none."""
    return columns if columns and columns > 0 else FALLBACK_WIDTH


def bar_line(snap: Snapshot, width: int) -> str:
    """The progress line for a terminal ``width`` columns wide, at most ``width - 1`` characters
    (writing the last column wraps on some terminals).

    The rate and the counts come first; the percentage and ETA next; the bar takes what is left.
    On a narrow terminal the bar goes first, then the ETA, then the counts that matter least.
    """
    room = max(1, width - 1)
    counts = [f"{snap.lines:,} lines", f"{snap.enqueued:,} enqueued", f"{snap.rejected:,} rejected",
              f"{snap.skipped:,} unchanged"]  # fmt: skip
    head = f"{rate(snap):,.0f} lines/s"
    tail: list[str] = []
    fraction = None
    if snap.total:
        fraction = min(1.0, snap.consumed / snap.total)
        tail.append(f"{100 * fraction:.0f}%")
        left = eta_s(snap)
        tail.append(f"ETA {duration(left)}" if left is not None else "ETA -")
    while True:
        text = " | ".join([head, ", ".join(counts), *([" ".join(tail)] if tail else [])])
        if len(text) <= room:
            inner = room - len(text) - 3
            if fraction is None or inner < MIN_BAR:
                return text
            filled = round(inner * fraction)
            return f"{text} [{'#' * filled}{'.' * (inner - filled)}]"
        if len(tail) > 1:
            tail.pop()  # the ETA
        elif len(counts) > 2:
            counts.pop()  # unchanged, then rejected: lines and enqueued stay longest
        else:
            return text[:room]


class BarDisplay:
    """A terminal: one line redrawn in place, fitted to the terminal's width at each redraw."""

    #: Redraws at most this often: a chunk of a fast import takes a few milliseconds.
    EVERY_S = 0.1

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 columns: Callable[[], int | None] | None = None) -> None:  # fmt: skip
        self._stream = stream
        self._clock = clock
        self._columns = columns or self._terminal_columns
        self._last = float("-inf")
        self._snap: Snapshot | None = None

    def _terminal_columns(self) -> int | None:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return None

    def start(self, total: int | None, initial: int) -> None:
        pass  # each snapshot carries the total and what was read before this run

    def update(self, snap: Snapshot) -> None:
        self._snap = snap
        now = self._clock()
        if now - self._last >= self.EVERY_S:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self._snap is not None:
            line = bar_line(self._snap, terminal_width(self._columns()))
            self._stream.write(f"\r\x1b[K{line}")
            self._stream.flush()

    def note(self, text: str) -> None:
        self._stream.write(f"\r\x1b[K{text}\n")
        self._draw()

    def close(self) -> None:
        if self._snap is not None:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
            self._snap = None


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
