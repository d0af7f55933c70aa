"""Where an import reads from: a file, a gzip file or stdin, as lines with the position after each.

Gzip is recognised by its magic bytes (``1f 8b``), whatever the name says.  ``consumed()`` counts
bytes of the source as stored, for progress and ETA: for gzip, the compressed bytes read so far.
Resuming seeks a plain file to the recorded byte offset; gzip and stdin cannot seek, so the
recorded number of lines is read again and dropped.  Memory stays bounded whatever the input: a
line longer than ``MAX_LINE_BYTES`` (no identification comes near it) stops the import with
SourceError rather than being held.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from producers.contract.errors import ConfigError, SourceError

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 16 * 1024 * 1024
_READ_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class SourceInfo:
    """What identifies an input: its name as given ("-" is stdin), and for a file its absolute path,
    size and modification time (a job resumed on a file that changed would skip the wrong lines)."""

    name: str
    path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None

    @property
    def is_stdin(self) -> bool:
        return self.path is None


def describe_source(name: str) -> SourceInfo:
    if name == "-":
        return SourceInfo("-")
    try:
        st = os.stat(name)
    except OSError as exc:
        raise ConfigError(f"PATH: cannot read {name}: {exc.strerror}") from None
    if not os.path.isfile(name):
        raise ConfigError(f"PATH: {name} is not a file")
    return SourceInfo(name, os.path.abspath(name), st.st_size, st.st_mtime_ns)


class _Counting(io.RawIOBase):
    """Counts the bytes read through it, after replaying ``prefix`` (bytes already read to sniff)."""

    def __init__(self, raw: IO[bytes], prefix: bytes = b"", count: int = 0) -> None:
        super().__init__()
        # readinto1 returns what a pipe has now instead of waiting to fill the whole buffer.
        self._readinto = getattr(raw, "readinto1", None) or raw.readinto  # type: ignore[attr-defined]
        self._prefix = prefix
        self.count = count

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            if not self._prefix and n < len(buffer):
                # Not a short read of the sniffed bytes alone: a peek at the start must see past them.
                n += self._readinto(memoryview(buffer)[n:]) or 0
        else:
            n = self._readinto(buffer) or 0
        self.count += n
        return n


class _Inflating(io.RawIOBase):
    """A gzip stream as raw reads, each what one read of the compressed input inflates to (about
    50 KB of JSON Lines for 8 KB).  ``readinto1`` reads once: GzipFile's ``readinto`` would loop to
    fill the whole buffer, and an error on the way (a truncated file) would lose what it had read,
    where this gives every line before the damage, as GzipFile's own readline does."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._stream.readinto1(buffer)


class LineSource:
    """The input's lines from a position on.  After each line is yielded, ``line`` is the number of
    lines consumed from the start of the input and ``offset`` the bytes (uncompressed) they take.

    ``first_line`` is the input's first line when the source starts past it (a CSV header on resume).
    """

    def __init__(self, info: SourceInfo, *, start_line: int = 0, start_offset: int = 0,
                 stdin: IO[bytes] | None = None) -> None:  # fmt: skip
        self.info = info
        self.line = 0
        self.offset = 0
        self.first_line: bytes | None = None
        self._file: IO[bytes] | None = None
        try:
            self._open(start_line, start_offset, stdin)
        except OSError as exc:
            self.close()
            raise ConfigError(f"PATH: cannot read {info.name}: {exc}") from None

    def _open(self, start_line: int, start_offset: int, stdin: IO[bytes] | None) -> None:
        if self.info.path is None:
            raw = stdin if stdin is not None else sys.stdin.buffer
            magic = raw.read(2)
            self._counting = _Counting(raw, prefix=magic)
        else:
            self._file = raw = open(self.info.path, "rb", buffering=0)  # noqa: SIM115  # closed by close()
            magic = raw.read(2)
            raw.seek(0)
            self._counting = _Counting(raw)
        self.gzip = magic == GZIP_MAGIC
        if self.gzip:
            # A line reader of its own over the inflated bytes: it finds lines in C (GzipFile.readline
            # is a Python call per line) and inflates about 50 KB a call rather than 8 KB.  Each inflate
            # lets go of the GIL, which an import's committing thread may then hold for a while: with
            # GzipFile's reader, committing on a thread made a gzip import no faster (0.95x).
            inflated = _Inflating(gzip.GzipFile(fileobj=self._counting, mode="rb"))
            self._reader: Any = io.BufferedReader(inflated, _READ_BUFFER)
        elif self.info.path is not None and start_line > 0:
            # A plain file resumes by seeking: only the header is read again, from a second handle.
            with open(self.info.path, "rb") as head:
                self.first_line = head.readline(MAX_LINE_BYTES)
            raw.seek(start_offset)
            self._counting.count = start_offset
            self.line, self.offset = start_line, start_offset
            self._reader = io.BufferedReader(self._counting, _READ_BUFFER)
            return
        else:
            self._reader = io.BufferedReader(self._counting, _READ_BUFFER)
        self._skip(start_line)

    def _skip(self, lines: int) -> None:
        """Read and drop ``lines`` lines (gzip and stdin cannot seek); keep the first one."""
        target = self.line + lines
        it = iter(self)
        for _ in range(lines):
            line = next(it, None)
            if line is None:
                raise SourceError(f"{self.info.name} has only {self.line} lines; the job had read {target}: "
                                  "is this the same input?")  # fmt: skip
            if self.first_line is None:
                self.first_line = line

    def skip(self, prefix: bytes) -> None:
        """At the input's very start, step over ``prefix`` if the input starts with it (a byte order
        mark): once, instead of a test on every line."""
        if self.line == 0 and self.offset == 0 and self._reader.peek(len(prefix))[: len(prefix)] == prefix:
            self._reader.read(len(prefix))
            self.offset = len(prefix)

    def header(self) -> bytes | None:
        """The input's first line (None for an empty input), read now if the source is at its start."""
        if self.line == 0:
            self.first_line = next(iter(self), None)
        return self.first_line

    def go_to(self, line: int, offset: int) -> None:
        """Stand after ``line`` lines (``offset`` bytes, uncompressed), from wherever the source stands
        before them: a plain file seeks, gzip and stdin read and drop."""
        if line <= self.line:
            return
        if self._file is not None and not self.gzip:
            self.header()
            self._reader.detach()  # else dropping the old reader would close the raw file under the new one
            self._file.seek(offset)
            self._counting.count = offset
            self.line, self.offset = line, offset
            self._reader = io.BufferedReader(self._counting, _READ_BUFFER)
            return
        self._skip(line - self.line)

    def __iter__(self) -> Iterator[bytes]:
        readline = self._reader.readline
        limit = MAX_LINE_BYTES + 1
        try:
            while line := readline(limit):
                if len(line) > MAX_LINE_BYTES:
                    raise SourceError(f"line {self.line + 1} of {self.info.name} is longer than {MAX_LINE_BYTES:,} "
                                      "bytes; is it the format you meant?")  # fmt: skip
                self.line += 1
                self.offset += len(line)
                yield line
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise SourceError(f"{self.info.name}: cannot read past line {self.line}: {exc}") from None

    def consumed(self) -> int:
        """Bytes of the source as stored that have been read: compressed ones for gzip."""
        return self._counting.count if self.gzip or self.info.is_stdin else self.offset

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> LineSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
